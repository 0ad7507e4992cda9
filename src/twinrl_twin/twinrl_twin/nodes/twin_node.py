"""twin node: the digital twin at the live robot state, for rviz and alignment checks.

Subscribes ``/joint_states`` (fr3_joint1..7, fr3_finger_joint1/2) and the live camera images
(``<camera_prefix>/<name>/image_raw`` + ``camera_info``). At ``rate`` Hz it publishes

* ``/twinrl/twin/<name>/image_raw``: the twin's render of each camera (rgb8);
* ``/twinrl/twin/overlay``: the twin over the live ``overlay_camera`` image (rgb8, live size);
* ``/twinrl/twin/mask_iou`` (std_msgs/Float64): IoU of the twin robot silhouette and the live
  robot mask; NaN when there is no live mask.

The live robot mask (``live_mask``): ``sim`` = the sim world's segmentation of its robot at
the live joint state (the sim graph), ``topic`` = a mono8 mask from a segmenter on
``live_mask_topic`` (a real cell), ``none`` = no mask (IoU NaN).

Service ``/twinrl/twin/realign`` (std_srvs/Trigger): re-runs alignment from the scan recorded
in the twin directory in a background thread; the answer says whether it started (false
with the reason when the scan is gone or a run is in progress); the new transform is
swapped in when it finishes, and the outcome is logged.

Action ``/twinrl/twin/generate_demonstrations`` (twinrl_msgs/GenerateDemonstrations): stage I,
twin demonstrations from one seed demonstration (:mod:`twinrl_twin.demogen.generate`); an
empty ``twin_dir`` means this node's twin. Feedback after each requested demo (generated,
rejected, total); cancel stops after the demos in progress. One goal at a time.
"""
from __future__ import annotations

import sys
import threading
import time

import numpy as np

LIVE_MASK_MODES = ("none", "sim", "topic")


def _image_array(msg) -> np.ndarray:
    """rgb8 / bgr8 / rgba8 / bgra8 / mono8 sensor_msgs/Image -> (H, W, 3) or (H, W) uint8."""
    ch = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "8UC1": 1}.get(msg.encoding)
    if ch is None:
        raise ValueError(f"unsupported image encoding {msg.encoding!r} (rgb8, bgr8, rgba8, bgra8, mono8)")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    data = np.frombuffer(bytes(msg.data), np.uint8)
    if h <= 0 or w <= 0 or step < w * ch or data.size < h * step:
        raise ValueError(f"image {w}x{h} {msg.encoding}: step {step} / {data.size} bytes do not fit")
    img = data[:h * step].reshape(h, step)[:, :w * ch].reshape(h, w, ch)
    if ch == 1:
        return img[..., 0].copy()
    if msg.encoding.startswith("bgr"):
        img = img[..., 2::-1]
    return np.ascontiguousarray(img[..., :3])


def _image_msg(img: np.ndarray, stamp, frame_id: str):
    from sensor_msgs.msg import Image

    m = Image()
    m.header.stamp = stamp
    m.header.frame_id = frame_id
    m.height, m.width = int(img.shape[0]), int(img.shape[1])
    m.encoding = "rgb8"
    m.step = m.width * 3
    m.data = np.ascontiguousarray(img, np.uint8).tobytes()
    return m


