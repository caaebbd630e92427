"""The OpenAPI schema tells the truth: schemathesis fuzzes every operation of a live server
on the demo blend (a few hundred examples each, bounded in time) and finds no server error,
no undocumented status code or content type, no response off its schema, no schema-violating
request accepted, no unsupported method answered without Allow.

Not checked: that every schema-valid request is accepted (positive_data_acceptance). A
request's fit depends on things JSON Schema cannot say (the prompt's length in the chosen
member's tokens against its window, token ids against its vocabulary): those are 400s."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port, serve_subprocess

CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_schema_conformance,response_headers_conformance,negative_data_rejection,"
    "unsupported_method"
)
EXAMPLES = 200  # per operation and phase


def test_the_schema_survives_fuzzing(capsys) -> None:
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    if st is None:
        pytest.skip("schemathesis is not installed (pip install -e '.[test]')")
    port = free_port()
    proc = serve_subprocess(port, "--default-max-tokens", "16")
    try:
        run = subprocess.run(
            [
                st, "run", f"http://127.0.0.1:{port}/openapi.json", "--checks", CHECKS,
                "--max-examples", str(EXAMPLES), "--request-timeout", "60", "--no-color",
                "--seed", "1",
            ],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    summary = [line for line in run.stdout.splitlines() if "generated" in line or "issues" in line]
    with capsys.disabled():
        print("\nschemathesis:", "; ".join(s.strip() for s in summary))
    assert run.returncode == 0, run.stdout[-6000:]
    assert "No issues found" in run.stdout
