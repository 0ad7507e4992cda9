"""Damped-least-squares inverse kinematics on MuJoCo site Jacobians.

The solver works on its own MjData (the simulation's state is never touched): it iterates
``dq = J^T (J J^T + lambda^2 I)^-1 e`` on the 6-D pose error of a site, adds a small pull
towards a rest posture in the Jacobian's null space, and clips every iterate to the joint
limits.
"""
from __future__ import annotations

from typing import Callable, Optional

import mujoco
import numpy as np



class DLSIK:
    def __init__(self, model: mujoco.MjModel, site: str, qpos_idx: np.ndarray, dof_idx: np.ndarray,
                 clip: Callable[[np.ndarray], np.ndarray], rest: np.ndarray,
                 damping: float = 0.05, max_iters: int = 30, pos_tol: float = 2e-4, rot_tol: float = 2e-3,
                 nullspace_gain: float = 0.05, max_dq: float = 0.3):
        self.model = model
        self.data = mujoco.MjData(model)
        self.site = model.site(site).id
        self.qpos_idx = np.asarray(qpos_idx)
        self.dof_idx = np.asarray(dof_idx)
        self.clip = clip
        self.rest = np.asarray(rest, dtype=float)
        self.damping = damping
        self.max_iters = max_iters
        self.pos_tol = pos_tol
        self.rot_tol = rot_tol
        self.nullspace_gain = nullspace_gain
        self.max_dq = max_dq
        self._jp = np.zeros((3, model.nv))
        self._jr = np.zeros((3, model.nv))
        self.last_error = (0.0, 0.0)

    def forward(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(site position, site rotation matrix) at joint positions ``q``."""
        self.data.qpos[self.qpos_idx] = q
        mujoco.mj_kinematics(self.model, self.data)
        return self.data.site_xpos[self.site].copy(), self.data.site_xmat[self.site].reshape(3, 3).copy()

    def solve(self, q0: np.ndarray, position: np.ndarray, quaternion: np.ndarray,
              qfull: Optional[np.ndarray] = None) -> np.ndarray:
        """Joint positions reaching the site pose (position, quaternion xyzw), from ``q0``."""
        m, d = self.model, self.data
        if qfull is not None:
            d.qpos[:] = qfull
        q = self.clip(np.asarray(q0, dtype=float).copy())
        x, y, z, w = np.asarray(quaternion, dtype=float)
        q_target = np.array([w, x, y, z]) / np.linalg.norm([w, x, y, z])
        q_site = np.zeros(4)
        e = np.zeros(6)
        r_local = np.zeros(3)
        best = np.inf
        lam2 = self.damping ** 2
        eye6 = np.eye(6)
        n = len(q)
        eye_n = np.eye(n)
        for _ in range(self.max_iters):
            d.qpos[self.qpos_idx] = q
            mujoco.mj_kinematics(m, d)
            mujoco.mj_comPos(m, d)
            e[:3] = position - d.site_xpos[self.site]
            mujoco.mju_mat2Quat(q_site, d.site_xmat[self.site])
            mujoco.mju_subQuat(r_local, q_target, q_site)  # target = site * exp(r_local), site frame
            e[3:] = d.site_xmat[self.site].reshape(3, 3) @ r_local
            pe, re = float(np.linalg.norm(e[:3])), float(np.linalg.norm(e[3:]))
            self.last_error = (pe, re)
            if pe < self.pos_tol and re < self.rot_tol:
                break
            total = pe + 0.1 * re
            if total > 0.995 * best:        # no more progress: the target is out of reach
                break
            best = min(best, total)
            mujoco.mj_jacSite(m, d, self._jp, self._jr, self.site)
            J = np.vstack([self._jp[:, self.dof_idx], self._jr[:, self.dof_idx]])
            Jpinv = J.T @ np.linalg.inv(J @ J.T + lam2 * eye6)
            dq = Jpinv @ e + (eye_n - Jpinv @ J) @ (self.nullspace_gain * (self.rest - q))
            step = float(np.max(np.abs(dq)))
            if step > self.max_dq:
                dq *= self.max_dq / step
            q = self.clip(q + dq)
        return q
