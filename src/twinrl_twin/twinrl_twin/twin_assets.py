"""Render assets of the kinematic twin, built from a scan and written as a twin directory.

``build_twin(scan, out, task, alignment)`` turns a scan (docs/scan_format.md) into everything the
twin needs, all in the robot base frame ``fr3_link0`` through the scan -> base ``Similarity``:

* the static scene: the background Gaussians (mask label 0) as coloured points with a radius,
  and under them a height-field mesh of the support surfaces (:func:`surface_mesh`);
* the fixture (``build.fixture_name``): its Gaussians as points in the fixture frame plus its
  scan mesh coloured from them (so a moved fixture moves with its appearance);
* the manipulated object (``build.object_name``): its scan mesh, vertex colours from the
  object's Gaussians;
* the robot: the URDF's visual geometry per link (boxes, cylinders, spheres, meshes).
* the far field: what the scan's cameras saw with no depth or farther than ``scene_radius``
  from the base (the room beyond the depth range, a simulated cell's sky and horizon), as a
  panorama of colour by viewing direction (:func:`far_field_panorama`), drawn behind everything;
  its median colour is the clear colour.

Gaussians come from the scan's ``splats.ply`` when present, else from the RGB-D frames
(:func:`twinrl_twin.splats.init_from_scan`). The directory is written atomically (temporary
sibling + rename). Layout::

    twin.json            version, task, scan, alignment, poses, counts
    scene_points.npz     positions (N,3) base frame, colors (N,3) uint8, radii (N,) m
    surface_mesh.npz     height-field mesh of the support surfaces (base frame), vertex colours
    fixture_points.npz   the same in the fixture frame
    object_mesh.npz      vertices (object frame, m), faces, colors (per vertex, uint8)
    fixture_mesh.npz
    robot_meshes.npz     <link>.vertices / <link>.faces / <link>.colors (link frame)
    far_field.npz        panorama (H, 2H, 3) uint8, rows elevation -90..90 deg, columns azimuth
                         -180..180 deg about the base z axis (optional)
    colour_map.npz       colour calibration of the cameras against the real ones (optional,
                         written by `twinrl twin calibrate`; twinrl_twin.colour_map)
    appearance.pt        appearance network of the cameras (optional, written by `twinrl twin
                         calibrate --network`; twinrl_twin.appearance; drawn instead of the colour map)
    preview.png          both cameras at the scanned configuration

:func:`load_twin` checks all of it and raises :class:`TwinAssetError` naming the bad file.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from twinrl_bringup import transforms as tf
from twinrl_bringup.config import load_config, resolve_config_path

TWIN_FORMAT_VERSION = 1
TWIN_FILE = "twin.json"
COLOUR_MAP_FILE = "colour_map.npz"
APPEARANCE_FILE = "appearance.pt"
FILES = ("scene_points.npz", "surface_mesh.npz", "fixture_points.npz", "object_mesh.npz", "fixture_mesh.npz",
         "robot_meshes.npz")


class TwinAssetError(ValueError):
    """A twin directory (or one of its files) is missing, unreadable or inconsistent; the
    message starts with the offending path."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass
class TwinBuildConfig:
    object_name: str = "object"
    fixture_name: str = "target"
    scene_radius: float = 2.5
    max_scene_points: int = 120000
    point_size_scale: float = 1.6
    robot_sections: int = 12
    # robot meshes: "urdf" (the visuals of the scan's URDF), "description" (the project's FR3
    # description: true capsules where its generated URDF has flat-ended cylinders) or "auto"
    # (the description when the URDF was generated from it, else the URDF)
    robot_model: str = "auto"
    colour_neighbours: int = 4
    # object and fixture mesh colours: "frames" (each vertex from the scan frames that see it,
    # depth- and mask-tested; vertices no frame sees from the Gaussians) or "gaussians" (the
    # colour_neighbours nearest labelled Gaussians). Both carry the scan's shading: the meshes are
    # drawn unlit
    mesh_colour: str = "frames"
    colour_texel: float = 0.001                # m of surface per texel of the meshes' texture atlases (frames)
    texture_max_size: int = 1024               # texels a side at most (larger meshes get coarser texels)
    colour_depth_tolerance: float = 0.005      # m: a frame sees a vertex when its depth is this close
    surface_cell: float = 0.02                 # m; 0 disables the support-surface mesh
    surface_x: tuple[float, float] = (-0.4, 1.1)
    surface_y: tuple[float, float] = (-0.9, 0.9)
    surface_z: tuple[float, float] = (-0.1, 0.3)
    surface_max_step: float = 0.03             # m; no triangle across a larger height jump
    far_field_width: int = 128                 # panorama columns (rows: half); 0: no far-field panorama
    # clear colour of the twin's renders (RGB 0..1) where nothing is drawn; None: the median
    # colour of the scan's far-field pixels
    background: Optional[tuple[float, float, float]] = None

    def validate(self) -> None:
        if self.scene_radius <= 0 or self.max_scene_points < 100 or self.point_size_scale <= 0:
            raise ValueError("scene_radius, point_size_scale must be positive and max_scene_points >= 100")
        if not 4 <= self.robot_sections <= 64 or self.colour_neighbours < 1:
            raise ValueError("robot_sections must be in 4..64 and colour_neighbours >= 1")
        if self.mesh_colour not in ("frames", "gaussians"):
            raise ValueError(f"mesh_colour must be frames or gaussians, got {self.mesh_colour!r}")
        if not (self.colour_texel > 0 and 16 <= self.texture_max_size <= 4096 and self.colour_depth_tolerance > 0):
            raise ValueError("colour_texel and colour_depth_tolerance must be positive and texture_max_size "
                             "in 16..4096")
        if self.robot_model not in ("auto", "urdf", "description"):
            raise ValueError(f"robot_model must be auto, urdf or description, got {self.robot_model!r}")
        if self.far_field_width != 0 and not 8 <= self.far_field_width <= 4096:
            raise ValueError(f"far_field_width must be 0 (off) or in 8..4096, got {self.far_field_width}")
        if self.background is not None and not is_rgb(self.background):
            raise ValueError(f"background must be three numbers in [0, 1] (RGB) or null, got {self.background!r}")


