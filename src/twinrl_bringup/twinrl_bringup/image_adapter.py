"""Crop and resize camera images to the policy's input sizes (plain numpy + Pillow).

:class:`ImageAdapter` takes raw image bytes as a driver publishes them (``sensor_msgs/Image``
fields: height, width, encoding, step, data), checks them against the configured stream
(size and encoding; a mismatch is an :class:`ImageInputError` naming the camera and what was
expected), crops (largest centred square, or a configured ROI), resizes (area averaging) and
returns an ``(S, S, 3)`` uint8 rgb image plus the intrinsics adjusted for crop and scale.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from twinrl_bringup.config import load_config, resolve_config_path

SUPPORTED = {"rgb8": (3, False), "bgr8": (3, True), "rgba8": (4, False), "bgra8": (4, True)}


class ImageInputError(ValueError):
    pass


@dataclass
class CameraStream:
    model: str
    serial_no: str
    camera_name: str
    width: int
    height: int
    fps: int
    input_topic: str
    output_size: int
    output_topic: str
    frame_id: str
    camera_namespace: str = ""
    input_info_topic: str = ""
    output_info_topic: str = ""
    crop: Union[str, list[int]] = "center"

    def validate(self) -> None:
        if self.width <= 0 or self.height <= 0 or self.output_size <= 0:
            raise ValueError("width, height and output_size must be positive")
        if isinstance(self.crop, str):
            if self.crop != "center":
                raise ValueError(f"crop must be 'center' or [x, y, w, h], got {self.crop!r}")
        else:
            if len(self.crop) != 4:
                raise ValueError(f"crop ROI needs [x, y, w, h], got {self.crop}")
            x, y, w, h = self.crop
            if x < 0 or y < 0 or w <= 0 or h <= 0 or x + w > self.width or y + h > self.height:
                raise ValueError(f"crop ROI {self.crop} does not fit a {self.width}x{self.height} image")
        cw, ch = self.crop_box()[2:]
        if cw < self.output_size or ch < self.output_size:
            raise ValueError(f"crop {cw}x{ch} is smaller than output_size {self.output_size} (no upsampling)")

    def crop_box(self) -> tuple[int, int, int, int]:
        if isinstance(self.crop, str):
            s = min(self.width, self.height)
            return (self.width - s) // 2, (self.height - s) // 2, s, s
        return tuple(int(v) for v in self.crop)


@dataclass
class RealCamerasConfig:
    cameras: dict[str, CameraStream]
    error_interval_s: float = 5.0


def load_cameras_config(path=None, overrides=()) -> RealCamerasConfig:
    return load_config(resolve_config_path(path if path is not None else "cameras_real"), RealCamerasConfig,
                       overrides=overrides)


class ImageAdapter:
    def __init__(self, name: str, stream: CameraStream):
        self.name = name
        self.stream = stream
        self.converted = 0
        self.errors = 0

    def check(self, height: int, width: int, encoding: str, step: int, nbytes: int) -> tuple[int, bool]:
        s = self.stream
        if encoding not in SUPPORTED:
            raise ImageInputError(f"{self.name}: encoding {encoding!r} not supported "
                                  f"(expected one of {', '.join(SUPPORTED)}) on {s.input_topic}")
        if (width, height) != (s.width, s.height):
            raise ImageInputError(f"{self.name}: got a {width}x{height} image on {s.input_topic}, "
                                  f"expected {s.width}x{s.height} (cameras_real.yaml)")
        channels, swap = SUPPORTED[encoding]
        if step < width * channels or nbytes < step * height:
            raise ImageInputError(f"{self.name}: image data too short ({nbytes} bytes, step {step}) "
                                  f"for {width}x{height} {encoding}")
        return channels, swap

    def convert(self, height: int, width: int, encoding: str, step: int, data: bytes) -> np.ndarray:
        """The (S, S, 3) uint8 rgb policy image; ImageInputError for bad input."""
        try:
            channels, swap = self.check(height, width, encoding, step, len(data))
        except ImageInputError:
            self.errors += 1
            raise
        buf = np.frombuffer(data, dtype=np.uint8, count=step * height).reshape(height, step)
        img = buf[:, : width * channels].reshape(height, width, channels)[:, :, :3]
        if swap:
            img = img[:, :, ::-1]
        x, y, w, h = self.stream.crop_box()
        img = img[y:y + h, x:x + w]
        out = resize_area(img, self.stream.output_size)
        self.converted += 1
        return out

    def intrinsics(self, k: Optional[list]) -> Optional[tuple[float, float, float, float]]:
        """(fx, fy, cx, cy) of the output image from the input camera matrix K (row-major)."""
        if k is None or len(k) != 9 or k[0] == 0:
            return None
        x, y, w, h = self.stream.crop_box()
        sx = self.stream.output_size / w
        sy = self.stream.output_size / h
        return k[0] * sx, k[4] * sy, (k[2] - x + 0.5) * sx - 0.5, (k[5] - y + 0.5) * sy - 0.5


def resize_area(img: np.ndarray, size: int) -> np.ndarray:
    """Square resize with area averaging (Pillow's BOX filter)."""
    from PIL import Image as PILImage

    if img.shape[0] == size and img.shape[1] == size:
        return np.ascontiguousarray(img)
    pil = PILImage.fromarray(np.ascontiguousarray(img))
    return np.asarray(pil.resize((size, size), PILImage.Resampling.BOX), dtype=np.uint8)
