"""twinrl_bringup.transforms: conventions (x, y, z, w), round trips, composition, slerp."""
import math

import numpy as np
import pytest

from twinrl_bringup import transforms as tf


def _random_quats(n, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, 4))
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def test_quaternion_order_is_xyzw():
    # 90 deg about z: (0, 0, sin45, cos45)
    q = tf.rotvec_to_quat([0.0, 0.0, math.pi / 2])
    assert np.allclose(q, [0, 0, math.sqrt(0.5), math.sqrt(0.5)])
    R = tf.quat_to_matrix(q)
    assert np.allclose(R @ [1, 0, 0], [0, 1, 0])
    assert np.allclose(tf.quat_to_wxyz(q), [math.sqrt(0.5), 0, 0, math.sqrt(0.5)])
    assert np.allclose(tf.quat_from_wxyz(tf.quat_to_wxyz(q)), q)


def test_round_trips_matrix_rotvec_euler():
    for q in _random_quats(50):
        qn = tf.normalize_quat(q)
        assert qn[3] >= 0
        assert np.allclose(tf.matrix_to_quat(tf.quat_to_matrix(q)), qn, atol=1e-12)
        assert np.allclose(tf.rotvec_to_quat(tf.quat_to_rotvec(q)), qn, atol=1e-12)
        e = tf.quat_to_euler(q, "xyz")
        assert tf.quat_angle(tf.quat_from_euler("xyz", e), q) < 1e-9


def test_compose_invert_and_points():
    rng = np.random.default_rng(1)
    for q1, q2 in zip(_random_quats(20, 2), _random_quats(20, 3)):
        p1, p2 = rng.normal(size=3), rng.normal(size=3)
        A, B = tf.pose_to_matrix(p1, q1), tf.pose_to_matrix(p2, q2)
        AB = tf.compose(A, B)
        p, q = tf.compose_pose(p1, q1, p2, q2)
        assert np.allclose(tf.matrix_to_pose7(AB), np.concatenate([p, q]), atol=1e-12)
        assert np.allclose(tf.compose(A, tf.invert(A)), np.eye(4), atol=1e-12)
        pi, qi = tf.invert_pose(p1, q1)
        assert np.allclose(tf.pose_to_matrix(pi, qi), tf.invert(A), atol=1e-12)
        pts = rng.normal(size=(5, 3))
        assert np.allclose(tf.transform_points(AB, pts), tf.transform_points(A, tf.transform_points(B, pts)))
        assert np.allclose(tf.quat_multiply(q1, q2), tf.matrix_to_quat(tf.quat_to_matrix(q1) @ tf.quat_to_matrix(q2)))


def test_slerp_and_rotation_between():
    a = tf.quat_from_euler("z", 0.0)
    b = tf.quat_from_euler("z", 1.0)
    mid = tf.slerp(a, b, 0.5)
    assert tf.quat_angle(mid, tf.quat_from_euler("z", 0.5)) < 1e-12
    both = tf.slerp(a, b, [0.0, 1.0])
    assert np.allclose(both[0], a) and np.allclose(both[1], b)
    rv = tf.rotation_between(a, b)
    assert np.allclose(rv, [0, 0, 1.0])
    assert tf.yaw_of(b) == pytest.approx(1.0)


def test_sign_continuous_keeps_each_quaternion_in_the_hemisphere_of_the_one_before():
    qs = tf.slerp([0, 0, 0, 1], tf.quat_from_euler("z", 3.0), np.linspace(0, 1, 7))
    flipped = qs * np.array([1, -1, 1, -1, -1, 1, -1])[:, None]
    out = tf.sign_continuous(flipped)
    assert (np.einsum("ij,ij->i", out[1:], out[:-1]) > 0).all()
    np.testing.assert_allclose(np.abs(out), np.abs(qs), atol=1e-12)     # same rotations
    np.testing.assert_array_equal(out[0], flipped[0])                   # the first one sets the sign
    assert not np.shares_memory(out, flipped)


@pytest.mark.parametrize("bad", [[0, 0, 0, 0], [np.nan, 0, 0, 1], [1, 2, 3]])
def test_bad_quaternions_raise_clear_errors(bad):
    with pytest.raises(ValueError, match="quaternion"):
        tf.normalize_quat(bad)


def test_bad_pose7_and_matrix_shapes():
    with pytest.raises(ValueError, match="pose"):
        tf.pose7_to_matrix([1, 2, 3])
    with pytest.raises(ValueError, match="4x4"):
        tf.invert(np.eye(3))
