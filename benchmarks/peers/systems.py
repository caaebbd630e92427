"""Starting, probing and stopping the two systems: one `blendrt serve` for the blend, or one
`llama-server` per member, each a child process on loopback.

Peak memory is the sum of the processes' VmHWM (peak resident set) read from /proc at the
end of a run: the servers are all up the whole run, so it bounds their joint peak.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from peers.members import Member


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen
    log: Path

    def peak_rss_bytes(self) -> int:
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return 0
        line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024


@dataclass
class System:
    """One system under test: its servers and where each member is reached."""

    name: str
    servers: list[Server]
    endpoints: dict[str, tuple[str, str]]  # {member: (base url, model field)}
    notes: list[str] = field(default_factory=list)

    def peak_rss_bytes(self) -> int:
        return sum(s.peak_rss_bytes() for s in self.servers)

    def stop(self) -> None:
        for s in self.servers:
            if s.process.poll() is None:
                s.process.send_signal(signal.SIGTERM)
        for s in self.servers:
            try:
                s.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                s.process.kill()
                s.process.wait()


def _spawn(name: str, cmd: list[str], port: int, logs: Path) -> Server:
    with socket.socket() as probe:  # another process on the port would answer for us
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            sys.exit(f"port {port} is in use; pass another --port")
    log = logs / f"{name}.log"
    with log.open("w") as f:
        process = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
    return Server(name, f"http://127.0.0.1:{port}", process, log)


def _wait_ready(servers: list[Server], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    for s in servers:
        while True:
            if s.process.poll() is not None:
                sys.exit(f"{s.name} exited at start; its log:\n{s.log.read_text()[-3000:]}")
            try:
                if httpx.get(s.url + "/health", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                sys.exit(f"{s.name} not ready after {timeout:.0f} s; log: {s.log}")
            time.sleep(0.25)


def start_blendrt(
    members: list[Member], template: Path, port: int, logs: Path, kv_cache_bytes: int | None
) -> System:
    cmd = [sys.executable, "-m", "blendrt", "serve", "--device", "cpu", "--port", str(port)]
    for m in members:
        cmd += ["--member", f"{m.name}={m.folder}", "--chat-template", f"{m.name}={template}"]
    if kv_cache_bytes is not None:
        cmd += ["--kv-cache-bytes", str(kv_cache_bytes)]
    server = _spawn("blendrt", cmd, port, logs)
    system = System("blendrt", [server], {m.name: (server.url, m.name) for m in members})
    _wait_ready(system.servers)
    return system


def start_llama_servers(
    binary: Path,
    members: list[Member],
    template: Path,
    first_port: int,
    logs: Path,
    *,
    ctx: int,
    slots: int,
    cache_ram_mib: int | None,
) -> System:
    """One server per member, one thread each (-t 1 -tb 1: ggml's spinning threads collapse
    when oversubscribed), float32 weights and KV, `slots` parallel slots sharing one unified
    KV buffer of `ctx` tokens; cache_ram_mib None keeps llama-server's default prompt cache
    in host RAM."""
    servers, endpoints = [], {}
    for i, m in enumerate(members):
        port = first_port + i
        cmd = [
            str(binary), "-m", str(m.gguf), "--host", "127.0.0.1", "--port", str(port),
            "-t", "1", "-tb", "1", "-np", str(slots), "-kvu", "-c", str(ctx),
            "-ctk", "f32", "-ctv", "f32", "--jinja", "--chat-template-file", str(template),
            "--override-kv", "tokenizer.ggml.add_bos_token=bool:false", "--no-webui",
        ]  # fmt: skip
        if cache_ram_mib is not None:
            cmd += ["--cache-ram", str(cache_ram_mib)]
        servers.append(_spawn(f"llama-server-{m.name}", cmd, port, logs))
        endpoints[m.name] = (servers[-1].url, m.name)
    system = System("llama-servers", servers, endpoints)
    _wait_ready(servers)
    return system


def prompt_ids(system: System, member: str, messages: list[dict]) -> list[int]:
    """The token ids the system's server for `member` prefills for this conversation."""
    url, model = system.endpoints[member]
    if system.name == "blendrt":
        body = {"model": model, "messages": messages, "add_generation_prompt": True}
        return httpx.post(url + "/tokenize", json=body).raise_for_status().json()["tokens"]
    prompt = httpx.post(url + "/apply-template", json={"messages": messages})
    body = {"content": prompt.raise_for_status().json()["prompt"], "add_special": True,
            "parse_special": True}  # fmt: skip
    return httpx.post(url + "/tokenize", json=body).raise_for_status().json()["tokens"]


def check_same_prompt(systems: list[System], members: list[Member]) -> None:
    """Both systems must prefill identical token ids for the same conversation."""
    messages = [
        {"role": "system", "content": "You are Sam. You like tea and long walks."},
        {"role": "user", "content": "Hello there, how was the weekend?"},
        {"role": "assistant", "content": "Good! We went to the sea."},
        {"role": "user", "content": "Nice. What did you eat?"},
    ]
    for m in members:
        ids = [prompt_ids(s, m.name, messages) for s in systems]
        if any(x != ids[0] for x in ids):
            sys.exit(f"member {m.name}: the systems tokenize the same chat differently: {ids}")
