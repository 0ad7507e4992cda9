"""Conversions between ROS messages and the bridge's plain data (numpy, dicts)."""
from __future__ import annotations

import numpy as np

from twinrl_bringup.transforms import quat_inverse, quat_multiply, quat_to_rotvec


def action_from_msg(msg) -> np.ndarray:
    """twinrl_msgs/Action -> (7,) [dx, dy, dz, rx, ry, rz, gripper] (NaN kept for the envelope)."""
    dp, dr = msg.delta_position, msg.delta_rotation
    return np.array([dp.x, dp.y, dp.z, dr.x, dr.y, dr.z, msg.gripper], dtype=float)


def action_to_msg(a7, msg=None):
    from twinrl_msgs.msg import Action

    msg = msg if msg is not None else Action()
    a = [float(v) for v in np.asarray(a7, dtype=float).reshape(7)]
    msg.delta_position.x, msg.delta_position.y, msg.delta_position.z = a[0], a[1], a[2]
    msg.delta_rotation.x, msg.delta_rotation.y, msg.delta_rotation.z = a[3], a[4], a[5]
    msg.gripper = a[6]
    return msg


def fill_pose(pose, position, quaternion) -> None:
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in position)
    (pose.orientation.x, pose.orientation.y, pose.orientation.z,
     pose.orientation.w) = (float(v) for v in quaternion)


def pose7_from_msg(pose) -> list[float]:
    p, o = pose.position, pose.orientation
    return [p.x, p.y, p.z, o.x, o.y, o.z, o.w]


def configuration_from_msg(msg) -> dict:
    """twinrl_msgs/ResetConfiguration -> the dict Backend.reset takes."""
    return {
        "task": msg.task,
        "object_pose": pose7_from_msg(msg.object_pose),
        "target_pose": pose7_from_msg(msg.target_pose),
        "cell_row": int(msg.cell_row),
        "cell_col": int(msg.cell_col),
        "region": int(msg.region),
        "seed": int(msg.seed),
    }


def configuration_to_msg(conf: dict, template=None):
    from twinrl_msgs.msg import ResetConfiguration

    msg = ResetConfiguration()
    if template is not None:
        msg.task = template.task
        msg.object_pose, msg.target_pose = template.object_pose, template.target_pose
        msg.cell_row, msg.cell_col = template.cell_row, template.cell_col
        msg.region, msg.seed = template.region, template.seed
    if not isinstance(conf, dict):
        return msg
    if "task" in conf:
        msg.task = str(conf["task"])
    for key in ("object_pose", "target_pose"):
        v = conf.get(key)
        if v is not None and len(v) == 7:
            fill_pose(getattr(msg, key), v[:3], v[3:])
    for key in ("cell_row", "cell_col", "region", "seed"):
        if conf.get(key) is not None:
            setattr(msg, key, int(conf[key]))
    return msg


def executed_delta(prev_p, prev_q, new_p, new_q) -> tuple[np.ndarray, np.ndarray]:
    """Translation and base-frame rotation vector taking the previous target to the new one."""
    dp = np.asarray(new_p, dtype=float) - np.asarray(prev_p, dtype=float)
    drot = quat_to_rotvec(quat_multiply(new_q, quat_inverse(prev_q)))
    return dp, drot


def image_msg(frame, stamp):
    from sensor_msgs.msg import Image

    img = np.ascontiguousarray(frame.image, dtype=np.uint8)
    msg = Image()
    msg.header.stamp = stamp
    msg.header.frame_id = frame.frame_id
    msg.height, msg.width = int(img.shape[0]), int(img.shape[1])
    msg.encoding = "rgb8"
    msg.step = int(img.shape[1] * 3)
    msg.data = img.tobytes()
    return msg


def camera_info_msg(frame, stamp):
    from sensor_msgs.msg import CameraInfo

    h, w = frame.image.shape[:2]
    msg = CameraInfo()
    msg.header.stamp = stamp
    msg.header.frame_id = frame.frame_id
    msg.height, msg.width = int(h), int(w)
    msg.distortion_model = "plumb_bob"
    msg.d = [0.0] * 5
    msg.k = [float(frame.fx), 0.0, float(frame.cx), 0.0, float(frame.fy), float(frame.cy), 0.0, 0.0, 1.0]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [float(frame.fx), 0.0, float(frame.cx), 0.0, 0.0, float(frame.fy), float(frame.cy), 0.0,
             0.0, 0.0, 1.0, 0.0]
    return msg