def is_rgb(value) -> bool:
    """Three finite numbers in [0, 1] (a colour of the twin's renders)."""
    try:
        c = [float(v) for v in value]
    except (TypeError, ValueError):
        return False
    return len(c) == 3 and all(math.isfinite(v) and 0 <= v <= 1 for v in c)


def load_build_config(path=None, overrides=()) -> TwinBuildConfig:
    return load_config(resolve_config_path(path if path is not None else "twin"), TwinBuildConfig,
                       overrides=overrides, section="build")


def flat_background_overrides() -> list[str]:
    """Build overrides of a twin drawn as those built before the far field: no panorama and the
    renderer's flat grey clear colour (the peer that the far field is measured against)."""
    from .render import DEFAULT_BACKGROUND

    return ["far_field_width=0", f"background=[{', '.join(map(str, DEFAULT_BACKGROUND))}]"]


@dataclass
class PointCloud:
    positions: np.ndarray          # (N, 3) float32
    colors: np.ndarray             # (N, 3) uint8
    radii: np.ndarray              # (N,) float32, metres


@dataclass
class ColouredMesh:
    vertices: np.ndarray           # (V, 3) float32, metres
    faces: np.ndarray              # (F, 3) int32
    colors: np.ndarray             # (V, 3) uint8
    lit: bool = True               # False: the colours carry the scan's shading, drawn as they are
    uvs: Optional[np.ndarray] = None       # (V, 2) float32 in [0, 1]: where each vertex lies in ``texture``
    texture: Optional[np.ndarray] = None   # (H, W, 3) uint8, drawn instead of the vertex colours


@dataclass
class TwinAssets:
    root: Path
    task: str
    alignment: dict                # Similarity.to_dict() + "source"
    object_pose: np.ndarray        # 7, base frame, at scan time
    fixture_pose: np.ndarray       # 7, base frame
    scene: PointCloud
    surface: ColouredMesh              # support surfaces (height field), base frame
    fixture_points: PointCloud
    object_mesh: ColouredMesh
    fixture_mesh: ColouredMesh
    robot: dict[str, ColouredMesh] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    background: Optional[tuple[float, float, float]] = None   # RGB 0..1; None: twins built before it was kept
    far_field: Optional[np.ndarray] = None     # (H, 2H, 3) uint8 panorama (module doc); None: none
    colour_map: Optional[Any] = None           # twinrl_twin.colour_map.ColourMap (colour_map.npz); None: none
    appearance: Optional[Any] = None           # twinrl_twin.appearance.AppearanceModel (appearance.pt); None: none


