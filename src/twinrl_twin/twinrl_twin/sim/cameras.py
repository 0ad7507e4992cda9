"""Offscreen cameras of the sim world: images, pinhole intrinsics, optical-frame poses, and
the visual perturbations used for robustness evaluation (clutter, dark, dynamic light).

Headless rendering uses ``MUJOCO_GL=egl``, or ``osmesa`` where libEGL is not installed
(:func:`twinrl_twin.sim.gl.select_gl_backend`, run before mujoco is imported).
"""
from __future__ import annotations

import math
import os
from typing import Optional

import mujoco
import numpy as np

from .config import CamerasConfig

CAMERA_NAMES = ("third_person", "wrist")
_OPTICAL = np.diag([1.0, -1.0, -1.0])   # MuJoCo camera (x right, y up, -z forward) -> optical


def intrinsics(width: int, height: int, fovy_deg: float) -> dict:
    fy = 0.5 * height / math.tan(math.radians(fovy_deg) / 2)
    return {"fx": fy, "fy": fy, "cx": (width - 1) / 2.0, "cy": (height - 1) / 2.0,
            "width": int(width), "height": int(height)}


def _make_renderer(model: mujoco.MjModel, height: int, width: int) -> mujoco.Renderer:
    try:
        return mujoco.Renderer(model, height, width)
    except Exception as first:
        raise RuntimeError(
            f"cannot create an offscreen renderer with MUJOCO_GL={os.environ.get('MUJOCO_GL', '(unset)')}: "
            f"{first}. Install libegl1 libegl-mesa0 (or libosmesa6 and set MUJOCO_GL=osmesa)."
        ) from first


class CameraRig:
    def __init__(self, model: mujoco.MjModel, cfg: CamerasConfig, perturbation: Optional[str] = None):
        self.model = model
        self.cfg = cfg
        self.perturbation = perturbation
        self.cams = {name: getattr(cfg, name) for name in CAMERA_NAMES}
        self.cam_ids = {name: model.camera(name).id for name in CAMERA_NAMES}
        self.intrinsics = {name: intrinsics(c.width, c.height, c.fovy) for name, c in self.cams.items()}
        self._renderers = {}
        for name, c in self.cams.items():
            key = (c.height, c.width)
            if key not in self._renderers:
                self._renderers[key] = _make_renderer(model, c.height, c.width)
        self.option = mujoco.MjvOption()
        self.option.geomgroup[:] = 1
        self.option.sitegroup[:] = 0
        self.segmentation = False
        self.main_light = model.light("main").id
        self.dyn_light = model.light("dynamic").id
        self.base_diffuse = model.light_diffuse.copy()
        self.base_headlight = (model.vis.headlight.ambient.copy(), model.vis.headlight.diffuse.copy())
        self._phase = 0.0
        self._clutter = [model.geom(f"clutter{i}").id for i in range(cfg.perturbations.clutter_objects)
                         if perturbation == "clutter"]

    def randomize(self, rng: np.random.Generator) -> None:
        """Per-episode appearance of the perturbation."""
        m = self.model
        m.light_diffuse[:] = self.base_diffuse
        m.vis.headlight.ambient[:] = self.base_headlight[0]
        m.vis.headlight.diffuse[:] = self.base_headlight[1]
        if self.perturbation == "dark":
            s = self.cfg.perturbations.dark_scale
            m.light_diffuse[self.main_light] = self.base_diffuse[self.main_light] * s
            m.vis.headlight.ambient[:] = self.base_headlight[0] * s
            m.vis.headlight.diffuse[:] = self.base_headlight[1] * s
        elif self.perturbation == "dynamic_light":
            self._phase = float(rng.uniform(0, 2 * math.pi))
        elif self.perturbation == "clutter":
            for gid in self._clutter:
                body = m.geom_bodyid[gid]
                # background: around the task area, on the table or on the floor behind it
                while True:
                    x, y = rng.uniform(0.1, 0.95), rng.uniform(-0.6, 0.6)
                    if not (0.3 < x < 0.72 and -0.38 < y < 0.42) and not (x < 0.22 and abs(y) < 0.2):
                        break
                size = rng.uniform(0.02, 0.05, size=3)
                m.geom_size[gid] = size
                m.body_pos[body] = [x, y, size[2]]
                m.geom_rgba[gid, :3] = rng.uniform(0.05, 1.0, size=3)

    def _update_dynamic_light(self, t: float) -> None:
        if self.perturbation != "dynamic_light":
            return
        period = self.cfg.perturbations.dynamic_period
        w = 2 * math.pi * t / period + self._phase
        m = self.model
        color = 0.5 + 0.5 * np.array([math.sin(w), math.sin(w + 2.1), math.sin(w + 4.2)])
        m.light_diffuse[self.dyn_light] = 0.9 * color
        m.light_pos[self.dyn_light] = [0.5 + 0.3 * math.cos(0.7 * w), 0.4 * math.sin(0.7 * w), 0.9]

    def pose(self, data: mujoco.MjData, name: str) -> np.ndarray:
        """4x4 pose of the camera's optical frame (x right, y down, z forward) in the base frame."""
        cid = self.cam_ids[name]
        T = np.eye(4)
        T[:3, :3] = data.cam_xmat[cid].reshape(3, 3) @ _OPTICAL
        T[:3, 3] = data.cam_xpos[cid]
        return T

    def render(self, data: mujoco.MjData, names=CAMERA_NAMES, segmentation: bool = False) -> dict:
        """name -> (image uint8 HxWx3, intrinsics dict, 4x4 optical pose). With
        ``segmentation`` the image is (H, W, 2) int32 (object id, object type)."""
        self._update_dynamic_light(float(data.time))
        out = {}
        for name in names:
            c = self.cams[name]
            r = self._renderers[(c.height, c.width)]
            if segmentation:
                r.enable_segmentation_rendering()
            r.update_scene(data, camera=self.cam_ids[name], scene_option=self.option)
            flags = r.scene.flags
            flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
            flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = 0
            flags[mujoco.mjtRndFlag.mjRND_FOG] = 0
            img = r.render().copy()
            if segmentation:
                r.disable_segmentation_rendering()
            out[name] = (img, dict(self.intrinsics[name]), self.pose(data, name))
        return out

    def close(self) -> None:
        for r in self._renderers.values():
            try:
                r.close()
            except Exception:
                pass
        self._renderers = {}
