"""A fresh install has only blendrt's runtime dependencies: every module and subcommand must
work with nothing else. The test venv also holds the test extra (transformers, openai, ...),
so the tests run Python without its site-packages (-S) over a folder of links to just the
distributions in the runtime dependency closure that the installed metadata declares, as a
fresh `pip install .` would have; then import the whole package and run `blendrt chat`,
`blendrt bench` and `blendrt serve --help` there.

CI also runs the README's main command in a truly fresh virtual environment (.ci/run)."""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import blendrt

REPO = Path(blendrt.__file__).resolve().parents[1]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_closure(root: str) -> set[str]:
    """Distributions `pip install root` brings: its requirements without extras, and theirs."""
    allowed: set[str] = set()
    todo = [root]
    while todo:
        name = _canonical(todo.pop())
        if name in allowed:
            continue
        allowed.add(name)
        for spec in md.requires(name) or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return allowed


@pytest.fixture(scope="module")
def runtime_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding links to the files of the runtime closure's distributions only."""
    shadow = tmp_path_factory.mktemp("runtime-site")
    for name in sorted(runtime_closure("blendrt") - {"blendrt"}):
        dist = md.distribution(name)
        tops = {Path(str(f)).parts[0] for f in dist.files or ()}
        for top in tops - {"..", "__pycache__"}:
            source = Path(str(dist.locate_file(top)))
            if source.exists() and not (shadow / top).exists() and not top.endswith(".pth"):
                (shadow / top).symlink_to(source)
    return shadow


def run_runtime_only(shadow: Path, code: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{shadow}{os.pathsep}{REPO}"}
    return subprocess.run(
        [sys.executable, "-S", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=shadow,
    )


def test_the_runtime_folder_lacks_what_only_the_test_extra_installs(runtime_only) -> None:
    assert {"torch", "protobuf", "tokenizers", "fastapi"} <= runtime_closure("blendrt")
    done = run_runtime_only(
        runtime_only,
        """
        import torch  # a runtime dependency is there
        for name in ("transformers", "openai", "hypothesis", "pytest"):
            try:
                __import__(name)
            except ModuleNotFoundError:
                print("absent", name)
            else:
                raise SystemExit(f"{name} imported: the folder is not runtime-only")
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[1::2] == ["transformers", "openai", "hypothesis", "pytest"]


def test_every_module_imports_with_runtime_dependencies_only(runtime_only) -> None:
    done = run_runtime_only(
        runtime_only,
        """
        import importlib
        import pkgutil

        import blendrt

        names = [m.name for m in pkgutil.walk_packages(blendrt.__path__, "blendrt.")]
        for name in names:
            importlib.import_module(name)
        print(len(names), "modules")
        """,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split()[0]) > 40


def test_every_subcommand_runs_with_runtime_dependencies_only(runtime_only) -> None:
    done = run_runtime_only(
        runtime_only,
        """
        from blendrt.cli import main

        assert main(["chat", "--seed", "0", "--sampling-seed", "0", "--say", "Hello!"]) == 0
        assert main(
            ["bench", "--conversations", "2", "--turns", "2", "--max-tokens", "4",
             "--systems", "blendrt,transformers", "--capacity-weights", ""]
        ) == 0
        try:
            main(["serve", "--help"])
        except SystemExit as e:
            assert e.code == 0
        """,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "you> Hello!"
    assert lines[1].split("> ", 1)[0] in ("ann", "bob", "vic") and lines[1].split("> ", 1)[1]
    assert "skipping (d) transformers: it is not installed" in done.stderr
    assert "--served-model-name" in done.stdout
