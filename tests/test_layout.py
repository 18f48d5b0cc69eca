"""The package's layout holds: one folder per stage in the order data flows, small files, no
import cycles, and a model that never touches Ray or torch.distributed.

The import graph is read from the source (``ast``), lazy imports inside functions included:
an import that only runs later is still a dependency.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "raylm"
MAX_LINES = 600

# the stages in the order data flows; a stage may import those before it, never those after
STAGES = ["curate", "data", "model", "optim", "train", "infer", "tune", "plan"]


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """The raylm modules ``path`` imports (``from raylm.x import y`` counts ``raylm.x.y`` when
    that is a module, else ``raylm.x``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                     for a in node.names]
        else:
            continue
        found.update(n for n in names if n in MODULES)
    return found


GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (a path that comes back to its start), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        path.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return path[path.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        path.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():  # so that the tests below can fail
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_file_is_over_600_lines():
    long = {str(p.relative_to(ROOT.parent)): n for p in MODULES.values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_no_module_imports_itself_back():
    assert _cycle(GRAPH) is None, " -> ".join(_cycle(GRAPH))


def test_stages_import_only_the_stages_before_them():
    backwards = sorted(f"{a} -> {b}" for a, targets in GRAPH.items() for b in targets
                       if _stage(a) and _stage(b) and STAGES.index(_stage(b)) > STAGES.index(_stage(a)))
    assert not backwards, backwards
    stages = {s: {_stage(b) for a, t in GRAPH.items() if _stage(a) == s for b in t} - {s, None} for s in STAGES}
    assert _cycle(stages) is None
    assert "train" in stages["infer"] and "infer" not in stages["train"]  # infer reads what train wrote


def test_no_module_imports_a_private_name_of_another():
    private = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in MODULES and node.module != name:
                private += [f"{name}: {node.module}.{a.name}" for a in node.names
                            if a.name.startswith("_") and not a.name.startswith("__")]
    assert not private, private


def test_the_model_never_imports_ray_or_torch_distributed():
    model = [m for m in MODULES if m == "raylm.model" or m.startswith("raylm.model.")]
    assert "raylm.model.transformer" in model
    direct = []
    for m in model:
        for node in ast.walk(ast.parse(MODULES[m].read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            direct += [f"{m}: {n}" for n in names if n == "ray" or n.startswith(("ray.", "torch.distributed"))]
    assert not direct, direct
    # nor through what it imports: a fresh interpreter imports every model module and has no Ray
    code = ("import importlib, sys\n"
            f"for m in {model!r}: importlib.import_module(m)\n"
            "print(sorted(k for k in sys.modules if k == 'ray' or k.startswith('ray.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=ROOT.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_is_a_folder_with_a_test_folder(stage):
    assert (ROOT / stage / "__init__.py").is_file()
    assert (ROOT.parent / "tests" / stage).is_dir()
