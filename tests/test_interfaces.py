"""Every twinrl_msgs interface imports and survives a CDR serialise/deserialise round trip."""
from __future__ import annotations

import importlib
import math
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MSGS = ROOT / "src" / "twinrl_msgs"


def _interfaces(kind: str) -> list[str]:
    return sorted(p.stem for p in (MSGS / kind).glob(f"*.{kind}"))


def test_every_interface_file_is_built():
    cmake = (MSGS / "CMakeLists.txt").read_text()
    for kind in ("msg", "srv", "action"):
        for name in _interfaces(kind):
            assert f'"{kind}/{name}.{kind}"' in cmake, f"{kind}/{name} missing from CMakeLists.txt"
    assert len(_interfaces("msg")) >= 8 and _interfaces("srv") and _interfaces("action")


def _fill(msg, seed: int, depth: int = 0):
    """Set every field of ``msg`` to a non-default value derived from ``seed``."""
    rng = np.random.default_rng(seed)
    for name, typ in msg.get_fields_and_field_types().items():
        cur = getattr(msg, name)
        if typ == "string":
            setattr(msg, name, f"{name}-{seed}")
        elif typ == "boolean":
            setattr(msg, name, True)
        elif typ in ("float", "double"):
            setattr(msg, name, float(rng.integers(1, 100)) / 4.0)
        elif typ in ("uint8", "octet", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "byte"):
            setattr(msg, name, int(rng.integers(1, 100)))
        elif typ.startswith("sequence<") or "[" in typ:
            inner = typ.split("<", 1)[1].rstrip(">").split(",")[0] if typ.startswith("sequence<") else typ.split("[")[0]
            n = len(cur) if "[" in typ and not typ.startswith("sequence") else 3
            if inner in ("float", "double"):
                setattr(msg, name, [float(x) for x in rng.random(n)])
            elif inner == "string":
                setattr(msg, name, [f"s{i}" for i in range(n)])
            elif inner in ("uint8", "octet", "uint32", "int8", "int32", "uint16", "uint64", "int64"):
                setattr(msg, name, [int(x) for x in rng.integers(0, 100, n)])
            elif inner == "boolean":
                setattr(msg, name, [True] * n)
            else:  # sequence of messages
                mod, _, cls = inner.rpartition("/")
                pkg = importlib.import_module(mod.replace("/", "."))
                items = []
                for i in range(2):
                    item = getattr(pkg, cls)()
                    _fill(item, seed + i + 1, depth + 1)
                    items.append(item)
                setattr(msg, name, items)
        elif hasattr(cur, "get_fields_and_field_types"):
            _fill(cur, seed + depth + 7, depth + 1)
        else:
            raise AssertionError(f"unhandled field type {typ} of {type(msg).__name__}.{name}")


def _equal(a, b) -> bool:
    if hasattr(a, "get_fields_and_field_types"):
        return all(_equal(getattr(a, f), getattr(b, f)) for f in a.get_fields_and_field_types())
    if isinstance(a, (list, tuple, np.ndarray)):
        a, b = list(a), list(b)
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, (float, np.floating)):
        return (math.isnan(a) and math.isnan(b)) or abs(a - b) < 1e-6
    return a == b


def _types():
    out = []
    for name in _interfaces("msg"):
        out.append(("msg", name, name))
    for name in _interfaces("srv"):
        out += [("srv", name, f"{name}.Request"), ("srv", name, f"{name}.Response")]
    for name in _interfaces("action"):
        out += [("action", name, f"{name}.{part}") for part in ("Goal", "Result", "Feedback")]
        out += [("action", name, f"{name}.Impl.SendGoalService.Request"),
                ("action", name, f"{name}.Impl.GetResultService.Response"),
                ("action", name, f"{name}.Impl.FeedbackMessage")]
    return out


@pytest.mark.parametrize("kind,name,path", _types(), ids=lambda v: str(v))
def test_round_trip(kind, name, path):
    from rclpy.serialization import deserialize_message, serialize_message

    mod = importlib.import_module(f"twinrl_msgs.{kind}")
    cls = mod
    for part in path.split("."):
        cls = getattr(cls, part)
    msg = cls()
    _fill(msg, seed=len(path))
    data = serialize_message(msg)
    assert isinstance(data, bytes) and len(data) > 0
    back = deserialize_message(data, cls)
    assert _equal(msg, back), f"{path} changed in a round trip"
    # a default message differs from the filled one: the filler really set fields
    if msg.get_fields_and_field_types():
        assert not _equal(cls(), back), f"{path}: filling left every field at its default"


def test_constants_are_distinct():
    from twinrl_msgs.msg import Action, ResetConfiguration, Transition
    from twinrl_msgs.srv import SetControlMode

    assert len({Action.SOURCE_POLICY, Action.SOURCE_HUMAN, Action.SOURCE_SCRIPTED}) == 3
    assert len({Transition.SOURCE_REAL, Transition.SOURCE_TWIN, Transition.SOURCE_DEMO,
                Transition.SOURCE_INTERVENTION}) == 4
    assert ResetConfiguration.REGION_ID != ResetConfiguration.REGION_OOD
    modes = {SetControlMode.Request.MODE_POLICY, SetControlMode.Request.MODE_HUMAN, SetControlMode.Request.MODE_HOLD}
    assert len(modes) == 3


def test_malformed_bytes_are_rejected():
    from rclpy.serialization import deserialize_message, serialize_message
    from twinrl_msgs.msg import Observation

    msg = Observation()
    msg.third_person.data = bytes(range(256)) * 4
    data = serialize_message(msg)
    with pytest.raises(Exception):
        deserialize_message(data[: len(data) // 3], Observation)
