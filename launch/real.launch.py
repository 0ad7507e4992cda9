"""ros2 launch twinrl_bringup real.launch.py [arg:=value ...] (graph: config/graphs/real.yaml)."""
from twinrl_bringup.launch_adapter import generate_graph_launch


def generate_launch_description():
    return generate_graph_launch("real")
