"""The FR3 robot model: one Python description, written out as URDF and as MJCF.

The kinematics are Franka's published modified-DH parameters (``config/fr3.yaml``); the
geometry is deliberately low-poly (capsules and boxes) so that software rendering stays fast.
Both files come from :func:`describe`, so they cannot drift apart:

* ``src/twinrl_twin/assets/fr3.urdf``  for ROS / rviz / pinocchio / the twin;
* ``src/twinrl_twin/assets/fr3.xml``   a standalone MuJoCo model of the arm and gripper.

The sim world (:mod:`twinrl_twin.sim.scene`) builds its scenes from :func:`mjcf_parts`, the
same source as ``fr3.xml``. Regenerate the files with
``python -m twinrl_twin.sim.fr3_model --write``.

Frames: ``fr3_link0`` (base) ... ``fr3_link7``, ``fr3_link8`` (flange), ``fr3_hand``,
``fr3_hand_tcp`` (TCP, ``tcp_offset`` below the hand along its z axis), fingers
``fr3_leftfinger`` / ``fr3_rightfinger`` moving along +y / -y of the hand.
"""
from __future__ import annotations

import argparse
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from twinrl_bringup import transforms as tf
from twinrl_bringup.config import load_config, resolve_config_path

ARM_JOINTS = tuple(f"fr3_joint{i}" for i in range(1, 8))
FINGER_JOINTS = ("fr3_finger_joint1", "fr3_finger_joint2")
LINKS = tuple(f"fr3_link{i}" for i in range(0, 8))
FRAMES = LINKS + ("fr3_link8", "fr3_hand", "fr3_hand_tcp")
ROBOT_GEOM_GROUP = 1


@dataclass
class DHRow:
    a: float
    d: float
    alpha: float


@dataclass
class GripperConfig:
    finger_travel: float = 0.04
    finger_mount: float = 0.0584
    pad_length: float = 0.05
    pad_width: float = 0.022
    pad_thickness: float = 0.008
    friction: tuple[float, float, float] = (2.0, 0.02, 0.002)
    finger_mass: float = 0.05
    kp: float = 2500.0
    force_limit: float = 40.0


@dataclass
class ServoConfig:
    kp: tuple[float, float, float, float, float, float, float]
    kv: tuple[float, float, float, float, float, float, float]
    armature: tuple[float, float, float, float, float, float, float]
    damping: tuple[float, float, float, float, float, float, float]


@dataclass
class RGBAConfig:
    link: tuple[float, float, float, float] = (0.92, 0.92, 0.94, 1.0)
    joint: tuple[float, float, float, float] = (0.25, 0.25, 0.28, 1.0)
    finger: tuple[float, float, float, float] = (0.2, 0.2, 0.2, 1.0)


@dataclass
class FR3Config:
    name: str
    dh: list[DHRow]
    flange_d: float
    hand_yaw: float
    tcp_offset: float
    joint_lower: tuple[float, float, float, float, float, float, float]
    joint_upper: tuple[float, float, float, float, float, float, float]
    joint_velocity: tuple[float, float, float, float, float, float, float]
    joint_effort: tuple[float, float, float, float, float, float, float]
    home: tuple[float, float, float, float, float, float, float]
    link_mass: tuple[float, float, float, float, float, float, float, float]
    hand_mass: float
    link_radius: tuple[float, float, float, float, float, float, float, float]
    gripper: GripperConfig
    servo: ServoConfig
    rgba: RGBAConfig = field(default_factory=RGBAConfig)

    def validate(self) -> None:
        if len(self.dh) != 7:
            raise ValueError(f"dh: expected 7 rows, got {len(self.dh)}")
        for i, (lo, hi, h) in enumerate(zip(self.joint_lower, self.joint_upper, self.home)):
            if lo >= hi:
                raise ValueError(f"joint {i + 1}: lower {lo} must be below upper {hi}")
            if not lo <= h <= hi:
                raise ValueError(f"home[{i}]={h} outside the joint limits [{lo}, {hi}]")
        if not 0 < self.gripper.finger_travel <= 0.05:
            raise ValueError("gripper.finger_travel must be in (0, 0.05] m")


