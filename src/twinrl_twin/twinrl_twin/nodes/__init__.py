"""ROS 2 node entry points of twinrl_twin (thin shells over the core modules)."""