# -- building -----------------------------------------------------------------------------------
def _primitive(kind: str, size, sections: int):
    import trimesh

    if kind == "box":
        return trimesh.creation.box(extents=size)
    if kind == "cylinder":
        return trimesh.creation.cylinder(radius=size[0], height=size[1], sections=sections)
    if kind == "sphere":
        return trimesh.creation.uv_sphere(radius=size[0], count=[sections // 2 + 2, sections])
    raise ValueError(kind)


def _floats(text: Optional[str], n: int, where: str) -> list[float]:
    if text is None:
        return [0.0] * n
    vals = [float(x) for x in text.split()]
    if len(vals) != n or not all(math.isfinite(v) for v in vals):
        raise ValueError(f"{where}: expected {n} finite numbers, got {text!r}")
    return vals


def _coloured(parts) -> ColouredMesh:
    """[(trimesh, rgba in [0, 1])] -> one ColouredMesh."""
    verts, faces, cols, off = [], [], [], 0
    for m, rgba in parts:
        verts.append(np.asarray(m.vertices, np.float32))
        faces.append(np.asarray(m.faces, np.int32) + off)
        cols.append(np.tile((np.clip(np.asarray(rgba[:3], float), 0, 1) * 255).astype(np.uint8), (len(m.vertices), 1)))
        off += len(m.vertices)
    return ColouredMesh(np.concatenate(verts), np.concatenate(faces), np.concatenate(cols))


def robot_meshes_from_description(sections: int = 12) -> dict[str, ColouredMesh]:
    """Per link of the project's FR3 description, its geoms as one coloured mesh in the link
    frame (true capsules; :func:`robot_meshes_from_urdf` of the generated URDF would draw them
    as flat-ended cylinders reaching past the capsule's side, which the wrist camera sees)."""
    from .robot_geometry import description_meshes

    return {name: _coloured(parts) for name, parts in description_meshes(sections=sections).items()}


def robot_meshes_from_urdf(urdf_path: Path, sections: int = 12) -> dict[str, ColouredMesh]:
    """Per link: its visual geometry merged into one mesh in the link frame, coloured by the
    URDF material. Mesh files are resolved relative to the URDF."""
    from .scan import ScanError, load_mesh

    try:
        root = ET.parse(urdf_path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise ScanError(urdf_path, f"cannot parse URDF: {exc}") from exc
    materials = {}
    for mat in root.findall("material"):
        c = mat.find("color")
        if c is not None:
            materials[mat.get("name")] = _floats(c.get("rgba"), 4, f"material {mat.get('name')}")
    out: dict[str, ColouredMesh] = {}
    for link in root.findall("link"):
        parts = []
        for vis in link.findall("visual"):
            where = f"{urdf_path}: link {link.get('name')}"
            try:
                org = vis.find("origin")
                xyz = _floats(org.get("xyz") if org is not None else None, 3, where + " origin xyz")
                rpy = _floats(org.get("rpy") if org is not None else None, 3, where + " origin rpy")
                geo = vis.find("geometry")
                if geo is None or len(geo) == 0:
                    continue
                g = geo[0]
                if g.tag == "box":
                    m = _primitive("box", _floats(g.get("size"), 3, where + " box"), sections)
                elif g.tag == "cylinder":
                    m = _primitive("cylinder", [float(g.get("radius")), float(g.get("length"))], sections)
                elif g.tag == "sphere":
                    m = _primitive("sphere", [float(g.get("radius"))], sections)
                elif g.tag == "mesh":
                    fn = g.get("filename", "")
                    fn = fn.split("://", 1)[-1]
                    m = load_mesh(urdf_path.parent / fn)
                    if g.get("scale"):
                        m.apply_scale(_floats(g.get("scale"), 3, where + " mesh scale"))
                else:
                    continue
            except (TypeError, ValueError) as exc:
                raise ScanError(urdf_path, f"link {link.get('name')}: {exc}") from exc
            rgba = [0.7, 0.7, 0.7, 1.0]
            mat = vis.find("material")
            if mat is not None:
                c = mat.find("color")
                rgba = _floats(c.get("rgba"), 4, where + " color") if c is not None else materials.get(
                    mat.get("name"), rgba)
            m.apply_transform(tf.make_transform(xyz, tf.quat_from_euler("xyz", rpy)))
            parts.append((m, rgba))
        if parts:
            out[link.get("name")] = _coloured(parts)
    if not out:
        raise ScanError(urdf_path, "URDF has no visual geometry")
    return out


def surface_mesh(points: PointCloud, cfg: TwinBuildConfig) -> ColouredMesh:
    """A height-field mesh of the scanned support surfaces (table, floor patches) over the
    x/y box of ``cfg``: per ``surface_cell`` the mean height and colour of the background
    points in it, small holes (where objects stood while scanned) filled from neighbours,
    no triangles across height jumps. Drawn under the points, it closes the gaps between
    point sprites that near cameras (the wrist) would otherwise see through."""
    c = cfg.surface_cell
    p = points.positions.astype(float)
    (x0, x1), (y0, y1), (z0, z1) = cfg.surface_x, cfg.surface_y, cfg.surface_z
    nx, ny = int(math.ceil((x1 - x0) / c)), int(math.ceil((y1 - y0) / c))
    sel = (p[:, 0] >= x0) & (p[:, 0] < x1) & (p[:, 1] >= y0) & (p[:, 1] < y1) & (p[:, 2] >= z0) & (p[:, 2] < z1)
    empty = ColouredMesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32), np.zeros((0, 3), np.uint8))
    if c <= 0 or sel.sum() < 10:
        return empty
    ix = np.minimum(((p[sel, 0] - x0) / c).astype(int), nx - 1)
    iy = np.minimum(((p[sel, 1] - y0) / c).astype(int), ny - 1)
    flat = ix * ny + iy
    cnt = np.bincount(flat, minlength=nx * ny).astype(float)
    z = np.bincount(flat, weights=p[sel, 2], minlength=nx * ny)
    col = np.stack([np.bincount(flat, weights=points.colors[sel, k].astype(float), minlength=nx * ny)
                    for k in range(3)], axis=1)
    valid = cnt > 0
    Z = np.full(nx * ny, np.nan)
    Z[valid] = z[valid] / cnt[valid]
    C = np.zeros((nx * ny, 3))
    C[valid] = col[valid] / cnt[valid, None]
    Z, C = Z.reshape(nx, ny), C.reshape(nx, ny, 3)
    for _ in range(2):                                   # fill small holes from >= 3 neighbours
        pad_z = np.pad(Z, 1, constant_values=np.nan)
        pad_c = np.pad(C, ((1, 1), (1, 1), (0, 0)))
        stack_z = np.stack([pad_z[1 + di:1 + di + nx, 1 + dj:1 + dj + ny] for di in (-1, 0, 1) for dj in (-1, 0, 1)
                            if di or dj])
        stack_c = np.stack([pad_c[1 + di:1 + di + nx, 1 + dj:1 + dj + ny] for di in (-1, 0, 1) for dj in (-1, 0, 1)
                            if di or dj])
        ok = np.isfinite(stack_z)
        n = ok.sum(axis=0)
        fill = np.isnan(Z) & (n >= 3)
        with np.errstate(invalid="ignore", divide="ignore"):
            mz = np.where(ok, stack_z, 0).sum(axis=0) / n
            mc = (stack_c * ok[..., None]).sum(axis=0) / np.maximum(n, 1)[..., None]
        Z[fill] = mz[fill]
        C[fill] = mc[fill]
    index = -np.ones((nx, ny), int)
    good = np.isfinite(Z)
    index[good] = np.arange(good.sum())
    gi, gj = np.nonzero(good)
    verts = np.stack([x0 + (gi + 0.5) * c, y0 + (gj + 0.5) * c, Z[good]], axis=1)
    a, b, d, e = index[:-1, :-1], index[1:, :-1], index[:-1, 1:], index[1:, 1:]
    quad = (a >= 0) & (b >= 0) & (d >= 0) & (e >= 0)
    zz = np.stack([Z[:-1, :-1], Z[1:, :-1], Z[:-1, 1:], Z[1:, 1:]])
    zz = np.where(quad[None], zz, 0.0)                    # only complete quads matter
    quad &= (zz.max(axis=0) - zz.min(axis=0)) <= cfg.surface_max_step
    a, b, d, e = a[quad], b[quad], d[quad], e[quad]
    faces = np.concatenate([np.stack([a, b, e], 1), np.stack([a, e, d], 1)]).astype(np.int32)
    if len(faces) == 0:
        return empty
    return ColouredMesh(verts.astype(np.float32), faces, np.clip(C[good], 0, 255).round().astype(np.uint8))


def _scan_mesh(obj, T_base_object: np.ndarray, points: Optional[PointCloud], scan, alignment, label: Optional[int],
               cfg: TwinBuildConfig) -> tuple[ColouredMesh, dict]:
    """The scan object's mesh (object frame) coloured from the scan (``cfg.mesh_colour``), and a
    report of where its colours came from.

    ``frames``: the mesh is unwrapped into a texture atlas (xatlas, ``colour_texel`` per texel)
    and each texel is coloured from the frames that see its surface point
    (:func:`colour_from_frames`); texels no frame sees take the Gaussians' colour, and the atlas'
    gutters their nearest texel's. The vertices keep colours too (the same rule at the corners).
    ``gaussians``: vertex colours only, from the nearest labelled Gaussians."""
    v = np.asarray(obj.mesh.vertices, float)
    f = np.asarray(obj.mesh.faces, np.int64)
    vb = tf.transform_points(T_base_object, v)
    if cfg.mesh_colour == "gaussians":
        cols = _colour_from_points(vb, points, cfg.colour_neighbours)
        return ColouredMesh(v.astype(np.float32), f.astype(np.int32), cols, lit=False), \
            {"source": "gaussians", "vertices": len(v), "faces": len(f)}
    v, f, uvs, size = texture_atlas(v, f, cfg.colour_texel, cfg.texture_max_size)
    vb = tf.transform_points(T_base_object, v)
    R = T_base_object[:3, :3]
    rows, cols_, pts, normals = texel_surface_points(v, f, uvs, size)
    pts_b = tf.transform_points(T_base_object, pts)
    # the texels' points and the vertices in one pass over the frames (each read once)
    both, both_seen = colour_from_frames(np.vstack([pts_b, vb]), np.vstack([normals, _vertex_normals(v, f)]) @ R.T,
                                         scan.frames, alignment, label, cfg.colour_depth_tolerance)
    colours, seen = both[:len(pts)], both_seen[:len(pts)]
    vcols, vseen = both[len(pts):], both_seen[len(pts):]
    if seen.any() and not seen.all():
        # a point no frame saw takes the colour of the nearest seen one on a surface turned
        # the same way (the normal weighs in as if 90 degrees were 7 cm)
        from scipy.spatial import cKDTree

        key = np.hstack([pts, normals * 0.05])
        _, near = cKDTree(key[seen]).query(key[~seen])
        colours[~seen] = colours[seen][near]
    elif not seen.any():
        colours = _colour_from_points(pts_b, points, cfg.colour_neighbours).astype(np.float32)
    W, H = size
    tex = np.zeros((H, W, 3), np.float32)
    filled = np.zeros((H, W), bool)
    tex[rows, cols_] = colours
    filled[rows, cols_] = True
    if not filled.all():                   # gutters: the nearest texel's colour (bilinear lookups near chart edges)
        from scipy.ndimage import distance_transform_edt

        _, (ri, ci) = distance_transform_edt(~filled, return_indices=True)
        tex = tex[ri, ci]
    if not vseen.all():
        vcols[~vseen] = _colour_from_points(vb[~vseen], points, cfg.colour_neighbours)
    mesh = ColouredMesh(v.astype(np.float32), f.astype(np.int32), np.clip(vcols, 0, 255).round().astype(np.uint8),
                        lit=False, uvs=uvs.astype(np.float32),
                        texture=np.clip(tex, 0, 255).round().astype(np.uint8))
    return mesh, {"source": "frames", "texture": [W, H], "texels_on_surface": int(len(rows)),
                  "seen_by_frames": round(float(seen.mean()), 4) if len(seen) else 0.0, "vertices": len(v),
                  "faces": len(f)}


def _vertex_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    import trimesh

    return np.asarray(trimesh.Trimesh(v, f, process=False).vertex_normals, float)


def texture_atlas(vertices: np.ndarray, faces: np.ndarray, texel: float, max_size: int = 1024):
    """A texture atlas of a mesh (xatlas): ``(vertices, faces, uvs, (width, height))`` with the
    vertices split along the charts' seams and uvs in [0, 1] (u along the width, v down the
    rows). One texel covers ``texel`` metres where the atlas fits in ``max_size`` texels a side,
    else as little as fits."""
    import xatlas

    while True:
        atlas = xatlas.Atlas()
        atlas.add_mesh(np.asarray(vertices, np.float32), np.asarray(faces, np.uint32))
        po = xatlas.PackOptions()
        po.texels_per_unit = 1.0 / texel
        po.padding = 2
        po.bilinear = True
        atlas.generate(pack_options=po)
        if max(atlas.width, atlas.height) <= max_size:
            break
        texel *= max(atlas.width, atlas.height) / max_size * 1.05
    vmap, idx, uvs = atlas[0]
    return (np.asarray(vertices, float)[vmap], np.asarray(idx, np.int64), np.asarray(uvs, float),
            (int(atlas.width), int(atlas.height)))


def texel_surface_points(vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray, size: tuple[int, int]):
    """The texels whose centres lie in a face of the atlas: ``(rows, cols, points (N, 3),
    normals (N, 3))``, the surface point under each texel centre and its face's normal."""
    W, H = size
    tri_uv = uvs[faces] * np.array([W, H], float)           # (F, 3, 2) in texel units
    tri = np.asarray(vertices, float)[faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    rows, cols, pts, nrm = [], [], [], []
    taken = np.zeros((H, W), bool)
    for k in range(len(faces)):
        a, b, c = tri_uv[k]
        lo = np.floor(np.minimum(np.minimum(a, b), c)).astype(int)
        hi = np.ceil(np.maximum(np.maximum(a, b), c)).astype(int)
        cc, rr = np.meshgrid(np.arange(max(lo[0], 0), min(hi[0], W)), np.arange(max(lo[1], 0), min(hi[1], H)))
        p = np.stack([cc.ravel() + 0.5, rr.ravel() + 0.5], axis=1)
        den = (b[1] - c[1]) * (a[0] - c[0]) + (c[0] - b[0]) * (a[1] - c[1])
        if abs(den) < 1e-12:
            continue
        w0 = ((b[1] - c[1]) * (p[:, 0] - c[0]) + (c[0] - b[0]) * (p[:, 1] - c[1])) / den
        w1 = ((c[1] - a[1]) * (p[:, 0] - c[0]) + (a[0] - c[0]) * (p[:, 1] - c[1])) / den
        w2 = 1.0 - w0 - w1
        inside = (w0 >= -1e-9) & (w1 >= -1e-9) & (w2 >= -1e-9)
        r, col = rr.ravel()[inside], cc.ravel()[inside]
        new = ~taken[r, col]
        if not new.any():
            continue
        r, col = r[new], col[new]
        taken[r, col] = True
        w = np.stack([w0[inside][new], w1[inside][new], w2[inside][new]], axis=1)
        rows.append(r)
        cols.append(col)
        pts.append(w @ tri[k])
        nrm.append(np.repeat(n[k][None], len(r), axis=0))
    if not rows:
        return np.zeros(0, int), np.zeros(0, int), np.zeros((0, 3)), np.zeros((0, 3))
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(pts), np.concatenate(nrm)


def _colour_from_points(vertices_base: np.ndarray, points: Optional[PointCloud], k: int,
                        fallback=(170, 170, 170)) -> np.ndarray:
    if points is None or len(points.positions) == 0:
        return np.tile(np.asarray(fallback, np.uint8), (len(vertices_base), 1))
    from scipy.spatial import cKDTree

    k = min(k, len(points.positions))
    _, idx = cKDTree(points.positions).query(vertices_base, k=k)
    idx = np.asarray(idx).reshape(len(vertices_base), k)
    return points.colors[idx].astype(np.float32).mean(axis=1).round().astype(np.uint8)


def depth_normals(depth: np.ndarray, intr) -> np.ndarray:
    """(H, W, 3) unit normals (optical frame, towards the camera) of a depth map from central
    differences of its back-projected points; 0 where a neighbour has no depth."""
    H, W = depth.shape
    z = depth.astype(float)
    u, v = np.meshgrid(np.arange(W), np.arange(H))
    P = np.stack([(u - intr.cx) / intr.fx * z, (v - intr.cy) / intr.fy * z, z], axis=-1)
    out = np.zeros((H, W, 3))
    dx = P[1:-1, 2:] - P[1:-1, :-2]
    dy = P[2:, 1:-1] - P[:-2, 1:-1]
    n = np.cross(dx, dy)
    ok = (z[1:-1, 2:] > 0) & (z[1:-1, :-2] > 0) & (z[2:, 1:-1] > 0) & (z[:-2, 1:-1] > 0)
    norm = np.linalg.norm(n, axis=-1)
    ok &= norm > 0
    n = np.where(ok[..., None], n / np.maximum(norm, 1e-30)[..., None], 0.0)
    n *= np.where(np.einsum("hwc,hwc->hw", n, P[1:-1, 1:-1]) > 0, -1.0, 1.0)[..., None]   # face the camera
    out[1:-1, 1:-1] = n
    return out


def colour_from_frames(points_base: np.ndarray, normals_base: np.ndarray, frames, alignment, label: Optional[int],
                       depth_tolerance: float = 0.005, min_cos: float = 0.2,
                       normal_agreement: float = 0.7) -> tuple[np.ndarray, np.ndarray]:
    """Colours of surface points (base frame, with their unit normals) from the scan frames
    that see them.

    A frame sees a point when it projects into the image in front of the camera, the frame's
    depth there is within ``depth_tolerance`` (m) of the point's, the surface there (the depth
    map's normal) turns within ``acos(normal_agreement)`` of the point's normal (a pixel across
    an edge shows the neighbouring face), the mask there has the mesh's ``label`` (when the
    frame has a mask and the label is known), and the point's normal faces the camera by at
    least ``min_cos``. Its colour is the mean of those frames' pixels, each weighted by that
    cosine (grazing views count least). Frames without depth are skipped: no visibility test is
    possible. Returns ``(colours (N, 3) float32 0..255, seen (N,) bool)``."""
    v = np.asarray(points_base, float)
    n = np.asarray(normals_base, float)
    acc = np.zeros((len(v), 3))
    wsum = np.zeros(len(v))
    for fr in frames:
        depth = fr.depth()
        if depth is None:
            continue
        T = alignment.apply_pose(fr.T_scan_camera)          # camera in the base frame, metres
        R, t = T[:3, :3], T[:3, 3]
        pc = (v - t) @ R                                     # points in the optical frame
        uv, z = fr.intrinsics.project(pc)
        with np.errstate(invalid="ignore"):
            u = np.round(uv[:, 0])
            r = np.round(uv[:, 1])
            ok = (z > 1e-6) & (u >= 0) & (u < fr.intrinsics.width) & (r >= 0) & (r < fr.intrinsics.height)
        idx = np.flatnonzero(ok)
        if not len(idx):
            continue
        ui, ri = u[idx].astype(int), r[idx].astype(int)
        dm = depth.astype(float) * alignment.scale
        d = dm[ri, ui]
        keep = (d > 0) & (np.abs(d - z[idx]) <= depth_tolerance)
        mask = fr.mask() if label is not None else None
        if mask is not None:
            keep &= mask[ri, ui] == label
        n_cam = n[idx] @ R
        ray = pc[idx] / np.linalg.norm(pc[idx], axis=1, keepdims=True)
        cos = -np.einsum("ij,ij->i", n_cam, ray)
        keep &= cos >= min_cos
        if normal_agreement > -1:
            keep &= np.einsum("ij,ij->i", depth_normals(dm, fr.intrinsics)[ri, ui], n_cam) >= normal_agreement
        if not keep.any():
            continue
        idx, ui, ri, cos = idx[keep], ui[keep], ri[keep], cos[keep]
        rgb = fr.rgb()[ri, ui].astype(float)
        np.add.at(acc, idx, rgb * cos[:, None])
        np.add.at(wsum, idx, cos)
    seen = wsum > 0
    out = np.zeros((len(v), 3), np.float32)
    out[seen] = acc[seen] / wsum[seen, None]
    return out, seen


def far_field_panorama(scan, alignment, radius: float, width: int = 128, stride: int = 4):
    """Colour by viewing direction (base frame) of the scan's far-field pixels: no valid depth,
    or a back-projected point farther than ``radius`` from the base (what the twin's Gaussians
    leave out). Returns ``(panorama, median)``: a (width // 2, width, 3) uint8 equirectangular
    image (rows elevation -90..90 deg, columns azimuth -180..180 deg; empty cells take the
    nearest seen cell) and the median far-field colour (3,) in 0..1; ``(None, None)`` when no
    frame has depth or no pixel is far. Directions are taken from the scan cameras: a
    far-field assumption (parallax between those cameras and the twin's is ignored)."""
    from scipy import ndimage

    if not scan.has_depth:
        return None, None
    R = np.asarray(alignment.rotation, float)
    dirs, cols = [], []
    for f in scan.frames:
        rgb, depth = f.rgb(), f.depth()
        v, u = np.mgrid[0:depth.shape[0]:stride, 0:depth.shape[1]:stride]
        d = depth[v, u]
        intr = f.intrinsics
        # optical-frame rays at z = 1, pixel convention of scan.backproject (which the Gaussians came from)
        ray = np.stack([(u - intr.cx) / intr.fx, (v - intr.cy) / intr.fy, np.ones(u.shape)], -1)
        far = ~(d > 0)
        near = ~far
        if near.any():
            p_cam = ray[near] * d[near][:, None]
            p_base = alignment.apply_points(tf.transform_points(f.T_scan_camera, p_cam))
            far[near] = np.linalg.norm(p_base, axis=1) > radius
        if far.any():
            dirs.append(ray[far] @ (R @ f.T_scan_camera[:3, :3]).T)
            cols.append(rgb[v[far], u[far]])
    if not dirs:
        return None, None
    dirs = np.concatenate(dirs)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    cols = np.concatenate(cols).astype(np.float64)
    median = np.median(cols, axis=0) / 255.0
    if width <= 0:
        return None, median
    h = width // 2
    col = np.clip(((np.arctan2(dirs[:, 1], dirs[:, 0]) / (2 * math.pi) + 0.5) * width).astype(int), 0, width - 1)
    row = np.clip(((np.arcsin(np.clip(dirs[:, 2], -1, 1)) / math.pi + 0.5) * h).astype(int), 0, h - 1)
    cell = row * width + col
    count = np.bincount(cell, minlength=h * width)
    pano = np.stack([np.bincount(cell, cols[:, c], minlength=h * width) for c in range(3)], -1)
    seen = (count > 0).reshape(h, width)
    pano = (pano / np.maximum(count, 1)[:, None]).reshape(h, width, 3)
    # empty cells: the nearest seen cell (azimuth wraps: fill a three-fold tiled copy)
    tiled = np.concatenate([seen] * 3, axis=1)
    _, (ri, ci) = ndimage.distance_transform_edt(~tiled, return_indices=True)
    ri, ci = ri[:, width:2 * width], ci[:, width:2 * width] % width
    return np.round(pano[ri, ci]).astype(np.uint8), median


def _gaussians(scan):
    from .splats import init_from_scan, read_ply

    if scan.splats_path is not None:
        scene = read_ply(scan.splats_path)
        source = str(scan.splats_path)
    else:
        scene, _ = init_from_scan(scan, progress=False)
        source = "init_from_scan (RGB-D frames)"
    scene.check_finite(source)
    return scene, source


def _points(scene, mask: np.ndarray, sim, size_scale: float) -> PointCloud:
    pos = sim.apply_points(scene.means[mask].astype(float)).astype(np.float32)
    cols = (np.clip(scene.colors()[mask], 0, 1) * 255).round().astype(np.uint8)
    radii = (np.exp(scene.log_scales[mask].astype(float)).mean(axis=1) * sim.scale * size_scale).astype(np.float32)
    return PointCloud(pos, cols, radii)


def build_twin(scan_path, out, task: str, alignment=None, alignment_source: str = "alignment",
               cfg: Optional[TwinBuildConfig] = None, overwrite: bool = False, preview: bool = True) -> dict:
    """Build the twin directory ``out`` from the scan at ``scan_path`` for ``task``.

    ``alignment``: the scan -> base :class:`twinrl_twin.scan.Similarity` (from the alignment
    step; for simulated scans the ground truth may stand in, ``alignment_source="groundtruth"``).
    Returns a report dict."""
    from .scan import LABEL_BACKGROUND, LABEL_ROBOT, load_scan
    from .sim.config import TASKS

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")
    if alignment is None:
        raise ValueError("build_twin needs the scan -> base alignment (a Similarity)")
    cfg = cfg or load_build_config()
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass overwrite=True / --overwrite to replace it)")
    if out.exists() and not (out / TWIN_FILE).is_file() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not a twin directory; refusing to overwrite it")
    scan = load_scan(scan_path)
    from .scan import ScanError

    for name in (cfg.object_name, cfg.fixture_name):
        if name not in scan.objects:
            raise ScanError(scan.root / "objects", f"no mesh for object {name!r} (have {sorted(scan.objects)})")
        if scan.objects[name].T_scan_object is None:
            raise ScanError(scan.root / "objects" / "poses.json", f"no pose for object {name!r}")
    if scan.robot is None:
        raise ScanError(scan.root / "robot.json", "missing: the twin needs the robot's URDF")
    urdf = scan.robot.urdf_path
    if not urdf.is_absolute() and not urdf.is_file():
        urdf = scan.root / urdf

    gauss, gauss_source = _gaussians(scan)
    labels = gauss.labels if gauss.labels is not None else np.zeros(len(gauss), np.uint8)
    name_to_label = {v: k for k, v in scan.label_names().items()}
    sim = alignment
    base_pos = sim.apply_points(gauss.means.astype(float))
    near = np.linalg.norm(base_pos, axis=1) < cfg.scene_radius
    bg_mask = (labels == LABEL_BACKGROUND) & near
    if bg_mask.sum() > cfg.max_scene_points:
        idx = np.flatnonzero(bg_mask)
        keep = np.random.default_rng(0).choice(idx, cfg.max_scene_points, replace=False)
        bg_mask = np.zeros_like(bg_mask)
        bg_mask[keep] = True
    scene_pts = _points(gauss, bg_mask, sim, cfg.point_size_scale)
    surface = surface_mesh(scene_pts, cfg)

    poses = {}
    pts_by_obj = {}
    meshes = {}
    mesh_colours = {}
    for name in (cfg.object_name, cfg.fixture_name):
        obj = scan.objects[name]
        T = sim.apply_pose(obj.T_scan_object)
        poses[name] = T
        lab = name_to_label.get(name)
        pts = _points(gauss, labels == lab, sim, cfg.point_size_scale) if lab is not None else None
        pts_by_obj[name] = pts
        meshes[name], mesh_colours[name] = _scan_mesh(obj, T, pts, scan, sim, lab, cfg)
    fx = pts_by_obj[cfg.fixture_name]
    T_fix_inv = tf.invert(poses[cfg.fixture_name])
    fixture_pts = PointCloud(tf.transform_points(T_fix_inv, fx.positions).astype(np.float32), fx.colors, fx.radii) \
        if fx is not None else PointCloud(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8), np.zeros(0, np.float32))
    from .sim import fr3_model

    robot = (robot_meshes_from_description(cfg.robot_sections) if fr3_model.use_description(cfg.robot_model, urdf)
             else robot_meshes_from_urdf(urdf, cfg.robot_sections))

    far_field, far_median = far_field_panorama(scan, sim, cfg.scene_radius, cfg.far_field_width)
    background = cfg.background if cfg.background is not None else far_median
    meta = {
        "version": TWIN_FORMAT_VERSION,
        "task": task,
        "scan": str(Path(scan_path).resolve()),
        "gaussians": gauss_source,
        "alignment": dict(sim.to_dict(), source=alignment_source),
        "object_name": cfg.object_name,
        "fixture_name": cfg.fixture_name,
        "object_pose": tf.matrix_to_pose7(poses[cfg.object_name]).tolist(),
        "fixture_pose": tf.matrix_to_pose7(poses[cfg.fixture_name]).tolist(),
        "background": None if background is None else [round(float(c), 4) for c in background],
        "far_field": None if far_field is None else "far_field.npz",
        "mesh_colours": {"object": mesh_colours[cfg.object_name], "fixture": mesh_colours[cfg.fixture_name]},
        "counts": {"scene_points": int(len(scene_pts.positions)), "fixture_points": int(len(fixture_pts.positions)),
                   "robot_points_dropped": int((labels == LABEL_ROBOT).sum()),
                   "object_faces": int(len(meshes[cfg.object_name].faces)),
                   "fixture_faces": int(len(meshes[cfg.fixture_name].faces)),
                   "surface_faces": int(len(surface.faces)), "robot_links": len(robot), "robot_faces": int(sum(len(m.faces) for m in robot.values()))},
        "files": list(FILES),
    }
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        np.savez(tmp / "scene_points.npz", positions=scene_pts.positions, colors=scene_pts.colors, radii=scene_pts.radii)
        np.savez(tmp / "fixture_points.npz", positions=fixture_pts.positions, colors=fixture_pts.colors,
                 radii=fixture_pts.radii)
        for fname, m in (("object_mesh.npz", meshes[cfg.object_name]), ("fixture_mesh.npz", meshes[cfg.fixture_name]),
                         ("surface_mesh.npz", surface)):
            extra = {} if m.texture is None else {"uvs": m.uvs, "texture": m.texture}
            np.savez(tmp / fname, vertices=m.vertices, faces=m.faces, colors=m.colors, **extra)
        arrays = {}
        for link, m in robot.items():
            arrays[f"{link}.vertices"] = m.vertices
            arrays[f"{link}.faces"] = m.faces
            arrays[f"{link}.colors"] = m.colors
        np.savez(tmp / "robot_meshes.npz", **arrays)
        if far_field is not None:
            np.savez(tmp / "far_field.npz", panorama=far_field)
        (tmp / TWIN_FILE).write_text(json.dumps(meta, indent=1))
        if preview:
            meta["preview"] = str(out / "preview.png")
            _write_preview(tmp, out / "preview.png")
            (tmp / TWIN_FILE).write_text(json.dumps(meta, indent=1))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dict(meta, twin=str(out))