def load_fr3_config(path=None) -> FR3Config:
    return load_config(resolve_config_path(path if path is not None else "fr3"), FR3Config)


# --- the description ---------------------------------------------------------------------------

@dataclass
class Geom:
    kind: str                      # "capsule" (fromto) or "box" (pos, quat, size half-extents)
    size: tuple                    # capsule: (radius,); box: half extents
    fromto: Optional[tuple] = None
    pos: tuple = (0.0, 0.0, 0.0)
    quat: tuple = (0.0, 0.0, 0.0, 1.0)   # x, y, z, w
    rgba: tuple = (1, 1, 1, 1)
    name: str = ""
    pad: bool = False


@dataclass
class Link:
    name: str
    mass: float
    com: tuple
    inertia: tuple                 # diagonal, about com, aligned with the link frame
    geoms: list


@dataclass
class Joint:
    name: str
    kind: str                      # "revolute" | "prismatic" | "fixed"
    parent: str
    child: str
    pos: tuple
    quat: tuple                    # x, y, z, w
    axis: tuple = (0.0, 0.0, 1.0)
    lower: float = 0.0
    upper: float = 0.0
    velocity: float = 0.0
    effort: float = 0.0
    mimic: Optional[str] = None


@dataclass
class Description:
    name: str
    links: list
    joints: list
    tcp_offset: float
    cfg: FR3Config


def _dh_origin(row: DHRow) -> tuple[tuple, tuple]:
    """(pos, quat xyzw) of RotX(alpha) * TransX(a) * TransZ(d)."""
    ca, sa = math.cos(row.alpha), math.sin(row.alpha)
    pos = (row.a, -sa * row.d, ca * row.d)
    quat = tuple(tf.quat_from_euler("x", row.alpha))
    return _clean(pos), _clean(quat)


def _clean(v) -> tuple:
    """Round away float noise so both generated files print identical, stable numbers."""
    return tuple(0.0 if abs(x) < 1e-15 else float(x) for x in v)


def _capsule_inertia(mass: float, segments: list, radius: float) -> tuple[tuple, tuple]:
    if segments:
        mids = np.array([(np.asarray(a) + np.asarray(b)) / 2 for a, b in segments])
        lens = np.array([np.linalg.norm(np.asarray(b) - np.asarray(a)) for a, b in segments])
        com = mids.mean(axis=0) if lens.sum() < 1e-9 else (mids * lens[:, None]).sum(0) / lens.sum()
        length = float(lens.sum())
    else:
        com, length = np.zeros(3), 0.0
    # isotropic approximation of a solid cylinder of that radius and length
    i = mass * (3 * radius ** 2 + length ** 2) / 12.0 + 0.4 * mass * radius ** 2 * 0.5
    return _clean(np.round(com, 6)), (round(i, 6),) * 3


