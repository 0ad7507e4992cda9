"""ROS 2 nodes of twinrl_policy (thin shells over the core modules)."""