def _write_preview(tmp_dir: Path, final_path: Path) -> None:
    """Both cameras of the twin at the scanned object configuration, side by side."""
    from PIL import Image

    from .twin_env import make_twin_env

    env = make_twin_env(tmp_dir, render=True)
    try:
        meta = json.loads((tmp_dir / TWIN_FILE).read_text())
        obs, _ = env.reset(seed=0, options={"configuration": {"object_pose": meta["object_pose"]}})
        tp, wr = obs["third_person"], obs["wrist"]
        canvas = np.zeros((tp.shape[0], tp.shape[1] + wr.shape[1], 3), np.uint8)
        canvas[:, :tp.shape[1]] = tp
        canvas[:wr.shape[0], tp.shape[1]:] = wr
        Image.fromarray(canvas).save(tmp_dir / "preview.png")
    finally:
        env.close()


# -- loading ------------------------------------------------------------------------------------
def _load_npz(path: Path, keys: tuple[str, ...]) -> dict:
    if not path.is_file():
        raise TwinAssetError(path, "missing (rebuild the twin with `twinrl twin build`)")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as exc:  # zipfile / numpy raise many types for corrupt files
        raise TwinAssetError(path, f"unreadable: {type(exc).__name__}: {exc}") from exc
    missing = [k for k in keys if k not in data]
    if missing:
        raise TwinAssetError(path, f"missing arrays {missing}")
    for k, v in data.items():
        if v.dtype.kind == "f" and not np.all(np.isfinite(v)):
            raise TwinAssetError(path, f"array {k!r} has non-finite values")
    return data