def describe(cfg: Optional[FR3Config] = None) -> Description:
    cfg = cfg if cfg is not None else load_fr3_config()
    links: list[Link] = []
    joints: list[Joint] = []
    rg = cfg.rgba
    # link i geometry: a housing around joint i's axis plus the segment to joint i+1's origin
    for i in range(8):
        r = cfg.link_radius[i]
        geoms: list[Geom] = []
        segments = []
        if i == 0:
            nxt = (0.0, 0.0, cfg.dh[0].d)
            geoms.append(Geom("capsule", (r,), fromto=(0.0, 0.0, 0.03) + (0.0, 0.0, nxt[2] - 0.06), rgba=rg.link))
            segments.append(((0, 0, 0.03), (0, 0, nxt[2] - 0.06)))
        else:
            geoms.append(Geom("capsule", (r * 1.02,), fromto=(0.0, 0.0, -0.055, 0.0, 0.0, 0.055), rgba=rg.joint))
            if i < 7:
                row = cfg.dh[i]
                corner = (row.a, 0.0, 0.0)
                end, _ = _dh_origin(row)
                if abs(row.a) > 1e-9:
                    geoms.append(Geom("capsule", (r,), fromto=(0.0, 0.0, 0.0) + corner, rgba=rg.link))
                    segments.append(((0, 0, 0), corner))
                if abs(row.d) > 1e-9:
                    geoms.append(Geom("capsule", (r,), fromto=corner + end, rgba=rg.link))
                    segments.append((corner, end))
            else:
                end = (0.0, 0.0, cfg.flange_d)
                geoms.append(Geom("capsule", (r,), fromto=(0.0, 0.0, 0.0) + end, rgba=rg.link))
                segments.append(((0, 0, 0), end))
        com, inertia = _capsule_inertia(cfg.link_mass[i], segments, r)
        links.append(Link(f"fr3_link{i}", cfg.link_mass[i], com, inertia, geoms))

    for i, row in enumerate(cfg.dh):
        pos, quat = _dh_origin(row)
        joints.append(Joint(ARM_JOINTS[i], "revolute", f"fr3_link{i}", f"fr3_link{i + 1}", pos, quat,
                            lower=cfg.joint_lower[i], upper=cfg.joint_upper[i],
                            velocity=cfg.joint_velocity[i], effort=cfg.joint_effort[i]))
    ident = (0.0, 0.0, 0.0, 1.0)
    links.append(Link("fr3_link8", 0.0, (0, 0, 0), (0, 0, 0), []))
    joints.append(Joint("fr3_joint8", "fixed", "fr3_link7", "fr3_link8", (0.0, 0.0, cfg.flange_d), ident))

    g = cfg.gripper
    hand_geoms = [
        Geom("box", (0.025, 0.095, 0.028), pos=(0.0, 0.0, 0.03), rgba=rg.link, name="fr3_hand_body"),
        Geom("capsule", (0.04,), fromto=(0.0, 0.0, 0.0, 0.0, 0.0, 0.01), rgba=rg.joint),
    ]
    links.append(Link("fr3_hand", cfg.hand_mass, (0.0, 0.0, 0.03), (0.002, 0.002, 0.002), hand_geoms))
    hand_quat = _clean(tf.quat_from_euler("z", cfg.hand_yaw))
    joints.append(Joint("fr3_hand_joint", "fixed", "fr3_link8", "fr3_hand", (0.0, 0.0, 0.0), hand_quat))
    links.append(Link("fr3_hand_tcp", 0.0, (0, 0, 0), (0, 0, 0), []))
    joints.append(Joint("fr3_hand_tcp_joint", "fixed", "fr3_hand", "fr3_hand_tcp", (0.0, 0.0, cfg.tcp_offset), ident))

    pad_z = cfg.tcp_offset + 0.01 - g.finger_mount - g.pad_length / 2
    for side, sign, jname in (("left", 1.0, FINGER_JOINTS[0]), ("right", -1.0, FINGER_JOINTS[1])):
        geoms = [
            Geom("box", (g.pad_width / 2, g.pad_thickness / 2, g.pad_length / 2),
                 pos=(0.0, sign * g.pad_thickness / 2, round(pad_z, 6)), rgba=rg.finger,
                 name=f"fr3_{side}finger_pad", pad=True),
            Geom("box", (g.pad_width / 2, 0.006, 0.012),
                 pos=(0.0, sign * (g.pad_thickness + 0.006), 0.008), rgba=rg.finger),
        ]
        links.append(Link(f"fr3_{side}finger", g.finger_mass, (0.0, sign * 0.005, round(pad_z, 6)),
                          (1e-5, 1e-5, 1e-5), geoms))
        joints.append(Joint(jname, "prismatic", "fr3_hand", f"fr3_{side}finger", (0.0, 0.0, g.finger_mount),
                            ident, axis=(0.0, sign, 0.0), lower=0.0, upper=g.finger_travel,
                            velocity=0.2, effort=g.force_limit,
                            mimic=FINGER_JOINTS[0] if side == "right" else None))
    return Description(cfg.name, links, joints, cfg.tcp_offset, cfg)


# --- URDF --------------------------------------------------------------------------------------

