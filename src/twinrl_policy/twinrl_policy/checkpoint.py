"""Policy checkpoints: one self-checking file per policy version.

Layout (all integers little-endian)::

    b"TWINRL-POLICY\\n"            magic (14 bytes)
    uint32 header_length
    header (UTF-8 JSON): {"format_version": 1, "payload_bytes": N, "payload_sha256": "<hex>"}
    payload (N bytes): torch.save of {"format_version", "version", "model_config",
                                      "norm_stats", "tasks", "metadata", "state_dict"}

The payload is read with ``torch.load(weights_only=True)`` (no code execution). Loading
checks, and raises :class:`CheckpointError` naming the file on any failure: magic and header,
truncation (payload shorter than announced), the sha256 of the payload, the payload's keys,
the model config (the project's strict config loader), normalisation statistics, the state
dict's parameter names and shapes against the architecture, and that every weight is finite.
Files are written atomically (temporary file, fsync, rename), so a reader never sees half
a checkpoint.

``file_sha256(path)`` is the digest of the whole file, as announced in
``twinrl_msgs/PolicyVersion.sha256``.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from twinrl_bringup.config import ConfigError, from_dict, to_dict

from .config import ModelConfig
from .model import VisuomotorPolicy, non_finite_tensors
from .normalization import NormStats

__all__ = [
    "MAGIC",
    "FORMAT_VERSION",
    "CheckpointError",
    "PolicyCheckpoint",
    "save_checkpoint",
    "load_checkpoint",
    "load_policy",
    "file_sha256",
    "write_raw_checkpoint",
]

MAGIC = b"TWINRL-POLICY\n"
FORMAT_VERSION = 1
# model options added after checkpoints were first written, as those checkpoints were trained:
# without the commanded-target input, with the TCP quaternion fed as it came
LEGACY_MODEL_OPTIONS = {"command_input": False, "proprio_rotation": "quaternion"}
PAYLOAD_KEYS = ("format_version", "version", "model_config", "norm_stats", "tasks", "metadata", "state_dict")
_MAX_HEADER = 1 << 16


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt or inconsistent; names the file."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass
class PolicyCheckpoint:
    model_config: ModelConfig
    norm_stats: NormStats
    state_dict: dict
    version: int = 0
    metadata: dict = field(default_factory=dict)

    @property
    def tasks(self) -> list[str]:
        return list(self.model_config.tasks)

    def build_policy(self) -> VisuomotorPolicy:
        policy = VisuomotorPolicy(self.model_config, self.norm_stats)
        policy.load_state_dict(self.state_dict)
        policy.eval()
        return policy


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_raw_checkpoint(path, payload: dict) -> str:
    """Serialise ``payload`` into the checkpoint container atomically; returns the file sha256.

    Low level: :func:`save_checkpoint` builds the payload from a policy.
    """
    path = Path(path)
    buf = io.BytesIO()
    torch.save(payload, buf)
    body = buf.getvalue()
    header = json.dumps({"format_version": FORMAT_VERSION, "payload_bytes": len(body),
                         "payload_sha256": hashlib.sha256(body).hexdigest()}).encode()
    data = MAGIC + struct.pack("<I", len(header)) + header + body
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return hashlib.sha256(data).hexdigest()


def save_checkpoint(path, policy: VisuomotorPolicy, version: int = 0, metadata: dict | None = None) -> str:
    """Write ``policy`` (config, normalisation, weights) to ``path``; returns the file sha256."""
    bad = non_finite_tensors(policy)
    if bad:
        raise ValueError(f"refusing to save a policy with non-finite weights: {', '.join(bad[:5])}")
    meta = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(metadata or {})}
    payload = {
        "format_version": FORMAT_VERSION,
        "version": int(version),
        "model_config": to_dict(policy.cfg),
        "norm_stats": policy.norm.to_dict(),
        "tasks": list(policy.cfg.tasks),
        "metadata": meta,
        "state_dict": {k: v.detach().cpu().clone() for k, v in policy.state_dict().items()},
    }
    return write_raw_checkpoint(path, payload)


def _read_payload(path: Path) -> dict:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(path, "no such checkpoint file") from None
    except OSError as exc:
        raise CheckpointError(path, f"cannot read: {exc.strerror or exc}") from exc
    if not data.startswith(MAGIC):
        if len(data) < len(MAGIC) and MAGIC.startswith(data):
            raise CheckpointError(path, f"truncated checkpoint ({len(data)} bytes)")
        raise CheckpointError(path, "not a TwinRL policy checkpoint (bad magic bytes)")
    off = len(MAGIC)
    if len(data) < off + 4:
        raise CheckpointError(path, f"truncated checkpoint ({len(data)} bytes, header missing)")
    (hlen,) = struct.unpack_from("<I", data, off)
    off += 4
    if hlen > _MAX_HEADER:
        raise CheckpointError(path, f"corrupt header (length {hlen})")
    if len(data) < off + hlen:
        raise CheckpointError(path, f"truncated checkpoint ({len(data)} bytes, header incomplete)")
    try:
        header = json.loads(data[off:off + hlen].decode())
        n, digest = int(header["payload_bytes"]), str(header["payload_sha256"])
        fmt = int(header["format_version"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise CheckpointError(path, f"corrupt header ({type(exc).__name__}: {exc})") from None
    if fmt != FORMAT_VERSION:
        raise CheckpointError(path, f"unsupported checkpoint format_version {fmt} (this reader supports "
                                    f"{FORMAT_VERSION})")
    off += hlen
    body = data[off:]
    if len(body) < n:
        raise CheckpointError(path, f"truncated checkpoint: payload has {len(body)} of {n} bytes")
    if len(body) > n:
        raise CheckpointError(path, f"corrupt checkpoint: {len(body) - n} unexpected trailing bytes")
    if hashlib.sha256(body).hexdigest() != digest:
        raise CheckpointError(path, "checksum mismatch: the payload's sha256 differs from the header "
                                    "(file corrupt)")
    try:
        payload = torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(path, f"unreadable payload ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict):
        raise CheckpointError(path, f"payload is a {type(payload).__name__}, expected a mapping")
    return payload


def load_checkpoint(path) -> PolicyCheckpoint:
    """Read and fully verify a checkpoint (see module doc); raises CheckpointError."""
    path = Path(path)
    payload = _read_payload(path)
    missing = [k for k in PAYLOAD_KEYS if k not in payload]
    unexpected = sorted(set(payload) - set(PAYLOAD_KEYS))
    if missing or unexpected:
        raise CheckpointError(path, f"wrong keys: missing {missing}, unexpected {unexpected}")
    if payload["format_version"] != FORMAT_VERSION:
        raise CheckpointError(path, f"payload format_version {payload['format_version']!r} != {FORMAT_VERSION}")
    stored = payload["model_config"]
    if isinstance(stored, dict):
        # options a checkpoint from before them was trained without
        stored = {**LEGACY_MODEL_OPTIONS, **stored}
    try:
        cfg = from_dict(stored, ModelConfig, source=str(path), prefix="model_config")
    except ConfigError as exc:
        raise CheckpointError(path, f"invalid model_config: {exc.key}: {exc.problem}") from None
    try:
        norm = NormStats.from_dict(payload["norm_stats"])
    except (ValueError, TypeError) as exc:
        raise CheckpointError(path, f"invalid {exc}") from None
    if list(payload["tasks"]) != list(cfg.tasks):
        raise CheckpointError(path, f"tasks {payload['tasks']} disagree with model_config.tasks {cfg.tasks}")
    if not isinstance(payload["version"], int) or payload["version"] < 0:
        raise CheckpointError(path, f"invalid version {payload['version']!r}")
    state = payload["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(path, "state_dict: expected a mapping of parameter names to tensors")
    try:
        policy = VisuomotorPolicy(cfg, norm)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(path, f"cannot build the policy from model_config: {exc}") from None
    expected = policy.state_dict()
    miss = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if miss or extra:
        raise CheckpointError(path, f"state_dict does not match the architecture: missing {miss[:5]}"
                                    f"{'...' if len(miss) > 5 else ''}, unexpected {extra[:5]}"
                                    f"{'...' if len(extra) > 5 else ''}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise CheckpointError(path, f"state_dict[{k!r}]: shape {tuple(v.shape)}, architecture expects "
                                        f"{tuple(expected[k].shape)}")
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(path, f"state_dict[{k!r}]: non-finite weights (NaN/inf)")
    meta = payload["metadata"] if isinstance(payload["metadata"], dict) else {}
    return PolicyCheckpoint(cfg, norm, state, int(payload["version"]), meta)


def load_policy(path) -> tuple[VisuomotorPolicy, PolicyCheckpoint]:
    """A verified checkpoint as an eval-mode policy."""
    ckpt = load_checkpoint(path)
    return ckpt.build_policy(), ckpt
