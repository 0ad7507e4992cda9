"""MJCF of a task scene: table, lights, cameras, the FR3 (from fr3_model), the task's object
and fixture and, for the "clutter" perturbation, visual-only background objects.

Rendering settings are chosen for software GL: no shadows, reflections, skybox or
multisampling, low-poly geometry only.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from twinrl_bringup import transforms as tf

from . import fr3_model
from .config import CameraConfig, CamerasConfig
from .tasks import Task

PERTURBATIONS = (None, "clutter", "dark", "dynamic_light")
TIMESTEP = 0.002


def camera_quat_wxyz(cam: CameraConfig) -> np.ndarray:
    """MuJoCo camera orientation (looks along -z, y up) for ``position`` -> ``lookat``."""
    f = np.asarray(cam.lookat, float) - np.asarray(cam.position, float)
    if np.linalg.norm(f) < 1e-9:
        raise ValueError("camera lookat equals its position")
    f /= np.linalg.norm(f)
    right = np.cross(f, np.asarray(cam.up, float))
    if np.linalg.norm(right) < 1e-6:
        raise ValueError("camera up vector is parallel to its viewing direction")
    right /= np.linalg.norm(right)
    up = np.cross(right, f)
    R = np.stack([right, up, -f], axis=1)
    return tf.quat_to_wxyz(tf.matrix_to_quat(R))


def _camera_xml(name: str, cam: CameraConfig) -> str:
    q = camera_quat_wxyz(cam)
    pos = " ".join(f"{x:.6g}" for x in cam.position)
    quat = " ".join(f"{x:.9g}" for x in q)
    return f'<camera name="{name}" pos="{pos}" quat="{quat}" fovy="{cam.fovy:.6g}"/>'


def build_scene_xml(task: Task, cameras: CamerasConfig, perturbation: Optional[str] = None,
                    desc: Optional[fr3_model.Description] = None) -> str:
    if perturbation not in PERTURBATIONS:
        raise ValueError(f"perturbation must be one of {PERTURBATIONS}, got {perturbation!r}")
    parts = fr3_model.mjcf_parts(desc)
    wrist_cam = _camera_xml("wrist", cameras.wrist)
    # the wrist camera goes into its parent body of the generated robot tree
    parent = cameras.wrist.parent
    marker = f'<body name="{parent}"'
    body_xml = parts["worldbody"]
    if parent != "world":
        at = body_xml.find(marker)
        if at < 0:
            raise ValueError(f"cameras.wrist.parent: no robot body named {parent!r}")
        end = body_xml.find(">", at) + 1
        body_xml = body_xml[:end] + "\n            " + wrist_cam + body_xml[end:]
    world_cams = []
    for name, cam in (("third_person", cameras.third_person), ("wrist", cameras.wrist)):
        if cam.parent == "world":
            world_cams.append("    " + _camera_xml(name, cam))
        elif name == "third_person":
            raise ValueError("cameras.third_person.parent must be 'world'")

    clutter = []
    if perturbation == "clutter":
        for i in range(cameras.perturbations.clutter_objects):
            kind = ("box", "cylinder", "sphere")[i % 3]
            clutter.append(f'    <body name="clutter{i}" pos="0 0 -1"><geom name="clutter{i}" class="visual" '
                           f'type="{kind}" size="0.03 0.03 0.03" rgba="0.5 0.5 0.5 1"/></body>')
    return f"""<mujoco model="{task.name}">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{TIMESTEP}" integrator="implicitfast" cone="elliptic" impratio="10">
    <flag multiccd="enable"/>
  </option>
  <size memory="20M"/>
  <visual>
    <quality shadowsize="0" offsamples="0"/>
    <headlight ambient="0.35 0.35 0.35" diffuse="0.45 0.45 0.45" specular="0 0 0"/>
    <rgba haze="0.6 0.65 0.7 1"/>
    <map znear="0.01" zfar="20"/>
    <global offwidth="{max(cameras.third_person.width, cameras.wrist.width)}" offheight="{max(cameras.third_person.height, cameras.wrist.height)}"/>
  </visual>
  <default>
{parts["default"]}
    <default class="object">
      <geom contype="1" conaffinity="3" condim="4" friction="{task.cfg.object.friction:.6g} 0.01 0.001" group="2"/>
    </default>
    <default class="object_visual">
      <geom contype="0" conaffinity="0" group="2" mass="0"/>
    </default>
    <default class="fixture">
      <geom contype="1" conaffinity="3" condim="3" friction="0.6 0.01 0.001" group="2"/>
    </default>
    <default class="fixture_visual">
      <geom contype="0" conaffinity="0" group="2"/>
    </default>
    <default class="visual">
      <geom contype="0" conaffinity="0" group="3"/>
    </default>
  </default>
  <asset>
{task.xml_assets()}
  </asset>
  <worldbody>
    <light name="main" pos="0.4 0.0 1.6" dir="0 0 -1" directional="true" diffuse="0.55 0.55 0.55" specular="0 0 0" castshadow="false"/>
    <light name="dynamic" pos="0.5 0.0 0.9" dir="0 0 -1" diffuse="0 0 0" specular="0 0 0" castshadow="false" cutoff="60"/>
    <geom name="floor" type="plane" size="3 3 0.1" pos="0 0 -0.75" rgba="0.45 0.45 0.48 1" contype="0" conaffinity="0" group="3"/>
    <geom name="table" type="box" size="0.55 0.75 0.02" pos="0.4 0 -0.02" rgba="0.62 0.5 0.38 1" contype="1" conaffinity="3" condim="3" friction="0.8 0.01 0.001"/>
    <geom name="table_leg" type="box" size="0.5 0.7 0.36" pos="0.4 0 -0.4" rgba="0.35 0.3 0.25 1" contype="0" conaffinity="0" group="3"/>
{chr(10).join(world_cams)}
{body_xml}
{task.xml_bodies()}
{chr(10).join(clutter)}
  </worldbody>
  <actuator>
{parts["actuator"]}
  </actuator>
  <equality>
{parts["equality"]}
  </equality>
</mujoco>
"""
