"""Rigid-body transforms: the project's one SE(3) / rotation module.

Conventions used everywhere in the stack:

* quaternions are ``(x, y, z, w)`` (ROS / geometry_msgs order), unit norm, returned with
  ``w >= 0``;
* rotation vectors are axis * angle (radians);
* a pose is ``(position (3,), quaternion (4,))`` or a 4x4 homogeneous matrix; a "pose7" is the
  flat ``[x, y, z, qx, qy, qz, qw]`` used by reset configurations;
* ``compose(a, b)`` is ``a * b`` (apply ``b`` first, expressed in ``a``'s frame), i.e. with
  ``T_base_tcp = compose(T_base_hand, T_hand_tcp)``.

scipy's :class:`~scipy.spatial.transform.Rotation` does the arithmetic.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

__all__ = [
    "Rotation",
    "normalize_quat",
    "quat_to_matrix",
    "matrix_to_quat",
    "quat_to_rotvec",
    "rotvec_to_quat",
    "quat_multiply",
    "quat_inverse",
    "quat_angle",
    "sign_continuous",
    "quat_from_euler",
    "quat_to_euler",
    "quat_from_wxyz",
    "quat_to_wxyz",
    "slerp",
    "rotation_between",
    "make_transform",
    "transform_parts",
    "pose_to_matrix",
    "matrix_to_pose",
    "pose7_to_matrix",
    "matrix_to_pose7",
    "compose",
    "invert",
    "transform_points",
    "compose_pose",
    "invert_pose",
    "yaw_of",
]


def _quat(q) -> np.ndarray:
    q = np.asarray(q, dtype=float).reshape(-1)
    if q.shape != (4,):
        raise ValueError(f"expected a quaternion (x, y, z, w) of 4 values, got {q.size}")
    if not np.all(np.isfinite(q)):
        raise ValueError(f"non-finite quaternion {q.tolist()}")
    n = float(np.linalg.norm(q))
    if n < 1e-12:
        raise ValueError("zero quaternion")
    return q / n


def _canonical(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, dtype=float)
    if q.ndim == 1:
        return -q if q[3] < 0 else q
    return np.where(q[..., 3:4] < 0, -q, q)


def normalize_quat(q) -> np.ndarray:
    """Unit quaternion (x, y, z, w) with w >= 0; ValueError for zero / non-finite input."""
    return _canonical(_quat(q))


def quat_to_matrix(q) -> np.ndarray:
    return Rotation.from_quat(_quat(q)).as_matrix()


def matrix_to_quat(m) -> np.ndarray:
    m = np.asarray(m, dtype=float)
    if m.shape != (3, 3):
        raise ValueError(f"expected a 3x3 rotation matrix, got shape {m.shape}")
    return _canonical(Rotation.from_matrix(m).as_quat())


def quat_to_rotvec(q) -> np.ndarray:
    return Rotation.from_quat(_canonical(_quat(q))).as_rotvec()


def rotvec_to_quat(rv) -> np.ndarray:
    rv = np.asarray(rv, dtype=float).reshape(-1)
    if rv.shape != (3,) or not np.all(np.isfinite(rv)):
        raise ValueError(f"expected a finite rotation vector of 3 values, got {rv.tolist()}")
    return _canonical(Rotation.from_rotvec(rv).as_quat())


def quat_multiply(a, b) -> np.ndarray:
    """``a * b``: rotate by ``b`` first, then by ``a``."""
    return _canonical((Rotation.from_quat(_quat(a)) * Rotation.from_quat(_quat(b))).as_quat())


def quat_inverse(q) -> np.ndarray:
    return _canonical(Rotation.from_quat(_quat(q)).inv().as_quat())


def quat_angle(a, b) -> float:
    """Angle (rad, in [0, pi]) of the rotation taking ``a`` to ``b``."""
    return float((Rotation.from_quat(_quat(b)) * Rotation.from_quat(_quat(a)).inv()).magnitude())


def sign_continuous(quats) -> np.ndarray:
    """A copy of the quaternion sequence ``quats`` (N, 4) with each one's sign flipped where
    needed to lie in the hemisphere of the one before (same rotations; clean slerps and
    differences along a path)."""
    Q = np.array(quats, dtype=float).reshape(-1, 4)
    for k in range(1, len(Q)):
        if np.dot(Q[k], Q[k - 1]) < 0:
            Q[k] = -Q[k]
    return Q


def quat_from_euler(seq: str, angles, degrees: bool = False) -> np.ndarray:
    return _canonical(Rotation.from_euler(seq, angles, degrees=degrees).as_quat())


def quat_to_euler(q, seq: str = "xyz", degrees: bool = False) -> np.ndarray:
    return Rotation.from_quat(_quat(q)).as_euler(seq, degrees=degrees)


def quat_from_wxyz(q) -> np.ndarray:
    """(w, x, y, z) (MuJoCo order) -> (x, y, z, w)."""
    q = np.asarray(q, dtype=float).reshape(-1)
    return normalize_quat(np.array([q[1], q[2], q[3], q[0]]))


def quat_to_wxyz(q) -> np.ndarray:
    """(x, y, z, w) -> (w, x, y, z) (MuJoCo order)."""
    q = normalize_quat(q)
    return np.array([q[3], q[0], q[1], q[2]])


def slerp(a, b, t) -> np.ndarray:
    """Spherical interpolation from ``a`` (t=0) to ``b`` (t=1); ``t`` scalar or array."""
    rots = Rotation.from_quat(np.stack([_quat(a), _quat(b)]))
    t_arr = np.asarray(t, dtype=float)
    out = Slerp([0.0, 1.0], rots)(np.clip(t_arr, 0.0, 1.0)).as_quat()
    return _canonical(out)


def rotation_between(a, b) -> np.ndarray:
    """Rotation vector (base frame) taking orientation ``a`` to ``b``: ``b = exp(rv) * a``."""
    return (Rotation.from_quat(_quat(b)) * Rotation.from_quat(_quat(a)).inv()).as_rotvec()


def make_transform(position=(0.0, 0.0, 0.0), rotation=None) -> np.ndarray:
    """4x4 matrix from a position and a rotation (3x3 matrix or quaternion xyzw or None)."""
    T = np.eye(4)
    T[:3, 3] = np.asarray(position, dtype=float).reshape(3)
    if rotation is not None:
        r = np.asarray(rotation, dtype=float)
        T[:3, :3] = r if r.shape == (3, 3) else quat_to_matrix(r)
    return T


def transform_parts(T) -> tuple[np.ndarray, np.ndarray]:
    """4x4 -> (position (3,), rotation matrix (3, 3))."""
    T = np.asarray(T, dtype=float)
    if T.shape != (4, 4):
        raise ValueError(f"expected a 4x4 transform, got shape {T.shape}")
    return T[:3, 3].copy(), T[:3, :3].copy()


def pose_to_matrix(position, quaternion) -> np.ndarray:
    return make_transform(position, _quat(quaternion))


def matrix_to_pose(T) -> tuple[np.ndarray, np.ndarray]:
    p, R = transform_parts(T)
    return p, matrix_to_quat(R)


def pose7_to_matrix(pose7) -> np.ndarray:
    v = np.asarray(pose7, dtype=float).reshape(-1)
    if v.shape != (7,):
        raise ValueError(f"expected a pose [x, y, z, qx, qy, qz, qw], got {v.size} values")
    return pose_to_matrix(v[:3], v[3:])


def matrix_to_pose7(T) -> np.ndarray:
    p, q = matrix_to_pose(T)
    return np.concatenate([p, q])


def compose(*transforms) -> np.ndarray:
    """Product of 4x4 transforms, left to right."""
    out = np.eye(4)
    for T in transforms:
        out = out @ np.asarray(T, dtype=float)
    return out


def invert(T) -> np.ndarray:
    p, R = transform_parts(T)
    out = np.eye(4)
    out[:3, :3] = R.T
    out[:3, 3] = -R.T @ p
    return out


def transform_points(T, points) -> np.ndarray:
    """Apply a 4x4 transform to points of shape (..., 3)."""
    T = np.asarray(T, dtype=float)
    pts = np.asarray(points, dtype=float)
    return pts @ T[:3, :3].T + T[:3, 3]


def compose_pose(p_a, q_a, p_b, q_b) -> tuple[np.ndarray, np.ndarray]:
    """(p, q) of pose a * pose b."""
    Ra = Rotation.from_quat(_quat(q_a))
    p = np.asarray(p_a, dtype=float) + Ra.apply(np.asarray(p_b, dtype=float))
    return p, _canonical((Ra * Rotation.from_quat(_quat(q_b))).as_quat())


def invert_pose(p, q) -> tuple[np.ndarray, np.ndarray]:
    Rinv = Rotation.from_quat(_quat(q)).inv()
    return -Rinv.apply(np.asarray(p, dtype=float)), _canonical(Rinv.as_quat())


def yaw_of(q) -> float:
    """Heading (rad) of the body x axis projected on the base x/y plane."""
    x_axis = quat_to_matrix(q)[:, 0]
    return float(np.arctan2(x_axis[1], x_axis[0]))
