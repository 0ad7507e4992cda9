"""ROS 2 node entry points (thin shells over the core modules) and their shared run loop."""
from __future__ import annotations

from typing import Callable, Optional


def spin_until_shutdown(node, executor=None, on_shutdown: Optional[Callable[[], None]] = None) -> int:
    """Spin ``node`` (on ``executor`` if given) until Ctrl-C / SIGTERM / context shutdown,
    then run ``on_shutdown``, destroy the node and shut rclpy down. Returns exit code 0."""
    import rclpy
    from rclpy.executors import ExternalShutdownException

    try:
        if executor is None:
            rclpy.spin(node)
        else:
            if node not in executor.get_nodes():
                executor.add_node(node)
            executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if on_shutdown is not None:
            on_shutdown()
        if executor is not None:
            executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def fail_start(node, message: str, code: int = 1) -> int:
    """Log ``message`` as fatal, destroy ``node``, shut rclpy down; returns exit ``code``.
    The one way a node gives up during start-up (bad parameter, missing file, no backend)."""
    import rclpy

    node.get_logger().fatal(message)
    node.destroy_node()
    rclpy.try_shutdown()
    return code
