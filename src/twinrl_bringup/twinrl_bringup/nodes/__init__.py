"""ROS 2 node entry points (thin shells over the core modules)."""
