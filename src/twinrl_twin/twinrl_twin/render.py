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
in vec2 in_uv;
out vec3 v_color;
out vec2 v_uv;
out float v_light;
void main() {
    mat4 m = models[int(in_link + 0.5)];
    gl_Position = vp * m * vec4(in_pos, 1.0);
    vec3 n = normalize(mat3(m) * in_normal);
    float l = lit > 0.5 ? ambient + diffuse * abs(dot(n, light)) : 1.0;
    v_color = min(in_color * l, vec3(1.0));
    v_uv = in_uv;
    v_light = l;
}
"""

# meshes: the vertex colours, or with a texture atlas bound (``textured``) its texels
_MESH_FS = """
#version 330
uniform sampler2D atlas;
uniform float textured;
in vec3 v_color;
in vec2 v_uv;
in float v_light;
out vec4 f_color;
void main() {
    vec3 c = textured > 0.5 ? min(texture(atlas, v_uv).rgb * v_light, vec3(1.0)) : v_color;
    f_color = vec4(c, 1.0);
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
in float in_lying;
out vec3 v_color;
void main() {
    if (in_lying > 0.5) {           // drawn as a disc by the surfel program instead
        gl_Position = vec4(2.0, 2.0, 2.0, 1.0);
        gl_PointSize = 1.0;
        v_color = in_color;
        return;
    }
    vec4 pc = view * (model * vec4(in_pos, 1.0));
    float depth = max(-pc.z, 1e-3);
    // a sprite is flat at its centre's depth: push it back by its radius so that surfaces
    // (object, robot) lying on the scanned surface are not hidden by it
    gl_Position = proj * vec4(pc.xy, pc.z - in_radius, 1.0);
    gl_PointSize = clamp(2.0 * in_radius * focal / depth, 1.0, max_px);
    v_color = in_color;
}
"""

# splats lying in a fixture's top face (a whiteboard's ink, a plate's face): one disc of the
# splat's radius per splat, lying in the face (instanced quads, round by discarding the corners),
# so that its depth is right at every pixel. Camera-facing sprites pushed back by their radius
# hid such splats under the fixture's mesh from above, and the nearer of two neighbouring
# sprites covered the farther one on a slanted view.
_SURFEL_VS = """
#version 330
uniform mat4 vp;
uniform mat4 model;
uniform float lift;
in vec2 in_corner;
in vec3 in_pos;
in vec3 in_color;
in float in_radius;
in float in_lying;
out vec3 v_color;
out vec2 v_corner;
void main() {
    v_color = in_color;
    v_corner = in_corner;
    if (in_lying < 0.5) {           // a sprite of the point program
        gl_Position = vec4(2.0, 2.0, 2.0, 1.0);
        return;
    }
    vec3 p = in_pos + vec3(in_corner * in_radius, lift);
    gl_Position = vp * (model * vec4(p, 1.0));
}
"""

_SURFEL_FS = """
#version 330
in vec3 v_color;
in vec2 v_corner;
out vec4 f_color;
void main() {
    if (dot(v_corner, v_corner) > 1.0) discard;
    f_color = vec4(v_color, 1.0);
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
    # m: the fixture's splats within this of its top face are drawn as discs lying in the face
    # (surfels) instead of camera-facing sprites; 0: all sprites
    surfel_tolerance: float = 0.003
    lp_threads: int = 1
    far_field: bool = True          # draw the twin's far-field panorama behind everything (when it has one)
    colour_map: bool = True         # apply the twin's colour calibration (twinrl_twin.colour_map) when it has one
    appearance: bool = True         # apply its appearance network (twinrl_twin.appearance) instead, when it has one

    def validate(self) -> None:
        if not 0 <= self.ambient <= 2 or not 0 <= self.diffuse <= 2:
            raise ValueError("ambient and diffuse must be in [0, 2]")
        if np.linalg.norm(self.light_direction) < 1e-6:
            raise ValueError("light_direction must not be zero")
        if self.background is not None and not is_rgb(self.background):
            raise ValueError(f"background must be three numbers in [0, 1] (RGB) or null, got {self.background!r}")
        if not 0 <= self.surfel_tolerance <= 0.05:
            raise ValueError(f"surfel_tolerance must be in [0, 0.05] m, got {self.surfel_tolerance!r}")
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


MESH_LAYOUT = ("3f 3f 3f 1f 2f", "in_pos", "in_normal", "in_color", "in_link", "in_uv")


def _flat(mesh: ColouredMesh, link: int) -> np.ndarray:
    """Interleaved (pos, normal, colour, link, uv) per triangle corner, flat normals (uv 0
    without a texture)."""
    tri = mesh.vertices[mesh.faces]                       # (F, 3, 3)
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    col = mesh.colors[mesh.faces].astype(np.float32) / 255.0
    F = len(mesh.faces)
    out = np.zeros((F, 3, 12), np.float32)
    out[..., 0:3] = tri
    out[..., 3:6] = n[:, None, :]
    out[..., 6:9] = col
    out[..., 9] = float(link)
    if mesh.texture is not None:
        out[..., 10:12] = mesh.uvs[mesh.faces]
    return out.reshape(-1, 12)


def _points(pc: PointCloud, surfel_radius: Optional[np.ndarray] = None) -> np.ndarray:
    """Interleaved (pos, colour, radius, lying) per point; where ``surfel_radius`` > 0 the
    point is drawn as a disc of that radius (lying 1) instead of a sprite."""
    out = np.zeros((len(pc.positions), 8), np.float32)
    out[:, 0:3] = pc.positions
    out[:, 3:6] = pc.colors.astype(np.float32) / 255.0
    out[:, 6] = pc.radii
    if surfel_radius is not None:
        lying = surfel_radius > 0
        out[lying, 6] = surfel_radius[lying]
        out[:, 7] = lying
    return out


def surfel_radii(points: PointCloud, mesh: ColouredMesh, tolerance: float) -> np.ndarray:
    """Per splat of a fixture (fixture frame), the radius of its disc lying in the fixture's top
    face, 0 for splats drawn as sprites. The top face: the mesh's triangles whose corners are all
    at its highest z. A splat lies in it when it is within ``tolerance`` of that height and its
    centre is over one of those triangles; its disc is shrunk to stay inside the face's outline."""
    n = len(points.positions)
    out = np.zeros(n, np.float32)
    if tolerance <= 0 or not n or not len(mesh.faces):
        return out
    z = mesh.vertices[:, 2]
    top = float(z.max())
    faces = mesh.faces[np.all(np.abs(z[mesh.faces] - top) <= 1e-5, axis=1)]
    near = np.flatnonzero(np.abs(points.positions[:, 2] - top) <= tolerance)
    if not len(faces) or not len(near):
        return out
    p = points.positions[near, :2].astype(float)
    tri = mesh.vertices[faces][:, :, :2].astype(float)          # (F, 3, 2)
    # inside any top triangle (signs of the three edge functions agree)
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]

    def side(u, v):
        return (v[None, :, 0] - u[None, :, 0]) * (p[:, None, 1] - u[None, :, 1]) \
            - (v[None, :, 1] - u[None, :, 1]) * (p[:, None, 0] - u[None, :, 0])
    s1, s2, s3 = side(a, b), side(b, c), side(c, a)
    inside = (((s1 >= 0) & (s2 >= 0) & (s3 >= 0)) | ((s1 <= 0) & (s2 <= 0) & (s3 <= 0))).any(axis=1)
    # the outline: top-face edges not shared by two top triangles
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    uniq, count = np.unique(edges, axis=0, return_counts=True)
    outline = uniq[count == 1]
    e0, e1 = mesh.vertices[outline[:, 0], :2].astype(float), mesh.vertices[outline[:, 1], :2].astype(float)
    d = e1 - e0
    t = np.clip(((p[:, None, :] - e0[None]) * d[None]).sum(-1) / np.maximum((d * d).sum(-1), 1e-12)[None], 0, 1)
    dist = np.linalg.norm(p[:, None, :] - (e0[None] + t[..., None] * d[None]), axis=-1).min(axis=1)
    out[near[inside]] = np.minimum(points.radii[near[inside]], dist[inside])
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
        self.appearance = assets.appearance if cfg.appearance else None
        self.background = tuple(cfg.background if cfg.background is not None
                                else assets.background if assets.background is not None else DEFAULT_BACKGROUND)
        if cfg.lp_threads:
            os.environ["LP_NUM_THREADS"] = str(cfg.lp_threads)   # read when the context is created
        import moderngl

        self.mgl = moderngl
        self.ctx = create_context()
        ctx = self.ctx
        ctx.enable(moderngl.DEPTH_TEST | moderngl.PROGRAM_POINT_SIZE)
        self.mesh_prog = ctx.program(vertex_shader=_MESH_VS, fragment_shader=_MESH_FS)
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
        meshes = np.concatenate([_flat(assets.object_mesh, 0), _flat(assets.fixture_mesh, 1)]
                                + [_flat(assets.robot[n], i + 2) for i, n in enumerate(self.links)])
        self.n_object = len(assets.object_mesh.faces) * 3
        self.n_fixture = len(assets.fixture_mesh.faces) * 3
        self.mesh_vbo = ctx.buffer(meshes.tobytes())
        self.mesh_vao = ctx.vertex_array(self.mesh_prog, [(self.mesh_vbo, *MESH_LAYOUT)])
        self.n_mesh = len(meshes)
        # draw calls over the vertex buffer: the object and fixture as their colours say (scanned
        # shading is drawn unlit), the robot lit
        # shading is drawn unlit) and from their texture atlases where they have one, the robot lit
        self.mesh_prog["atlas"].value = 0
        ranges = [(self.n_object, assets.object_mesh.lit, self._texture(assets.object_mesh)),
                  (self.n_fixture, assets.fixture_mesh.lit, self._texture(assets.fixture_mesh)),
                  (self.n_mesh - self.n_object - self.n_fixture, True, None)]
        self._mesh_ranges = []
        for n, lit, tex in ranges:
            if self._mesh_ranges and tex is None and self._mesh_ranges[-1][1:] == (lit, None):
                self._mesh_ranges[-1] = (self._mesh_ranges[-1][0] + n, lit, None)
            elif n:
                self._mesh_ranges.append((n, lit, tex))
        self.surface = None
        if len(assets.surface.faces):
            srf = _flat(assets.surface, 0)
            vbo = ctx.buffer(srf.tobytes())
            vao = ctx.vertex_array(self.mesh_prog, [(vbo, *MESH_LAYOUT)])
            self.surface = (vbo, vao, len(srf))
        self.clouds = []
        radii = surfel_radii(assets.fixture_points, assets.fixture_mesh, cfg.surfel_tolerance)
        self._fixture_data = _points(assets.fixture_points, radii)
        for pc, data in ((assets.scene, _points(assets.scene)), (assets.fixture_points, self._fixture_data)):
            if len(pc.positions):
                vbo = ctx.buffer(data.tobytes(), dynamic=pc is assets.fixture_points)
                vao = ctx.vertex_array(self.point_prog, [(vbo, "3f 3f 1f 1f", "in_pos", "in_color", "in_radius",
                                                          "in_lying")])
                self.clouds.append((vbo, vao, len(pc.positions)))
            else:
                self.clouds.append(None)
        self.surfels = None
        if (radii > 0).any():
            prog = ctx.program(vertex_shader=_SURFEL_VS, fragment_shader=_SURFEL_FS)
            prog["lift"].value = 0.0005       # over the mesh's top face they lie in: no depth fight
            quad = ctx.buffer(np.array([-1, -1, 1, -1, 1, 1, -1, -1, 1, 1, -1, 1], np.float32).tobytes())
            vao = ctx.vertex_array(prog, [(quad, "2f", "in_corner"),
                                          (self.clouds[1][0], "3f 3f 1f 1f/i", "in_pos", "in_color", "in_radius",
                                           "in_lying")])
            self.surfels = (prog, vao, len(assets.fixture_points.positions))
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
        ``camera``: the camera's name, whose appearance network (``RenderConfig.appearance``)
        or else colour calibration (``RenderConfig.colour_map``) is applied when the twin has one."""
        with self.ctx:          # make this context current (another GL user may share the thread)
            img = self._render(camera_pose, fovy, size, link_poses, object_pose, fixture_pose, static_camera)
        if camera is not None and self.appearance is not None and camera in self.appearance.nets:
            img = self.appearance.apply(camera, img)
        elif camera is not None and self.colour_map is not None:
            img = self.colour_map.apply(camera, img)
        return img

    def _texture(self, mesh: ColouredMesh):
        if mesh.texture is None:
            return None
        h, w = mesh.texture.shape[:2]
        tex = self.ctx.texture((w, h), 3, np.ascontiguousarray(mesh.texture).tobytes(), alignment=1)
        tex.filter = (self.mgl.LINEAR, self.mgl.LINEAR)
        tex.repeat_x = tex.repeat_y = False
        return tex

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
        if self.surfels is not None:
            prog, vao, n = self.surfels
            prog["vp"].write(vp.T.astype(np.float32).tobytes())
            prog["model"].write(np.asarray(fixture_pose, np.float32).T.tobytes())
            vao.render(self.mgl.TRIANGLES, vertices=6, instances=n)
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
        first = 0
        for n, lit, tex in self._mesh_ranges:
            self.mesh_prog["lit"].value = 1.0 if lit else 0.0
            self.mesh_prog["textured"].value = 0.0 if tex is None else 1.0
            if tex is not None:
                tex.use(0)
            self.mesh_vao.render(self.mgl.TRIANGLES, vertices=n, first=first)
            first += n
        self.mesh_prog["lit"].value = 1.0
        self.mesh_prog["textured"].value = 0.0
        data = fbo.read(components=3, alignment=1)
        return np.frombuffer(data, np.uint8).reshape(h, w, 3)[::-1].copy()

    def close(self) -> None:
        try:
            self.ctx.release()
        except Exception:
            pass
