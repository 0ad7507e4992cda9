"""ros2 launch twinrl_bringup link_check.launch.py [arg:=value ...] (graph: config/graphs/link_check.yaml)."""
from twinrl_bringup.launch_adapter import generate_graph_launch


def generate_launch_description():
    return generate_graph_launch("link_check")
