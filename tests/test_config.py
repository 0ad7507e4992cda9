"""The typed configuration loader: strict keys and types, errors naming file and key."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from twinrl_bringup.config import ConfigError, apply_overrides, from_dict, load_config, to_dict


@dataclass
class Grid:
    rows: int
    cols: int
    extent: tuple[float, float, float, float]
    id_rows: list[int] = field(default_factory=list)


@dataclass
class Task:
    name: str
    grid: Grid
    time_limit: int = 100
    reward: Literal["sparse", "shaped"] = "sparse"
    threshold: Optional[float] = None
    weights: dict[str, float] = field(default_factory=dict)

    def validate(self):
        if self.time_limit <= 0:
            raise ValueError(f"time_limit must be > 0, got {self.time_limit}")


GOOD = """\
name: pick_and_place
grid:
  rows: 4
  cols: 5
  extent: [0.3, 0.7, -0.3, 0.3]
  id_rows: [1, 2]
time_limit: 80
reward: shaped
weights: {reach: 0.5, lift: 1}
"""


def write(tmp_path, text, name="task.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_loads_typed_values(tmp_path):
    cfg = load_config(write(tmp_path, GOOD), Task)
    assert cfg.grid.rows == 4 and cfg.grid.extent == (0.3, 0.7, -0.3, 0.3)
    assert cfg.weights == {"reach": 0.5, "lift": 1.0} and isinstance(cfg.weights["lift"], float)
    assert cfg.reward == "shaped" and cfg.threshold is None and cfg.time_limit == 80
    assert to_dict(cfg)["grid"]["extent"] == [0.3, 0.7, -0.3, 0.3]


@pytest.mark.parametrize("text,key,words", [
    (GOOD + "colour: red\n", "colour", "unknown key"),
    (GOOD.replace("  rows: 4\n", ""), "grid.rows", "missing key"),
    (GOOD.replace("rows: 4", "rows: four"), "grid.rows", "expected int"),
    (GOOD.replace("rows: 4", "rows: 4.5"), "grid.rows", "expected int"),
    (GOOD.replace("rows: 4", "rows: true"), "grid.rows", "expected int"),
    (GOOD.replace("[0.3, 0.7, -0.3, 0.3]", "[0.3, 0.7]"), "grid.extent", "expected 4 values"),
    (GOOD.replace("id_rows: [1, 2]", "id_rows: [1, x]"), "grid.id_rows[1]", "expected int"),
    (GOOD.replace("reward: shaped", "reward: dense"), "reward", "expected one of"),
    (GOOD.replace("reach: 0.5", "reach: high"), "weights.reach", "expected float"),
    (GOOD.replace("time_limit: 80", "time_limit: -3"), "", "time_limit must be > 0"),
    (GOOD.replace("  cols: 5\n", "  cols: 5\n  depth: 2\n"), "grid.depth", "unknown key"),
])
def test_errors_name_file_and_key(tmp_path, text, key, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path, Task)
    msg = str(err.value)
    assert str(path) in msg
    assert words in msg
    if key:
        assert f": {key}: " in msg, msg
        assert err.value.key == key


def test_bad_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "name: x\ngrid: {rows: 1, cols: [\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, Task)
    assert str(path) in str(err.value) and "invalid YAML" in str(err.value) and "line" in str(err.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "nope.yaml", Task)
    assert "nope.yaml" in str(err.value)


def test_top_level_must_be_mapping(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "- 1\n- 2\n"), Task)
    assert "expected a mapping" in str(err.value)


def test_overrides_are_checked_like_files(tmp_path):
    path = write(tmp_path, GOOD)
    cfg = load_config(path, Task, overrides=["grid.rows=6", "threshold=0.8"])
    assert cfg.grid.rows == 6 and cfg.threshold == 0.8
    with pytest.raises(ConfigError) as err:
        load_config(path, Task, overrides=["grid.rows=many"])
    assert "grid.rows" in str(err.value)
    with pytest.raises(ConfigError):
        load_config(path, Task, overrides=["grid.nope=1"])
    assert apply_overrides({"a": {"b": 1}}, [("a.c", 2)]) == {"a": {"b": 1, "c": 2}}


def test_section(tmp_path):
    path = write(tmp_path, "task:\n" + "".join("  " + line + "\n" for line in GOOD.splitlines()))
    assert load_config(path, Task, section="task").grid.cols == 5
    with pytest.raises(ConfigError) as err:
        load_config(path, Task, section="robot")
    assert "robot" in str(err.value)


def test_from_dict_source_label():
    with pytest.raises(ConfigError) as err:
        from_dict({"rows": 1}, Grid, source="inline")
    assert str(err.value).startswith("inline: cols: missing key")


def test_every_shipped_yaml_parses():
    """Every YAML file under config/ is syntactically valid."""
    from twinrl_bringup.config import config_dir, load_yaml

    files = sorted(config_dir().rglob("*.yaml"))
    assert files, "no configuration shipped"
    for f in files:
        load_yaml(f)
