"""A blend of two tiny members served over real HTTP on an ephemeral loopback port."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from checkpoints import make_checkpoint

from blendrt import Blend, EngineConfig, Member

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

API_KEY = "test-key-123"


@dataclass
class Served:
    blend: Blend
    base_url: str  # http://127.0.0.1:PORT


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from blendrt.server.app import create_app

    root = tmp_path_factory.mktemp("members")
    make_checkpoint(root / "ann", "GPTJConfig", seed=1, context=1024)
    make_checkpoint(root / "vic", "LlamaConfig", seed=2, context=1024)
    members = [
        Member("ann", root / "ann", chat_format="pygmalion", chat_options={"bot_name": "Ann"}),
        Member("vic", root / "vic", chat_format="vicuna"),
    ]
    blend = Blend(members, seed=0, config=EngineConfig(device="cpu", num_pages=512))
    app = create_app(blend, api_key=API_KEY, max_in_flight=64, max_body_bytes=64 * 1024)
    with run_server(app) as base_url:
        yield Served(blend, base_url)
    blend.close()


@contextlib.contextmanager
def run_server(app: object) -> Iterator[str]:
    """Serves app with uvicorn on an ephemeral loopback port; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def wait_idle(blend: Blend, timeout: float = 10.0) -> dict:
    """Stats once no request is running or waiting (aborts land within a step)."""
    deadline = time.monotonic() + timeout
    while True:
        stats = blend.stats()
        idle = stats["requests_running"] + stats["requests_waiting"] == 0
        if idle or time.monotonic() > deadline:
            return stats
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_subprocess(port: int, *flags: str) -> subprocess.Popen:
    """`blendrt serve` (the demo blend unless flags say otherwise) in its own process, as a
    user runs it; returns once /health answers."""
    import httpx

    args = ["serve", "--seed", "0", "--port", str(port), "--log-level", "warning", *flags]
    code = f"import sys; from blendrt.cli import main; sys.exit(main({args!r}))"
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
        if proc.poll() is not None:
            raise AssertionError(f"the server exited: {proc.stderr.read()}")
    proc.kill()
    raise AssertionError("the server did not start")
