"""The `twin` node: twin images at the published joint state, the overlay at the live image's
size, the robot-mask IoU (sim segmentation; NaN without a live mask), the re-align service's
answers, and a clear fatal error for a missing twin directory."""
from __future__ import annotations

import json
import math
import shutil
import time

import numpy as np
import pytest

from twinrl_twin.sim import fr3_model

pytestmark = pytest.mark.ros

HOME = np.asarray(fr3_model.load_fr3_config().home, float)


@pytest.fixture(scope="module")
def twin_dir(tiny_twins):
    return tiny_twins("pick_and_place")


class Probe:
    """Publishes joint states and a live camera image; collects the twin node's outputs."""

    def __init__(self, ctx):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Float64
        from std_srvs.srv import Trigger

        self.node = rclpy.create_node("twin_probe", context=ctx)
        self.ex = SingleThreadedExecutor(context=ctx)
        self.ex.add_node(self.node)
        self.js_pub = self.node.create_publisher(JointState, "/joint_states", 10)
        self.img_pub = self.node.create_publisher(Image, "/twinrl/camera/third_person/image_raw", 5)
        self.got: dict = {"third_person": [], "wrist": [], "overlay": [], "iou": []}
        for key, topic in (("third_person", "/twinrl/twin/third_person/image_raw"),
                           ("wrist", "/twinrl/twin/wrist/image_raw"), ("overlay", "/twinrl/twin/overlay")):
            self.node.create_subscription(Image, topic, lambda m, k=key: self.got[k].append(m), 5)
        self.node.create_subscription(Float64, "/twinrl/twin/mask_iou", lambda m: self.got["iou"].append(m.data), 10)
        self.realign = self.node.create_client(Trigger, "/twinrl/twin/realign")
        self.Trigger = Trigger

    def publish(self, q, width=0.06, image=None):
        from sensor_msgs.msg import Image, JointState

        js = JointState()
        js.header.stamp = self.node.get_clock().now().to_msg()
        js.name = list(fr3_model.ARM_JOINTS) + list(fr3_model.FINGER_JOINTS)
        js.position = [float(v) for v in q] + [width / 2, width / 2]
        self.js_pub.publish(js)
        if image is not None:
            m = Image()
            m.header.stamp = js.header.stamp
            m.header.frame_id = "third_person_optical_frame"
            m.height, m.width = image.shape[:2]
            m.encoding, m.step = "rgb8", image.shape[1] * 3
            m.data = image.tobytes()
            self.img_pub.publish(m)

    def run_until(self, predicate, timeout, q=HOME, image=None, width=0.06):
        deadline = time.monotonic() + timeout
        last = 0.0
        while time.monotonic() < deadline:
            if time.monotonic() - last > 0.1:
                self.publish(q, width, image)
                last = time.monotonic()
            self.ex.spin_once(timeout_sec=0.05)
            if predicate():
                return True
        return predicate()

    def call_realign(self, timeout=10.0):
        assert self.realign.wait_for_service(timeout_sec=timeout)
        fut = self.realign.call_async(self.Trigger.Request())
        deadline = time.monotonic() + timeout
        while not fut.done() and time.monotonic() < deadline:
            self.ex.spin_once(timeout_sec=0.05)
        assert fut.done(), "no answer from /twinrl/twin/realign"
        return fut.result()

    def close(self):
        self.ex.shutdown()
        self.node.destroy_node()


def _array(msg) -> np.ndarray:
    assert msg.encoding == "rgb8"
    return np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, 3)


