"""The import graph says what the README's diagram says: layers, top to bottom, no module
importing a layer above its own, no import cycle, and a low layer importable alone (checked
on the code's own imports, every one of them: module level, in functions, for type checks)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import blendrt

PACKAGE = Path(blendrt.__file__).parent

#: Top to bottom: a module may import its own layer and the ones below it. The longest
#: matching prefix decides a module's layer.
LAYERS = [
    (
        "apps",
        [
            "blendrt.__main__",
            "blendrt.cli",
            "blendrt.server",
            "blendrt.bench",
            "blendrt.demo",
            "blendrt.ray_serve",
        ],
    ),
    ("blend", ["blendrt.blend", "blendrt.blend_stream"]),
    (
        "turns",
        [
            "blendrt.prepare",
            "blendrt.truncation",
            "blendrt.turn",
            "blendrt.policy",
            "blendrt.reward",
        ],
    ),
    ("engine", ["blendrt.engine", "blendrt.plan", "blendrt.plan_search"]),
    (
        "scheduler",
        [
            "blendrt.engine.scheduler",
            "blendrt.engine.kv_layout",
            "blendrt.engine.request",
            "blendrt.engine.output",
        ],
    ),
    ("runner", ["blendrt.models.runner"]),
    ("model", ["blendrt.models"]),
    ("ops", ["blendrt.ops"]),
    ("cache", ["blendrt.cache"]),
    (
        "base",
        [
            "blendrt.tokenizer",
            "blendrt.sampling",
            "blendrt.config",
            "blendrt._core",
            "blendrt._lazy",
        ],
    ),
]
#: Package faces map names to every layer lazily (their imports are for type checkers).
FACES = {"blendrt", "blendrt.cache", "blendrt.models"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules `path` imports (a `from pkg import name` that names a module
    counts as importing that module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("blendrt")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("blendrt"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
    return {m for m in found if m in modules or m == "blendrt._core"}


def layer_of(module: str) -> int:
    best, index = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, index = len(prefix), i
    assert index is not None, f"{module} is in no layer: add it to LAYERS"
    return index


def graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports(path, modules) - {name} for name, path in modules.items()}


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = []
    for module, deps in graph().items():
        if module in FACES:
            continue
        for dep in deps - FACES:
            if layer_of(dep) < layer_of(module):
                upward.append(
                    f"{module} ({LAYERS[layer_of(module)][0]}) imports {dep} "
                    f"({LAYERS[layer_of(dep)][0]})"
                )
    assert not upward, "\n".join(upward)


def test_there_is_no_import_cycle() -> None:
    edges = {
        m: {d for d in deps if d not in FACES} for m, deps in graph().items() if m not in FACES
    }
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(edges.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*path[path.index(dep) :], dep]))
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize(
    ("module", "must_not_load"),
    [
        ("blendrt", ["torch", "blendrt._core", "blendrt.tokenizer"]),
        ("blendrt.policy", ["torch", "blendrt._core", "blendrt.tokenizer"]),
        ("blendrt.config", ["blendrt.ops", "blendrt.models", "blendrt.cache"]),
        ("blendrt.cache.manager", ["blendrt.models", "blendrt.tokenizer", "blendrt.engine"]),
        ("blendrt.cache.pool", ["blendrt._core", "blendrt.models", "blendrt.tokenizer"]),
        ("blendrt.sampling", ["blendrt.engine", "blendrt.models", "blendrt.cache"]),
        ("blendrt.tokenizer.chat_format", ["torch", "blendrt.models", "blendrt.engine"]),
        ("blendrt.ops.registry", ["blendrt.models", "blendrt.engine", "blendrt.tokenizer"]),
        ("blendrt.engine.scheduler", ["blendrt.models", "blendrt.tokenizer.chat_format"]),
    ],
)
def test_a_low_layer_imports_alone(module: str, must_not_load: list[str]) -> None:
    code = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    for name in must_not_load:
        assert not [m for m in loaded if m == name or m.startswith(name + ".")], (module, name)
