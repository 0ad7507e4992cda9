"""image_adapter node: realsense colour streams -> policy-sized rgb8 images.

For every camera in ``config/cameras_real.yaml``: subscribes its driver's colour image (and
camera_info), crops and resizes it (third-person 256x256, wrist 128x128 by default) and
publishes ``/twinrl/camera/<name>/image_raw`` + ``camera_info``. Wrong sizes or encodings are
dropped with a clear error, logged at most once per ``error_interval_s`` per camera.
"""
from __future__ import annotations

import sys
import time


def main(argv=None) -> int:
    import rclpy

    from twinrl_bringup.nodes import fail_start, spin_until_shutdown
    from rclpy.node import Node
    from rclpy.qos import qos_profile_sensor_data

    from sensor_msgs.msg import CameraInfo, Image

    from twinrl_bringup.config import ConfigError
    from twinrl_bringup.image_adapter import ImageAdapter, ImageInputError, load_cameras_config

    rclpy.init(args=argv)
    node = Node("image_adapter")
    log = node.get_logger()
    config = node.declare_parameter("config", "cameras_real").value
    only = list(node.declare_parameter("cameras", ["third_person", "wrist"]).value)
    try:
        cfg = load_cameras_config(config)
    except ConfigError as exc:
        return fail_start(node, str(exc), 1)

    def make(name, stream):
        ad = ImageAdapter(name, stream)
        pub = node.create_publisher(Image, stream.output_topic, 5)
        info_pub = node.create_publisher(CameraInfo, stream.output_info_topic, 5) if stream.output_info_topic else None
        state = {"k": None, "last_err": -1e9, "suppressed": 0}

        def on_info(msg):
            state["k"] = list(msg.k)

        def on_image(msg):
            try:
                img = ad.convert(msg.height, msg.width, msg.encoding, msg.step, bytes(msg.data))
            except ImageInputError as exc:
                now = time.monotonic()
                if now - state["last_err"] >= cfg.error_interval_s:
                    more = f" ({state['suppressed']} more since the last report)" if state["suppressed"] else ""
                    log.error(f"image dropped: {exc}{more}")
                    state["last_err"], state["suppressed"] = now, 0
                else:
                    state["suppressed"] += 1
                return
            out = Image()
            out.header.stamp = msg.header.stamp
            out.header.frame_id = stream.frame_id
            out.height = out.width = stream.output_size
            out.encoding = "rgb8"
            out.step = stream.output_size * 3
            out.data = img.tobytes()
            pub.publish(out)
            if info_pub is not None:
                ci = CameraInfo()
                ci.header = out.header
                ci.height = ci.width = stream.output_size
                intr = ad.intrinsics(state["k"])
                if intr is not None:
                    fx, fy, cx, cy = (float(v) for v in intr)
                    ci.distortion_model = "plumb_bob"
                    ci.d = [0.0] * 5
                    ci.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
                    ci.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
                    ci.p = [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
                info_pub.publish(ci)

        node.create_subscription(Image, stream.input_topic, on_image, qos_profile_sensor_data)
        if stream.input_info_topic:
            node.create_subscription(CameraInfo, stream.input_info_topic, on_info, qos_profile_sensor_data)
        log.info(f"image_adapter: {name} {stream.input_topic} {stream.width}x{stream.height} -> "
                 f"{stream.output_topic} {stream.output_size}x{stream.output_size} rgb8")

    for name, stream in cfg.cameras.items():
        if name in only:
            make(name, stream)
    return spin_until_shutdown(node)


if __name__ == "__main__":
    sys.exit(main())
