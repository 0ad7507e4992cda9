"""CPU rasteriser of the twin: OpenGL 3.3 through moderngl on a headless EGL context
(Mesa llvmpipe on machines without a GPU; a GPU's EGL driver where there is one).

One draw call per asset group and camera: the static scene and the fixture as point sprites
sized from their Gaussians (radius x focal / depth pixels), the scanned support surfaces as an
unlit vertex-coloured height-field mesh under them, the object, fixture and robot as
flat-shaded vertex-coloured triangles (the robot in one call, one model matrix per link).
Images are (H, W, 3) uint8 with row 0 at the top, like the sim's cameras.

Why this and not the sim's MuJoCo renderer: MuJoCo has no per-vertex colours or point
sprites, so the scan's appearance would be lost; measured throughput is in docs/twin.md.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .twin_assets import ColouredMesh, PointCloud, TwinAssets, is_rgb

MAX_LINKS = 16

_MESH_VS = """
#version 330
uniform mat4 vp;
uniform mat4 models[16];
uniform vec3 light;
uniform float ambient;
uniform float diffuse;
uniform float lit;
in vec3 in_pos;
in vec3 in_normal;
in vec3 in_color;
in float in_link;
out vec3 v_color;
void main() {
    mat4 m = models[int(in_link + 0.5)];
    gl_Position = vp * m * vec4(in_pos, 1.0);
    vec3 n = normalize(mat3(m) * in_normal);
    float l = lit > 0.5 ? ambient + diffuse * abs(dot(n, light)) : 1.0;
    v_color = min(in_color * l, vec3(1.0));
}
"""

_POINT_VS = """
#version 330
uniform mat4 proj;
uniform mat4 view;
uniform mat4 model;
uniform float focal;
uniform float max_px;
in vec3 in_pos;
in vec3 in_color;
in float in_radius;
out vec3 v_color;
void main() {
    vec4 pc = view * (model * vec4(in_pos, 1.0));
    float depth = max(-pc.z, 1e-3);
    // a sprite is flat at its centre's depth: push it back by its radius so that surfaces
    // (object, robot) lying on the scanned surface are not hidden by it
    gl_Position = proj * vec4(pc.xy, pc.z - in_radius, 1.0);
    gl_PointSize = clamp(2.0 * in_radius * focal / depth, 1.0, max_px);
    v_color = in_color;
}
"""

# the far-field panorama behind everything: a full-screen triangle whose pixels look up the
# panorama (equirectangular, base frame) along their viewing ray
_FAR_VS = """
#version 330
out vec2 ndc;
void main() {
    vec2 p = vec2(float((gl_VertexID & 1) << 2) - 1.0, float((gl_VertexID & 2) << 1) - 1.0);
    ndc = p;
    gl_Position = vec4(p, 0.0, 1.0);
}
"""

_FAR_FS = """
#version 330
uniform mat4 inv_vp;
uniform sampler2D panorama;
in vec2 ndc;
out vec4 f_color;
void main() {
    vec4 a = inv_vp * vec4(ndc, -1.0, 1.0);
    vec4 b = inv_vp * vec4(ndc, 1.0, 1.0);
    vec3 d = normalize(b.xyz / b.w - a.xyz / a.w);
    float u = atan(d.y, d.x) / 6.283185307 + 0.5;
    float v = asin(clamp(d.z, -1.0, 1.0)) / 3.141592654 + 0.5;
    f_color = vec4(texture(panorama, vec2(u, v)).rgb, 1.0);
}
"""

_FS = """
#version 330
in vec3 v_color;
out vec4 f_color;
void main() { f_color = vec4(v_color, 1.0); }
"""


DEFAULT_BACKGROUND = (0.42, 0.43, 0.46)


@dataclass
class RenderConfig:
    # clear colour (RGB 0..1); None: the twin's own (estimated from its scan at build time), or
    # DEFAULT_BACKGROUND for twins built without one
    background: Optional[tuple[float, float, float]] = None
    ambient: float = 0.45
    diffuse: float = 0.6
    light_direction: tuple[float, float, float] = (0.3, 0.2, 1.0)
    max_point_pixels: float = 8.0
    lp_threads: int = 1
    far_field: bool = True          # draw the twin's far-field panorama behind everything (when it has one)
    colour_map: bool = True         # apply the twin's colour calibration (twinrl_twin.colour_map) when it has one

    def validate(self) -> None:
        if not 0 <= self.ambient <= 2 or not 0 <= self.diffuse <= 2:
            raise ValueError("ambient and diffuse must be in [0, 2]")
        if np.linalg.norm(self.light_direction) < 1e-6:
            raise ValueError("light_direction must not be zero")
        if self.background is not None and not is_rgb(self.background):
            raise ValueError(f"background must be three numbers in [0, 1] (RGB) or null, got {self.background!r}")
        if self.max_point_pixels < 1 or self.lp_threads < 0:
            raise ValueError("max_point_pixels must be >= 1 and lp_threads >= 0 (0: llvmpipe's default)")


def load_render_config(path=None, overrides=()) -> RenderConfig:
    from twinrl_bringup.config import load_config, resolve_config_path

    return load_config(resolve_config_path(path if path is not None else "twin"), RenderConfig,
                       overrides=overrides, section="render")


def perspective(fovy_deg: float, aspect: float, near: float = 0.01, far: float = 10.0) -> np.ndarray:
    f = 1.0 / math.tan(math.radians(fovy_deg) / 2)
    P = np.zeros((4, 4))
    P[0, 0] = f / aspect
    P[1, 1] = f
    P[2, 2] = (far + near) / (near - far)
    P[2, 3] = 2 * far * near / (near - far)
    P[3, 2] = -1.0
    return P


def _flat(mesh: ColouredMesh, link: int) -> np.ndarray:
    """Interleaved (pos, normal, colour, link) per triangle corner, flat normals."""
    tri = mesh.vertices[mesh.faces]                       # (F, 3, 3)
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    col = mesh.colors[mesh.faces].astype(np.float32) / 255.0
    F = len(mesh.faces)
    out = np.empty((F, 3, 10), np.float32)
    out[..., 0:3] = tri
    out[..., 3:6] = n[:, None, :]
    out[..., 6:9] = col
    out[..., 9] = float(link)
    return out.reshape(-1, 10)


def _points(pc: PointCloud) -> np.ndarray:
    out = np.empty((len(pc.positions), 7), np.float32)
    out[:, 0:3] = pc.positions
    out[:, 3:6] = pc.colors.astype(np.float32) / 255.0
    out[:, 6] = pc.radii
    return out


def create_context():
    import moderngl

    try:
        return moderngl.create_standalone_context(backend="egl")
    except Exception as exc:
        raise RuntimeError(f"cannot create a headless OpenGL 3.3 context through EGL: {exc}. "
                           "Install libegl1 libegl-mesa0 libgl1-mesa-dri (Mesa llvmpipe renders on CPU).") from exc


class TwinRenderer:
    """Renders the twin's assets from posed pinhole cameras (OpenGL camera axes: x right,
    y up, looking along -z, the same convention as MuJoCo cameras)."""

    def __init__(self, assets: TwinAssets, link_names: list[str], sizes: dict[str, tuple[int, int]],
                 cfg: Optional[RenderConfig] = None):
        cfg = cfg or load_render_config()
        self.cfg = cfg
        self.colour_map = assets.colour_map if cfg.colour_map else None
        self.background = tuple(cfg.background if cfg.background is not None
                                else assets.background if assets.background is not None else DEFAULT_BACKGROUND)
        if cfg.lp_threads:
            os.environ["LP_NUM_THREADS"] = str(cfg.lp_threads)   # read when the context is created
        import moderngl

        self.mgl = moderngl
        self.ctx = create_context()
        ctx = self.ctx
        ctx.enable(moderngl.DEPTH_TEST | moderngl.PROGRAM_POINT_SIZE)
        self.mesh_prog = ctx.program(vertex_shader=_MESH_VS, fragment_shader=_FS)
        self.point_prog = ctx.program(vertex_shader=_POINT_VS, fragment_shader=_FS)
        light = np.asarray(cfg.light_direction, float)
        self.mesh_prog["light"].value = tuple(light / np.linalg.norm(light))
        self.mesh_prog["ambient"].value = cfg.ambient
        self.mesh_prog["diffuse"].value = cfg.diffuse
        self.mesh_prog["lit"].value = 1.0
        self.point_prog["max_px"].value = cfg.max_point_pixels
        self.far = None
        if cfg.far_field and assets.far_field is not None:
            pano = np.ascontiguousarray(assets.far_field)
            tex = ctx.texture((pano.shape[1], pano.shape[0]), 3, pano.tobytes())
            tex.repeat_x, tex.repeat_y = True, False
            tex.filter = (moderngl.LINEAR, moderngl.LINEAR)
            prog = ctx.program(vertex_shader=_FAR_VS, fragment_shader=_FAR_FS)
            prog["panorama"].value = 0
            self.far = (tex, prog, ctx.vertex_array(prog, []))
        missing = [n for n in link_names if n not in assets.robot]
        self.links = [n for n in link_names if n in assets.robot]
        if len(self.links) + 2 > MAX_LINKS:
            raise ValueError(f"at most {MAX_LINKS - 2} robot links can be drawn, got {len(self.links)}")
        self.missing_links = missing
        robot = np.concatenate([_flat(assets.robot[n], i + 2) for i, n in enumerate(self.links)])
        meshes = np.concatenate([_flat(assets.object_mesh, 0), _flat(assets.fixture_mesh, 1), robot])
        self.n_object = len(assets.object_mesh.faces) * 3
        self.n_fixture = len(assets.fixture_mesh.faces) * 3
        self.mesh_vbo = ctx.buffer(meshes.tobytes())
        self.mesh_vao = ctx.vertex_array(self.mesh_prog, [(self.mesh_vbo, "3f 3f 3f 1f",
                                                           "in_pos", "in_normal", "in_color", "in_link")])
        self.n_mesh = len(meshes)
        self.surface = None
        if len(assets.surface.faces):
            srf = _flat(assets.surface, 0)
            vbo = ctx.buffer(srf.tobytes())
            vao = ctx.vertex_array(self.mesh_prog, [(vbo, "3f 3f 3f 1f", "in_pos", "in_normal", "in_color", "in_link")])
            self.surface = (vbo, vao, len(srf))
        self.clouds = []
        self._fixture_data = _points(assets.fixture_points)
        for pc in (assets.scene, assets.fixture_points):
            if len(pc.positions):
                vbo = ctx.buffer(_points(pc).tobytes(), dynamic=pc is assets.fixture_points)
                vao = ctx.vertex_array(self.point_prog, [(vbo, "3f 3f 1f", "in_pos", "in_color", "in_radius")])
                self.clouds.append((vbo, vao, len(pc.positions)))
            else:
                self.clouds.append(None)
        self.fbos = {}
        for name, (w, h) in sizes.items():
            if (w, h) not in self.fbos:
                self.fbos[(w, h)] = ctx.framebuffer(color_attachments=[ctx.renderbuffer((w, h), 3)],
                                                    depth_attachment=ctx.depth_renderbuffer((w, h)))
        self._models = np.tile(np.eye(4, dtype=np.float32), (MAX_LINKS, 1, 1))
        self._static: dict = {}

    def set_fixture_colors(self, colors: np.ndarray) -> None:
        """Replace the colours of the fixture's points (N, 3) uint8 (e.g. erased ink)."""
        cloud = self.clouds[1]
        if cloud is None:
            return
        c = np.asarray(colors)
        if c.shape != (cloud[2], 3):
            raise ValueError(f"fixture colours must be ({cloud[2]}, 3), got {c.shape}")
        data = self._fixture_data
        data[:, 3:6] = c.astype(np.float32) / 255.0
        with self.ctx:
            cloud[0].write(data.tobytes())
        self._static.clear()

    def render(self, camera_pose: np.ndarray, fovy: float, size: tuple[int, int], link_poses: dict,
               object_pose: np.ndarray, fixture_pose: np.ndarray, static_camera: bool = False,
               camera: Optional[str] = None) -> np.ndarray:
        """One image. ``camera_pose``: 4x4 camera-to-base (OpenGL axes); ``link_poses``:
        link name -> 4x4; object/fixture poses 4x4 in the base frame. With ``static_camera``
        the point layer (scene + fixture) is rendered once per camera and fixture pose and
        reused (colour and depth), so a fixed camera only draws the meshes per frame.
        ``camera``: the camera's name, whose colour calibration is applied when the twin has
        one (``RenderConfig.colour_map``)."""
        with self.ctx:          # make this context current (another GL user may share the thread)
            img = self._render(camera_pose, fovy, size, link_poses, object_pose, fixture_pose, static_camera)
        if camera is not None and self.colour_map is not None:
            img = self.colour_map.apply(camera, img)
        return img

    def _draw_points(self, view, vp, fovy, h, fixture_pose) -> None:
        if self.far is not None:        # behind everything: no depth test, no depth written
            tex, prog, vao = self.far
            prog["inv_vp"].write(np.linalg.inv(vp).T.astype(np.float32).tobytes())
            tex.use(0)
            self.ctx.disable(self.mgl.DEPTH_TEST)
            vao.render(self.mgl.TRIANGLES, vertices=3)
            self.ctx.enable(self.mgl.DEPTH_TEST)
        pp = self.point_prog
        pp["proj"].write((vp @ np.linalg.inv(view)).T.astype(np.float32).tobytes())
        pp["view"].write(view.T.astype(np.float32).tobytes())
        pp["focal"].value = 0.5 * h / math.tan(math.radians(fovy) / 2)
        for cloud, model in zip(self.clouds, (np.eye(4), fixture_pose)):
            if cloud is not None:
                pp["model"].write(np.asarray(model, np.float32).T.tobytes())
                cloud[1].render(self.mgl.POINTS, vertices=cloud[2])
        if self.surface is not None:
            mp = self.mesh_prog
            mp["vp"].write(vp.T.astype(np.float32).tobytes())
            ident = np.tile(np.eye(4, dtype=np.float32), (MAX_LINKS, 1, 1))
            mp["models"].write(ident.tobytes())
            mp["lit"].value = 0.0
            self.surface[1].render(self.mgl.TRIANGLES, vertices=self.surface[2])
            mp["lit"].value = 1.0

    def _render(self, camera_pose, fovy, size, link_poses, object_pose, fixture_pose, static_camera) -> np.ndarray:
        w, h = size
        fbo = self.fbos[(w, h)]
        # moderngl keeps a viewport per framebuffer and ``ctx.viewport = ...`` sets the bound
        # one's: always bind first, then set it (setting it before binding changed the previous
        # camera's framebuffer, and a wrist camera smaller than the third-person one then drew
        # its points, support surface and far field at the other camera's scale)
        view = np.linalg.inv(camera_pose)
        vp = perspective(fovy, w / h) @ view
        if static_camera:
            key = (w, h, float(fovy), np.asarray(camera_pose, np.float32).tobytes(),
                   np.asarray(fixture_pose, np.float32).tobytes())
            layer = self._static.get(key)
            if layer is None:
                if len(self._static) >= 8:
                    for old in self._static.values():
                        old.release()
                    self._static.clear()
                layer = self.ctx.framebuffer(color_attachments=[self.ctx.renderbuffer((w, h), 3)],
                                             depth_attachment=self.ctx.depth_renderbuffer((w, h)))
                layer.use()
                self.ctx.viewport = (0, 0, w, h)
                layer.clear(*self.background, 1.0, depth=1.0)
                self._draw_points(view, vp, fovy, h, fixture_pose)
                self._static[key] = layer
            self.ctx.copy_framebuffer(fbo, layer)
            fbo.use()
            self.ctx.viewport = (0, 0, w, h)
        else:
            fbo.use()
            self.ctx.viewport = (0, 0, w, h)
            fbo.clear(*self.background, 1.0, depth=1.0)
            self._draw_points(view, vp, fovy, h, fixture_pose)
        models = self._models
        models[0] = object_pose
        models[1] = fixture_pose
        for i, n in enumerate(self.links):
            models[i + 2] = link_poses[n]
        self.mesh_prog["vp"].write(vp.T.astype(np.float32).tobytes())
        self.mesh_prog["models"].write(np.ascontiguousarray(models.transpose(0, 2, 1)).tobytes())
        self.mesh_vao.render(self.mgl.TRIANGLES, vertices=self.n_mesh)
        data = fbo.read(components=3, alignment=1)
        return np.frombuffer(data, np.uint8).reshape(h, w, 3)[::-1].copy()

    def close(self) -> None:
        try:
            self.ctx.release()
        except Exception:
            pass