def test_twin_node_renders_overlays_and_scores(twin_dir, rclpy_context, spawn_node):
    proc = spawn_node("twinrl_twin", "twin", parameters={"twin_dir": str(twin_dir), "rate": 5.0, "live_mask": "sim"})
    probe = Probe(rclpy_context)
    try:
        live = np.full((240, 320, 3), 90, np.uint8)      # a live image of another size than the twin's
        got = probe.got
        ok = probe.run_until(lambda: got["third_person"] and got["wrist"] and got["overlay"]
                             and any(math.isfinite(v) for v in got["iou"]), 40.0, image=live)
        assert ok, f"twin outputs missing: { {k: len(v) for k, v in got.items()} }\n{proc.output()[-2000:]}"
        tp, wr, ov = _array(got["third_person"][-1]), _array(got["wrist"][-1]), _array(got["overlay"][-1])
        assert tp.shape == (256, 256, 3) and wr.shape == (128, 128, 3)
        assert ov.shape == live.shape and not np.all(ov == 90)       # twin drawn over the live image
        iou = [v for v in got["iou"] if math.isfinite(v)][-1]
        assert iou > 0.8, iou                          # sim segmentation at the same joint state
        # a new joint state -> new twin images
        q2 = HOME.copy()
        q2[0] += 0.3
        n0 = len(got["wrist"])
        assert probe.run_until(lambda: len(got["wrist"]) >= n0 + 3, 20.0, q=q2, image=live)
        wr2 = _array(got["wrist"][-1])
        assert (np.abs(wr2.astype(int) - wr.astype(int)).sum(axis=2) > 30).mean() > 0.01
        # re-align: starts (the scan is there); a second call while it runs is refused with a reason
        r1 = probe.call_realign()
        assert r1.success and "started" in r1.message, r1.message
        r2 = probe.call_realign()
        assert not r2.success and "already running" in r2.message, r2.message
        assert proc.poll() is None, proc.output()[-2000:]
    finally:
        probe.close()


def test_no_live_mask_gives_nan_and_realign_without_scan_fails(twin_dir, tmp_path, rclpy_context, spawn_node):
    moved = tmp_path / "twin"
    shutil.copytree(twin_dir, moved)
    meta = json.loads((moved / "twin.json").read_text())
    meta["scan"] = str(tmp_path / "deleted_scan")
    (moved / "twin.json").write_text(json.dumps(meta))
    proc = spawn_node("twinrl_twin", "twin", parameters={"twin_dir": str(moved), "rate": 5.0, "live_mask": "none"})
    probe = Probe(rclpy_context)
    try:
        live = np.full((256, 256, 3), 50, np.uint8)
        ok = probe.run_until(lambda: len(probe.got["iou"]) >= 2 and probe.got["overlay"], 40.0, image=live)
        assert ok, proc.output()[-2000:]
        assert all(math.isnan(v) for v in probe.got["iou"])     # no live mask: no IoU, never a guess
        r = probe.call_realign()
        assert not r.success and "deleted_scan" in r.message and "gone" in r.message, r.message
    finally:
        probe.close()


def test_missing_twin_dir_is_a_clear_fatal_error(tmp_path, spawn_node):
    missing = tmp_path / "nowhere"
    proc = spawn_node("twinrl_twin", "twin", parameters={"twin_dir": str(missing)})
    rc = proc.wait(timeout=30)
    out = proc.output()
    assert rc != 0 and str(missing) in out and "does not exist" in out, out


def test_graphs_start_the_twin_node_behind_their_switches():
    from twinrl_bringup.graph import load_graph, resolve

    for graph, switch, mask in (("sim", "use_twin", "sim"), ("real", "use_alignment", "none")):
        g = load_graph(graph)
        assert g.arguments[switch] is False and g.arguments["twin_dir"] == ""
        off = [n for n in resolve(g).nodes if n.executable == "twin"]
        assert not off, f"{graph}: the twin node runs without {switch}"
        on = [n for n in resolve(g, {switch: True, "twin_dir": "/data/twin"}).nodes if n.executable == "twin"]
        assert len(on) == 1 and on[0].package == "twinrl_twin", graph
        assert on[0].parameters["twin_dir"] == "/data/twin" and on[0].parameters["live_mask"] == mask
    assert not [n for n in resolve(load_graph("real"), {"use_alignment": True}).nodes if n.executable == "alignment"]
