"""image_adapter: crop/resize to policy sizes, clear rate-limited errors for bad input."""
import time

import numpy as np
import pytest

from twinrl_bringup.config import ConfigError
from twinrl_bringup.image_adapter import ImageAdapter, ImageInputError, load_cameras_config


@pytest.fixture(scope="module")
def cams():
    return load_cameras_config()


def test_config_sizes(cams):
    assert cams.cameras["third_person"].output_size == 256
    assert cams.cameras["wrist"].output_size == 128
    assert cams.cameras["third_person"].model == "D455" and cams.cameras["wrist"].model == "D435"
    with pytest.raises(ConfigError, match="output_size"):
        load_cameras_config(overrides=[("cameras.wrist.output_size", 1000)])
    with pytest.raises(ConfigError, match="crop"):
        load_cameras_config(overrides=[("cameras.wrist.crop", [600, 0, 100, 100])])


def test_center_crop_and_resize(cams):
    s = cams.cameras["third_person"]
    ad = ImageAdapter("third_person", s)
    img = np.zeros((s.height, s.width, 3), np.uint8)
    x0 = (s.width - s.height) // 2
    img[:, :x0] = 255                            # outside the centred square: cropped away
    img[:, x0:x0 + s.height // 2, 0] = 200       # left half of the square red
    out = ad.convert(s.height, s.width, "rgb8", s.width * 3, img.tobytes())
    assert out.shape == (256, 256, 3) and out.dtype == np.uint8
    assert out[:, :128, 0].mean() == pytest.approx(200, abs=1) and out[:, 128:, 0].max() == 0
    assert out[..., 1].max() == 0                # nothing from the cropped white band
    # bgr8 input is swapped to rgb
    bgr = img[:, :, ::-1].copy()
    out2 = ad.convert(s.height, s.width, "bgr8", s.width * 3, bgr.tobytes())
    assert np.array_equal(out, out2)
    fx, fy, cx, cy = ad.intrinsics([600.0, 0, 320.0, 0, 600.0, 240.0, 0, 0, 1])
    assert fx == pytest.approx(600 * 256 / 480) and cx == pytest.approx((320 - 80 + 0.5) * 256 / 480 - 0.5)


def test_wrong_size_and_encoding_are_named(cams):
    s = cams.cameras["wrist"]
    ad = ImageAdapter("wrist", s)
    with pytest.raises(ImageInputError, match=r"wrist: got a 320x240 image .* expected 640x480"):
        ad.convert(240, 320, "rgb8", 960, bytes(240 * 960))
    with pytest.raises(ImageInputError, match="encoding '16UC1' not supported"):
        ad.convert(480, 640, "16UC1", 1280, bytes(480 * 1280))
    with pytest.raises(ImageInputError, match="too short"):
        ad.convert(480, 640, "rgb8", 1920, bytes(100))
    assert ad.errors == 3 and ad.converted == 0


@pytest.mark.ros
def test_node_converts_and_rate_limits_errors(rclpy_context, spawn_node, cams):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image

    s = cams.cameras["wrist"]
    node = rclpy.create_node("cam_probe", context=rclpy_context)
    pub = node.create_publisher(Image, s.input_topic, qos_profile_sensor_data)
    pub_info = node.create_publisher(CameraInfo, s.input_info_topic, qos_profile_sensor_data)
    got, infos = [], []
    node.create_subscription(Image, s.output_topic, got.append, 10)
    node.create_subscription(CameraInfo, s.output_info_topic, infos.append, 10)
    ex = SingleThreadedExecutor(context=rclpy_context)
    ex.add_node(node)
    proc = spawn_node("twinrl_bringup", "image_adapter", parameters={"cameras": ["wrist"]})

    def image(h, w, enc="rgb8", ch=3):
        m = Image()
        m.height, m.width, m.encoding, m.step = h, w, enc, w * ch
        m.data = np.full((h, w, ch), 77, np.uint8).tobytes()
        return m

    info = CameraInfo()
    info.k = [600.0, 0, 320.0, 0, 600.0, 240.0, 0, 0, 1]
    deadline = time.monotonic() + 20
    while not got and time.monotonic() < deadline:
        pub_info.publish(info)
        pub.publish(image(s.height, s.width))
        ex.spin_once(timeout_sec=0.1)
    assert got, proc.output()
    m = got[-1]
    assert (m.height, m.width, m.encoding, m.header.frame_id) == (128, 128, "rgb8", "wrist_optical_frame")
    assert set(bytes(m.data)) == {77}
    for _ in range(20):                      # 20 bad frames -> one error line (rate limited)
        pub.publish(image(240, 320))
        ex.spin_once(timeout_sec=0.02)
    time.sleep(0.5)
    out = proc.output()
    assert out.count("image dropped") == 1, out
    assert "expected 640x480" in out
    node.destroy_node()