def _cloud(path: Path) -> PointCloud:
    d = _load_npz(path, ("positions", "colors", "radii"))
    n = len(d["positions"])
    if d["positions"].shape != (n, 3) or d["colors"].shape != (n, 3) or d["radii"].shape != (n,):
        raise TwinAssetError(path, f"inconsistent shapes {d['positions'].shape}, {d['colors'].shape}, {d['radii'].shape}")
    return PointCloud(d["positions"].astype(np.float32), d["colors"].astype(np.uint8), d["radii"].astype(np.float32))


def _mesh(path: Path, v, f, c, what: str, allow_empty: bool = False, lit: bool = True) -> ColouredMesh:
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3 or c.shape != v.shape:
        raise TwinAssetError(path, f"{what}: bad shapes vertices {v.shape}, faces {f.shape}, colors {c.shape}")
    if allow_empty and len(f) == 0:
        return ColouredMesh(v.astype(np.float32), f.astype(np.int32), c.astype(np.uint8), lit)
    if len(f) == 0 or f.min() < 0 or f.max() >= len(v):
        raise TwinAssetError(path, f"{what}: face indices outside 0..{len(v) - 1} (or no faces)")
    return ColouredMesh(v.astype(np.float32), f.astype(np.int32), c.astype(np.uint8), lit)