def main(argv=None) -> int:
    import rclpy
    from rclpy.node import Node
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image, JointState
    from std_msgs.msg import Float64
    from std_srvs.srv import Trigger

    from twinrl_bringup.nodes import fail_start, spin_until_shutdown

    rclpy.init(args=argv)
    node = Node("twin")
    log = node.get_logger()
    twin_dir = str(node.declare_parameter("twin_dir", "").value)
    rate = float(node.declare_parameter("rate", 2.0).value)
    cameras = list(node.declare_parameter("cameras", ["third_person", "wrist"]).value)
    prefix = str(node.declare_parameter("camera_prefix", "/twinrl/camera").value).rstrip("/")
    overlay_camera = str(node.declare_parameter("overlay_camera", "third_person").value)
    live_mask_mode = str(node.declare_parameter("live_mask", "none").value)
    live_mask_topic = str(node.declare_parameter("live_mask_topic", "").value)

    def fatal(text: str) -> int:
        return fail_start(node, text, 1)

    if not twin_dir:
        return fatal("parameter twin_dir is required: a twin directory from `twinrl twin build --scan SCAN --out TWIN`")
    if not rate > 0:
        return fatal(f"parameter rate must be > 0 Hz, got {rate}")
    if live_mask_mode not in LIVE_MASK_MODES:
        return fatal(f"parameter live_mask must be one of {LIVE_MASK_MODES}, got {live_mask_mode!r}")
    if live_mask_mode == "topic" and not live_mask_topic:
        return fatal("live_mask is 'topic' but parameter live_mask_topic is empty")

    from twinrl_twin.twin_assets import TwinAssetError
    from twinrl_twin.twin_view import JointStateError, RealignError, SimRobotMask, TwinView
    from twinrl_twin.sim import fr3_model

    try:
        view = TwinView(twin_dir)
    except (TwinAssetError, ValueError, OSError) as exc:
        return fatal(f"cannot load the twin {twin_dir}: {exc}")
    unknown = [c for c in cameras + [overlay_camera] if c not in view.cameras]
    if unknown:
        return fatal(f"unknown camera(s) {unknown} (the twin has {list(view.cameras)})")
    sim_mask = None
    if live_mask_mode == "sim":
        try:
            sim_mask = SimRobotMask(view.assets.task)
        except Exception as exc:   # noqa: BLE001 - any renderer/model failure: run without a mask
            log.error(f"live_mask sim unavailable ({exc}); publishing IoU NaN")

    state = {"joints": None, "width": None, "live": {}, "info": {}, "mask": None, "pending": None,
             "realigning": False, "errors": {}}
    lock = threading.Lock()
    finger = float(2 * fr3_model.load_fr3_config().gripper.finger_travel)

    def warn_once(key: str, text: str) -> None:
        now = time.monotonic()
        if now - state["errors"].get(key, -1e9) > 10.0:
            state["errors"][key] = now
            log.error(text)

    def on_joints(msg) -> None:
        pos = dict(zip(msg.name, msg.position))
        if not all(j in pos for j in fr3_model.ARM_JOINTS):
            return                       # another robot's / partial joint state
        q = np.array([pos[j] for j in fr3_model.ARM_JOINTS], float)
        width = (sum(pos[j] for j in fr3_model.FINGER_JOINTS) if all(j in pos for j in fr3_model.FINGER_JOINTS)
                 else state["width"] if state["width"] is not None else finger)
        if not (np.all(np.isfinite(q)) and np.isfinite(width)):
            warn_once("joints", f"/joint_states with non-finite positions ignored: {q.tolist()} width {width}")
            return
        with lock:
            state["joints"], state["width"] = q, float(width)

    def make_image_cb(name):
        def cb(msg):
            try:
                img = _image_array(msg)
                if img.ndim != 3:
                    raise ValueError("a colour image is needed")
            except ValueError as exc:
                warn_once(f"img_{name}", f"{prefix}/{name}/image_raw: image dropped: {exc}")
                return
            with lock:
                state["live"][name] = (img, msg.header)
        return cb

    def make_info_cb(name):
        def cb(msg):
            with lock:
                first = name not in state["info"]
                state["info"][name] = msg
            if first and msg.k[0] > 0:
                intr = view.intrinsics(name)
                f = msg.k[0] * intr.width / max(msg.width, 1)
                if abs(f - intr.fx) > 0.05 * intr.fx:
                    log.warning(f"{prefix}/{name}/camera_info: focal {f:.1f} px (at the twin's width) differs from "
                                f"the twin camera's {intr.fx:.1f} px: check config/cameras.yaml")
        return cb

    def on_mask(msg):
        try:
            m = _image_array(msg)
            if m.ndim == 3:
                m = m.max(axis=2)
        except ValueError as exc:
            warn_once("mask", f"{live_mask_topic}: mask dropped: {exc}")
            return
        with lock:
            state["mask"] = (m > 0, time.monotonic())

    node.create_subscription(JointState, "/joint_states", on_joints, 20)
    for name in set(cameras + [overlay_camera]):
        node.create_subscription(Image, f"{prefix}/{name}/image_raw", make_image_cb(name), qos_profile_sensor_data)
        node.create_subscription(CameraInfo, f"{prefix}/{name}/camera_info", make_info_cb(name),
                                 qos_profile_sensor_data)
    if live_mask_mode == "topic":
        node.create_subscription(Image, live_mask_topic, on_mask, qos_profile_sensor_data)
    pubs = {n: node.create_publisher(Image, f"/twinrl/twin/{n}/image_raw", 2) for n in cameras}
    overlay_pub = node.create_publisher(Image, "/twinrl/twin/overlay", 2)
    iou_pub = node.create_publisher(Float64, "/twinrl/twin/mask_iou", 5)

    def tick() -> None:
        with lock:
            q, width = state["joints"], state["width"]
            live = state["live"].get(overlay_camera)
            mask = state["mask"]
            pending, state["pending"] = state["pending"], None
        if pending is not None:            # swap the re-aligned transform in (GL lives in this thread)
            change = view.apply_alignment(pending)
            log.info("re-alignment swapped in: " + ", ".join(f"{k} {v:.2f}" for k, v in change.items()))
        if q is None:
            warn_once("no_joints", "waiting for /joint_states (fr3_joint1..7)")
            return
        stamp = node.get_clock().now().to_msg()
        try:
            images = view.render(q, width, names=list(set(cameras + [overlay_camera])))
        except JointStateError as exc:
            warn_once("render", f"twin not rendered: {exc}")
            return
        for n in cameras:
            pubs[n].publish(_image_msg(images[n], stamp, view.cameras[n].frame_id))
        live_mask = None
        if sim_mask is not None:
            live_mask = sim_mask.masks(q, width, names=(overlay_camera,))[overlay_camera]
        elif mask is not None and time.monotonic() - mask[1] < 2.0 / rate + 1.0:
            live_mask = mask[0]
        if live is not None:
            img, header = live
            overlay, iou = view.compare(overlay_camera, q, width, img, live_mask, images[overlay_camera])
            overlay_pub.publish(_image_msg(overlay, header.stamp, header.frame_id))
        else:
            warn_once("no_live", f"no live image on {prefix}/{overlay_camera}/image_raw yet: no overlay")
            iou = float("nan")
        iou_pub.publish(Float64(data=float(iou)))

    def run_realign() -> None:
        t0 = time.monotonic()
        try:
            sim = view.realign(progress=False)
        except RealignError as exc:
            log.error(f"re-alignment failed: {exc}")
        except Exception as exc:  # noqa: BLE001 - a background failure must be reported, not lost
            log.error(f"re-alignment failed: {type(exc).__name__}: {exc}")
        else:
            log.info(f"re-alignment finished in {time.monotonic() - t0:.1f} s; swapping it in")
            with lock:
                state["pending"] = sim
        finally:
            with lock:
                state["realigning"] = False

    def on_realign(request, response):
        scan = view.scan_path
        with lock:
            busy = state["realigning"]
        if busy:
            response.success, response.message = False, "a re-alignment is already running"
        elif scan is None:
            response.success, response.message = False, f"{view.twin_dir}/twin.json records no scan path"
        elif not scan.exists():
            response.success = False
            response.message = f"cannot re-align: scan {scan} (recorded in {view.twin_dir}/twin.json) is gone"
        else:
            with lock:
                state["realigning"] = True
            threading.Thread(target=run_realign, name="twin_realign", daemon=True).start()
            response.success = True
            response.message = (f"re-alignment from {scan} started; the new transform is swapped in when it "
                                "finishes (see the node log)")
        log.info(f"realign: {response.message}")
        return response

    node.create_service(Trigger, "/twinrl/twin/realign", on_realign)
    node.create_timer(1.0 / rate, tick)
    serve_generate_demonstrations(node, twin_dir)
    log.info(f"twin: {twin_dir} ({view.assets.task}); cameras {cameras}, overlay on {overlay_camera}, "
             f"live mask {live_mask_mode}, {rate:g} Hz")

    def shutdown():
        view.close()
        if sim_mask is not None:
            sim_mask.close()

    return spin_until_shutdown(node, on_shutdown=shutdown)