def _f(x: float) -> str:
    return repr(float(x)) if x != 0 else "0"


def _v(v) -> str:
    return " ".join(_f(x) for x in v)


def _urdf_geometry(geom: Geom) -> tuple[str, str]:
    """(origin element, geometry element) of a geom in URDF (capsules become cylinders)."""
    if geom.kind == "box":
        rpy = tf.quat_to_euler(geom.quat, "xyz") if geom.quat != (0.0, 0.0, 0.0, 1.0) else (0, 0, 0)
        origin = f'<origin xyz="{_v(geom.pos)}" rpy="{_v(_clean(rpy))}"/>'
        return origin, f'<box size="{_v([2 * s for s in geom.size])}"/>'
    a = np.asarray(geom.fromto[:3])
    b = np.asarray(geom.fromto[3:])
    axis = b - a
    length = float(np.linalg.norm(axis))
    z = np.array([0.0, 0.0, 1.0])
    if length < 1e-12:
        rv = np.zeros(3)
    else:
        u = axis / length
        c = np.cross(z, u)
        s = np.linalg.norm(c)
        rv = np.zeros(3) if s < 1e-12 and u[2] > 0 else (
            np.array([math.pi, 0.0, 0.0]) if s < 1e-12 else c / s * math.atan2(s, float(u @ z)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gimbal lock for x-aligned segments is harmless here
        rpy = tf.Rotation.from_rotvec(rv).as_euler("xyz")
    mid = (a + b) / 2
    origin = f'<origin xyz="{_v(_clean(np.round(mid, 9)))}" rpy="{_v(_clean(np.round(rpy, 12)))}"/>'
    return origin, f'<cylinder radius="{_f(geom.size[0])}" length="{_f(round(length + 2 * geom.size[0], 9))}"/>'


GENERATED_MARK = "GENERATED by twinrl_twin.sim.fr3_model"


def is_generated_urdf(path) -> bool:
    """Whether the URDF at ``path`` was written by :func:`to_urdf` (its capsules are then only
    approximated by cylinders, and :func:`describe` is the exact geometry)."""
    return GENERATED_MARK in Path(path).read_text(errors="replace")[:2000]


def use_description(mode: str, urdf) -> bool:
    """Whether a robot model choice ``mode`` (auto | urdf | description) means this
    description rather than the URDF at ``urdf``: ``auto`` picks it for a generated URDF."""
    return mode == "description" or (mode == "auto" and is_generated_urdf(urdf))


def to_urdf(desc: Optional[Description] = None) -> str:
    desc = desc if desc is not None else describe()
    out = ['<?xml version="1.0"?>',
           f"<!-- {GENERATED_MARK} from config/fr3.yaml; do not edit. -->",
           f'<robot name="{desc.name}">']
    materials = {}
    for link in desc.links:
        out.append(f'  <link name="{link.name}">')
        if link.mass > 0:
            out.append("    <inertial>")
            out.append(f'      <origin xyz="{_v(link.com)}" rpy="0 0 0"/>')
            out.append(f'      <mass value="{_f(link.mass)}"/>')
            ixx, iyy, izz = link.inertia
            out.append(f'      <inertia ixx="{_f(ixx)}" ixy="0" ixz="0" iyy="{_f(iyy)}" iyz="0" izz="{_f(izz)}"/>')
            out.append("    </inertial>")
        for geom in link.geoms:
            origin, geometry = _urdf_geometry(geom)
            mat = materials.setdefault(tuple(geom.rgba), f"fr3_material{len(materials)}")
            out.append("    <visual>")
            out.append(f"      {origin}")
            out.append(f"      <geometry>{geometry}</geometry>")
            out.append(f'      <material name="{mat}"><color rgba="{_v(geom.rgba)}"/></material>')
            out.append("    </visual>")
            out.append("    <collision>")
            out.append(f"      {origin}")
            out.append(f"      <geometry>{geometry}</geometry>")
            out.append("    </collision>")
        out.append("  </link>")
    for j in desc.joints:
        jtype = {"revolute": "revolute", "prismatic": "prismatic", "fixed": "fixed"}[j.kind]
        rpy = _clean(np.round(tf.quat_to_euler(j.quat, "xyz"), 15))
        out.append(f'  <joint name="{j.name}" type="{jtype}">')
        out.append(f'    <parent link="{j.parent}"/>')
        out.append(f'    <child link="{j.child}"/>')
        out.append(f'    <origin xyz="{_v(j.pos)}" rpy="{_v(rpy)}"/>')
        if j.kind != "fixed":
            out.append(f'    <axis xyz="{_v(j.axis)}"/>')
            out.append(f'    <limit lower="{_f(j.lower)}" upper="{_f(j.upper)}" '
                       f'velocity="{_f(j.velocity)}" effort="{_f(j.effort)}"/>')
        if j.mimic:
            out.append(f'    <mimic joint="{j.mimic}" multiplier="1" offset="0"/>')
        out.append("  </joint>")
    out.append("</robot>")
    return "\n".join(out) + "\n"


# --- MJCF --------------------------------------------------------------------------------------

def _wxyz(q) -> str:
    x, y, z, w = q
    return _v((w, x, y, z))


def _mjcf_geom(geom: Geom, indent: str, cls: str) -> str:
    name = f' name="{geom.name}"' if geom.name else ""
    cls_attr = f' class="{cls}_pad"' if geom.pad else f' class="{cls}"'
    rgba = f' rgba="{_v(geom.rgba)}"'
    if geom.kind == "capsule":
        return f'{indent}<geom{name}{cls_attr} type="capsule" size="{_f(geom.size[0])}" fromto="{_v(geom.fromto)}"{rgba}/>'
    quat = "" if geom.quat == (0.0, 0.0, 0.0, 1.0) else f' quat="{_wxyz(geom.quat)}"'
    return f'{indent}<geom{name}{cls_attr} type="box" size="{_v(geom.size)}" pos="{_v(geom.pos)}"{quat}{rgba}/>'


def mjcf_parts(desc: Optional[Description] = None, cls: str = "fr3") -> dict[str, str]:
    """MJCF fragments of the robot: ``default``, ``worldbody`` (the arm's body tree),
    ``actuator``, ``equality``, ``contact``; a scene puts them into its own sections."""
    desc = desc if desc is not None else describe()
    cfg = desc.cfg
    g = cfg.gripper
    children: dict[str, list[Joint]] = {}
    for j in desc.joints:
        children.setdefault(j.parent, []).append(j)
    links = {link.name: link for link in desc.links}

    def body(link_name: str, joint: Optional[Joint], depth: int) -> list[str]:
        ind = "  " * depth
        link = links[link_name]
        lines = []
        if joint is None:
            lines.append(f'{ind}<body name="{link_name}" gravcomp="1">')
        else:
            quat = "" if joint.quat == (0.0, 0.0, 0.0, 1.0) else f' quat="{_wxyz(joint.quat)}"'
            lines.append(f'{ind}<body name="{link_name}" pos="{_v(joint.pos)}"{quat} gravcomp="1">')
            if joint.kind == "revolute":
                i = ARM_JOINTS.index(joint.name)
                lines.append(f'{ind}  <joint name="{joint.name}" type="hinge" axis="{_v(joint.axis)}" '
                             f'range="{_f(joint.lower)} {_f(joint.upper)}" armature="{_f(cfg.servo.armature[i])}" '
                             f'damping="{_f(cfg.servo.damping[i])}"/>')
            elif joint.kind == "prismatic":
                lines.append(f'{ind}  <joint name="{joint.name}" type="slide" axis="{_v(joint.axis)}" '
                             f'range="{_f(joint.lower)} {_f(joint.upper)}" armature="0.01" damping="5"/>')
        if link.mass > 0:
            lines.append(f'{ind}  <inertial pos="{_v(link.com)}" mass="{_f(link.mass)}" diaginertia="{_v(link.inertia)}"/>')
        for geom in link.geoms:
            lines.append(_mjcf_geom(geom, ind + "  ", cls))
        for child in children.get(link_name, []):
            if child.kind == "fixed" and links[child.child].mass == 0 and not links[child.child].geoms:
                # massless frames become sites (fr3_link8, fr3_hand_tcp)
                lines.append(f'{ind}  <site name="{child.child}" pos="{_v(child.pos)}" size="0.005" group="4"/>')
                for grand in children.get(child.child, []):
                    # re-express the grandchild in this body: only fr3_hand hangs off fr3_link8
                    p, q = tf.compose_pose(child.pos, child.quat, grand.pos, grand.quat)
                    moved = Joint(grand.name, grand.kind, link_name, grand.child, _clean(np.round(p, 12)),
                                  _clean(np.round(q, 15)))
                    lines.extend(body(grand.child, moved, depth + 1))
            else:
                lines.extend(body(child.child, child, depth + 1))
        lines.append(f"{ind}</body>")
        return lines

    worldbody = "\n".join(body("fr3_link0", None, 2))
    default = "\n".join([
        f'    <default class="{cls}">',
        f'      <geom contype="2" conaffinity="1" group="{ROBOT_GEOM_GROUP}" condim="3" friction="0.8 0.01 0.001"/>',
        f'      <default class="{cls}_pad">',
        f'        <geom condim="6" friction="{_v(g.friction)}" solref="0.004 1" solimp="0.95 0.99 0.001"/>',
        "      </default>",
        "    </default>",
    ])
    act = []
    for i, name in enumerate(ARM_JOINTS):
        act.append(f'    <position name="{name}" joint="{name}" kp="{_f(cfg.servo.kp[i])}" kv="{_f(cfg.servo.kv[i])}" '
                   f'ctrlrange="{_f(cfg.joint_lower[i])} {_f(cfg.joint_upper[i])}" '
                   f'forcerange="{_f(-cfg.joint_effort[i])} {_f(cfg.joint_effort[i])}"/>')
    act.append(f'    <position name="fr3_gripper" joint="{FINGER_JOINTS[0]}" kp="{_f(g.kp)}" kv="{_f(0.05 * g.kp)}" '
               f'ctrlrange="0 {_f(g.finger_travel)}" forcerange="{_f(-2 * g.force_limit)} {_f(2 * g.force_limit)}"/>')
    equality = f'    <joint joint1="{FINGER_JOINTS[1]}" joint2="{FINGER_JOINTS[0]}" polycoef="0 1 0 0 0" solref="0.005 1"/>'
    return {"default": default, "worldbody": worldbody, "actuator": "\n".join(act), "equality": equality}


def to_mjcf(desc: Optional[Description] = None) -> str:
    parts = mjcf_parts(desc)
    return "\n".join([
        '<mujoco model="fr3">',
        "  <!-- GENERATED by twinrl_twin.sim.fr3_model from config/fr3.yaml; do not edit. -->",
        '  <compiler angle="radian" autolimits="true"/>',
        '  <option timestep="0.002" integrator="implicitfast" cone="elliptic" impratio="10"/>',
        "  <default>",
        parts["default"],
        "  </default>",
        "  <worldbody>",
        parts["worldbody"],
        "  </worldbody>",
        "  <actuator>",
        parts["actuator"],
        "  </actuator>",
        "  <equality>",
        parts["equality"],
        "  </equality>",
        "</mujoco>",
    ]) + "\n"


def assets_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "assets"


def generated_files(cfg: Optional[FR3Config] = None) -> dict[str, str]:
    desc = describe(cfg)
    return {"fr3.urdf": to_urdf(desc), "fr3.xml": to_mjcf(desc)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Generate the FR3 URDF and MJCF from config/fr3.yaml.")
    parser.add_argument("--write", action="store_true", help="write the files into the assets directory")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: package assets)")
    args = parser.parse_args(argv)
    files = generated_files()
    out = args.out or assets_dir()
    if not args.write:
        for name, text in files.items():
            same = (out / name).is_file() and (out / name).read_text() == text
            print(f"{out / name}: {'up to date' if same else 'differs (run with --write)'}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out / name).write_text(text)
        print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