def _textured(path: Path, data: dict, what: str, lit: bool) -> ColouredMesh:
    """A scan mesh of a twin file, with its texture atlas when the file has one."""
    m = _mesh(path, data["vertices"], data["faces"], data["colors"], what, lit=lit)
    if ("uvs" in data) != ("texture" in data):
        raise TwinAssetError(path, f"{what}: uvs and texture come together (has only {'uvs' if 'uvs' in data else 'texture'})")
    if "texture" in data:
        uvs, tex = data["uvs"], data["texture"]
        if uvs.shape != (len(m.vertices), 2) or not np.all(np.isfinite(uvs)) or uvs.min() < 0 or uvs.max() > 1:
            raise TwinAssetError(path, f"{what}: uvs must be ({len(m.vertices)}, 2) numbers in [0, 1], got "
                                       f"{uvs.shape}")
        if tex.dtype != np.uint8 or tex.ndim != 3 or tex.shape[2] != 3 or not (1 <= min(tex.shape[:2])
                                                                              and max(tex.shape[:2]) <= 4096):
            raise TwinAssetError(path, f"{what}: texture must be (H, W, 3) uint8 with sides 1..4096, got "
                                       f"{tex.shape} {tex.dtype}")
        m.uvs, m.texture = uvs.astype(np.float32), np.ascontiguousarray(tex)
    return m


