import dataclasses

import pytest

from raylm.config import ConfigError, load


@dataclasses.dataclass(kw_only=True)
class Inner:
    rate: float = 0.1
    names: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(kw_only=True)
class Outer:
    size: int = 3
    flag: bool = False
    inner: Inner = dataclasses.field(default_factory=Inner)


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_yaml_and_overrides(tmp_path):
    p = write(tmp_path, "size: 5\ninner: {rate: 0.5}\n")
    cfg = load(Outer, p, ["inner.rate=0.25", "flag=true", "inner.names=[a, b]"])
    assert cfg.size == 5 and cfg.flag is True
    assert cfg.inner.rate == 0.25 and cfg.inner.names == ["a", "b"]


def test_unknown_key_names_key_and_file(tmp_path):
    p = write(tmp_path, "inner: {ratee: 1}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown key 'inner\.ratee'"):
        load(Outer, p)


def test_wrong_type_names_key(tmp_path):
    p = write(tmp_path, "size: many\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: size: 'many' is not an int"):
        load(Outer, p)
    with pytest.raises(ConfigError, match=r"--set: size: 1\.5 is not an int"):
        load(Outer, None, ["size=1.5"])


def test_yaml_syntax_error_names_line(tmp_path):
    p = write(tmp_path, "size: 1\ninner: {rate: [\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: line \d+"):
        load(Outer, p)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load(Outer, tmp_path / "nope.yaml")


@dataclasses.dataclass(kw_only=True)
class Sched:
    points: list[tuple[int, dict[str, float]]] = dataclasses.field(default_factory=list)


def test_heterogeneous_tuples_from_yaml(tmp_path):
    p = write(tmp_path, "points: [[0, {web: 0.5}], [100, {web: 0.25}]]\n")
    assert load(Sched, p).points == [(0, {"web": 0.5}), (100, {"web": 0.25})]
    with pytest.raises(ConfigError, match=r"points\[0\]: expected 2 items"):
        load(Sched, write(tmp_path, "points: [[0]]\n"))