def serve_generate_demonstrations(node, default_twin: str) -> None:
    """The GenerateDemonstrations action server (see the module doc)."""
    from rclpy.action import ActionServer, CancelResponse, GoalResponse
    from rclpy.callback_groups import ReentrantCallbackGroup
    from twinrl_msgs.action import GenerateDemonstrations

    from twinrl_twin.demogen.generate import METHODS, generate

    log = node.get_logger()
    busy = threading.Lock()

    def on_goal(goal):
        if goal.method not in METHODS:
            log.error(f"generate_demonstrations: method must be one of {METHODS}, got {goal.method!r}")
            return GoalResponse.REJECT
        if busy.locked():
            log.error("generate_demonstrations: a generation is already running")
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def execute(goal_handle):
        g = goal_handle.request
        result = GenerateDemonstrations.Result()
        if not busy.acquire(blocking=False):
            result.ok, result.message = False, "a generation is already running"
            goal_handle.abort()
            return result
        try:
            twin = g.twin_dir or default_twin

            def on_result(_res, counts):
                fb = GenerateDemonstrations.Feedback()
                fb.generated, fb.rejected, fb.total = counts["generated"], counts["rejected"], counts["total"]
                goal_handle.publish_feedback(fb)

            try:
                summary = generate(twin, g.seed_demo_uri, g.output_dir, int(g.n_id), int(g.n_ood), method=g.method,
                                   workers=max(1, int(g.workers)), seed=int(g.seed), progress=False,
                                   on_result=on_result, cancelled=lambda: goal_handle.is_cancel_requested)
            except Exception as exc:  # noqa: BLE001 - bad goal (missing twin/demo, ...): abort with the reason
                result.ok, result.message = False, f"{type(exc).__name__}: {exc}"
                log.error(f"generate_demonstrations: {result.message}")
                goal_handle.abort()
                return result
        finally:
            busy.release()
        result.ok = summary["generated"] > 0
        result.generated, result.rejected = summary["generated"], summary["rejected"]
        reasons = sorted(summary["rejections"].items())
        result.rejection_reasons = [k for k, _ in reasons]
        result.rejection_counts = [int(v) for _, v in reasons]
        result.wall_time_s = float(summary["wall_time_s"])
        result.output_dir = summary["out"]
        missing = sum(len(v) for v in summary["missing_cells"].values())
        result.message = (f"{summary['generated']}/{summary['requested']} demos ({summary['demos_per_minute']:.0f}/min), "
                          f"{summary['rejected']} rejected" + (f", {missing} cells missing" if missing else ""))
        log.info(f"generate_demonstrations: {result.message} -> {result.output_dir}")
        if summary["cancelled"]:
            goal_handle.canceled()
        else:
            goal_handle.succeed()
        return result

    ActionServer(node, GenerateDemonstrations, "/twinrl/twin/generate_demonstrations", execute_callback=execute,
                 goal_callback=on_goal, cancel_callback=lambda _h: CancelResponse.ACCEPT,
                 callback_group=ReentrantCallbackGroup())


if __name__ == "__main__":
    sys.exit(main())