def _load_optional(path: Path, load, error):
    """``load(path)`` where the file exists, else None; its ``error`` becomes TwinAssetError."""
    if not path.is_file():
        return None
    try:
        return load(path)
    except error as exc:
        raise TwinAssetError(path, str(exc).removeprefix(f"{path}: ")) from exc


def load_twin(path) -> TwinAssets:
    root = Path(path)
    if not root.is_dir():
        raise TwinAssetError(root, "not a directory (build one with `twinrl twin build`)")
    meta_path = root / TWIN_FILE
    if not meta_path.is_file():
        raise TwinAssetError(meta_path, "missing (not a twin directory)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TwinAssetError(meta_path, f"unreadable JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise TwinAssetError(meta_path, "expected a JSON object")
    for key in ("version", "task", "alignment", "object_pose", "fixture_pose"):
        if key not in meta:
            raise TwinAssetError(meta_path, f"missing key {key!r}")
    if meta["version"] != TWIN_FORMAT_VERSION:
        raise TwinAssetError(meta_path, f"version {meta['version']!r} not supported (expected {TWIN_FORMAT_VERSION})")
    poses = {}
    for key in ("object_pose", "fixture_pose"):
        try:
            v = np.asarray(meta[key], dtype=float).reshape(-1)
        except (TypeError, ValueError):
            v = np.zeros(0)
        if v.shape != (7,) or not np.all(np.isfinite(v)):
            raise TwinAssetError(meta_path, f"{key} must be 7 finite numbers [x, y, z, qx, qy, qz, qw]")
        poses[key] = v
    if meta.get("arm_tracking") is not None:
        from .twin_env import arm_gains

        fit = meta["arm_tracking"]
        try:
            if not isinstance(fit, dict):
                raise ValueError(f"expected an object with gain and damping, got {fit!r}")
            gain, damping = arm_gains(fit.get("gain"), "gain"), arm_gains(fit.get("damping"), "damping")
            if not (np.all(gain > 0) and np.all(gain <= 1) and np.all(damping >= 0) and np.all(damping < 1)):
                raise ValueError("gain must be in (0, 1] and damping in [0, 1) per joint")
        except ValueError as exc:
            raise TwinAssetError(meta_path, f"arm_tracking: {exc}") from None
    background = meta.get("background")
    if background is not None:
        if not is_rgb(background):
            raise TwinAssetError(meta_path, f"background must be three numbers in [0, 1] (RGB) or null, "
                                            f"got {background!r}")
        background = tuple(float(c) for c in background)
    far_field = None
    if meta.get("far_field"):
        path = root / "far_field.npz"
        far_field = _load_npz(path, ("panorama",))["panorama"]
        if far_field.dtype != np.uint8 or far_field.ndim != 3 or far_field.shape[2] != 3 \
                or far_field.shape[1] != 2 * far_field.shape[0] or far_field.shape[0] < 4:
            raise TwinAssetError(path, f"panorama must be (H, 2H, 3) uint8 with H >= 4, got "
                                       f"{far_field.shape} {far_field.dtype}")
    from .appearance import AppearanceError, load_appearance
    from .colour_map import ColourMapError, load_colour_map

    colour_map = _load_optional(root / COLOUR_MAP_FILE, load_colour_map, ColourMapError)
    appearance = _load_optional(root / APPEARANCE_FILE, load_appearance, AppearanceError)
    # twins built before mesh_colours was recorded drew their scan meshes lit: they keep that look
    scan_lit = "mesh_colours" not in meta
    obj = _load_npz(root / "object_mesh.npz", ("vertices", "faces", "colors"))
    fix = _load_npz(root / "fixture_mesh.npz", ("vertices", "faces", "colors"))
    srf = _load_npz(root / "surface_mesh.npz", ("vertices", "faces", "colors"))
    rob = _load_npz(root / "robot_meshes.npz", ())
    links = sorted({k.rsplit(".", 1)[0] for k in rob})
    robot = {}
    for link in links:
        try:
            robot[link] = _mesh(root / "robot_meshes.npz", rob[f"{link}.vertices"], rob[f"{link}.faces"],
                                rob[f"{link}.colors"], f"link {link}")
        except KeyError as exc:
            raise TwinAssetError(root / "robot_meshes.npz", f"link {link}: missing array {exc}") from exc
    if not robot:
        raise TwinAssetError(root / "robot_meshes.npz", "no robot links")
    return TwinAssets(
        root=root, task=str(meta["task"]), alignment=meta["alignment"],
        object_pose=poses["object_pose"], fixture_pose=poses["fixture_pose"],
        scene=_cloud(root / "scene_points.npz"),
        surface=_mesh(root / "surface_mesh.npz", srf["vertices"], srf["faces"], srf["colors"], "surface",
                      allow_empty=True),
        fixture_points=_cloud(root / "fixture_points.npz"),
        object_mesh=_textured(root / "object_mesh.npz", obj, "object", scan_lit),
        fixture_mesh=_textured(root / "fixture_mesh.npz", fix, "fixture", scan_lit),
        robot=robot, meta=meta, background=background, far_field=far_field, colour_map=colour_map,
        appearance=appearance)
