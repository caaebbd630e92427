"""Host overhead of a decode step: where a step's time goes outside the members' arithmetic.

Three members (random Llama weights of one real shape scaled down, so the arithmetic is small
and what remains is the engine's own work), N running sequences per member, all decoding
(prompts prefilled first, EOS ignored). Each phase is timed by wrapping the function that owns
it, so the same script measures any revision of the engine:

  schedule      Scheduler.schedule (admission, KV bookkeeping, batch metadata in the core)
  metadata      the runner turning that metadata into device tensors
  forward       the model's forward, outside its GEMMs and attention kernels
  arithmetic    inside the linear layers (GEMMs) and the attention/store kernels
  sampling      logits to tokens (sample_isolated)
  update        Scheduler.update (tokens appended, pages committed)
  detok/stops   RequestTracker.append (detokenize, stop checks, the output)
  engine rest   the rest of LLMEngine.step
  loop hand-off EngineLoop and the blend's async streams: outputs from the engine thread
                to an asyncio loop on the main thread, as the server reads them (that
                run's wall per step minus the engine-only step)
  server        the HTTP layer streaming every token as server-sent events to a client in
                another process: the CPU time of the server's event-loop thread per step,
                minus the loop run's consumer CPU (not wall time: the client shares these
                cores, which a real one would not)

"host overhead" is everything but arithmetic. Prints ms per step by phase for each N.

  python benchmarks/bench_host_overhead.py --seqs 1 8 32
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import blendrt._core as _core
import numpy as np
import torch

import blendrt.engine.engine as engine_module
from blendrt import Blend, EngineConfig, Member, load_model
from blendrt.bench.shapes import make_shape_member
from blendrt.engine.engine import LLMEngine
from blendrt.engine.scheduler import Scheduler
from blendrt.engine.tracker import RequestTracker
from blendrt.models.runner import ModelRunner
from blendrt.sampling import SamplingParams

PHASES = ("schedule", "metadata", "forward", "arithmetic", "sampling", "update", "detok/stops",
          "engine rest", "loop hand-off", "server")  # fmt: skip
PROMPT_TOKENS = 128


class Timers:
    """Exclusive time per phase: a phase entered inside another is subtracted from it."""

    def __init__(self) -> None:
        self.total: dict[str, float] = defaultdict(float)
        self._stack: list[list] = []  # [phase, start, time of nested phases]
        self.enabled = False

    def wrap(self, phase: str, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if not self.enabled:
                return fn(*args, **kwargs)
            frame = [phase, time.perf_counter(), 0.0]
            self._stack.append(frame)
            try:
                return fn(*args, **kwargs)
            finally:
                self._stack.pop()
                spent = time.perf_counter() - frame[1]
                self.total[phase] += spent - frame[2]
                if self._stack:
                    self._stack[-1][2] += spent

        return timed


@contextlib.contextmanager
def patched(obj, name: str, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def instrument(engine: LLMEngine, timers: Timers) -> contextlib.ExitStack:
    """Wraps every phase's owner; undone when the returned stack closes."""
    stack = contextlib.ExitStack()
    classes = [
        (Scheduler, "schedule", "schedule"), (Scheduler, "update", "update"),
        (RequestTracker, "append", "detok/stops"), (ModelRunner, "forward", "forward"),
        (LLMEngine, "step", "engine rest"),
    ]  # fmt: skip
    for cls, name, phase in classes:
        stack.enter_context(patched(cls, name, timers.wrap(phase, getattr(cls, name))))
    for name in ("attention_metadata", "_to_device", "prepare", "prepare_inputs"):
        if hasattr(ModelRunner, name):
            stack.enter_context(
                patched(ModelRunner, name, timers.wrap("metadata", getattr(ModelRunner, name)))
            )
    stack.enter_context(
        patched(
            engine_module, "sample_isolated", timers.wrap("sampling", engine_module.sample_isolated)
        )
    )
    for runner in engine.runners.values():
        for module in runner.model.modules():
            if isinstance(module, torch.nn.Linear) or hasattr(module, "packed_weight"):
                stack.enter_context(
                    patched(module, "forward", timers.wrap("arithmetic", module.forward))
                )
    for name in ("paged_attention_cpu", "store_kv_cpu"):  # the kernels themselves
        stack.enter_context(patched(_core, name, timers.wrap("arithmetic", getattr(_core, name))))
    return stack


def make_members(folder: Path, shape: str) -> dict[str, Path]:
    paths = {}
    for seed, name in enumerate(("ann", "bea", "cat")):
        paths[name] = folder / name
        make_shape_member(shape, paths[name], seed=seed)
    return paths


def decode_params(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0.8, max_tokens=max_tokens, ignore_eos=True)


def prompts(members: list[str], seqs: int, seed: int) -> list[tuple[str, list[int]]]:
    rng = np.random.default_rng(seed)
    return [
        (m, rng.integers(3, 1000, PROMPT_TOKENS).tolist()) for m in members for _ in range(seqs)
    ]


def in_fresh_thread(fn):
    out: list = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    thread.join()
    return out[0]


def engine_phases(paths: dict[str, Path], seqs: int, steps: int) -> dict[str, float]:
    """ms per decode step by phase, the engine driven directly (from a thread of its own,
    as EngineLoop drives it)."""
    return in_fresh_thread(lambda: _engine_phases(paths, seqs, steps))


def _engine_phases(paths: dict[str, Path], seqs: int, steps: int) -> dict[str, float]:
    engine = LLMEngine({n: load_model(p) for n, p in paths.items()}, EngineConfig(device="cpu"))
    for member, ids in prompts(list(paths), seqs, 0):
        engine.add_request(member, ids, decode_params(steps + 64))
    while any(r.num_computed_tokens < r.num_prompt_tokens for r in engine.requests.values()):
        engine.step()
    for _ in range(16):  # warm up
        engine.step()
    timers = Timers()
    with instrument(engine, timers):
        timers.enabled = True
        start = time.perf_counter()
        for _ in range(steps):
            engine.step()
        wall = time.perf_counter() - start
    out = {phase: 1e3 * t / steps for phase, t in timers.total.items()}
    out["step"] = 1e3 * wall / steps
    return out


class StepClock:
    """Inclusive time in LLMEngine.step and the number of steps, while installed."""

    def __init__(self) -> None:
        self.seconds, self.steps = 0.0, 0

    def wrap(self, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self.steps += 1

        return timed


def window(clock: StepClock, seconds: float) -> tuple[float, float]:
    """(ms of wall per step, ms in engine.step per step) over the next `seconds`."""
    s0, n0, t0 = clock.seconds, clock.steps, time.perf_counter()
    time.sleep(seconds)
    s1, n1, t1 = clock.seconds, clock.steps, time.perf_counter()
    return 1e3 * (t1 - t0) / (n1 - n0), 1e3 * (s1 - s0) / (n1 - n0)


def loop_hand_off(paths: dict[str, Path], seqs: int, seconds: float) -> tuple[float, float, float]:
    """(wall ms per step, engine.step ms per step, consumer-thread CPU ms per step): the
    blend's async streams read by an asyncio loop on the main thread, as the server reads
    them, without HTTP."""
    clock = StepClock()
    with patched(LLMEngine, "step", clock.wrap(LLMEngine.step)):
        members = [Member(n, p, chat_format="vicuna") for n, p in paths.items()]
        blend = Blend(members, config=EngineConfig(device="cpu"), progress=False)

        async def consume(stream) -> None:
            async for _ in stream.outputs():
                pass

        async def main() -> tuple[float, float, float]:
            params = decode_params(4000 - PROMPT_TOKENS)
            turns = [
                blend.prepare_prompt(m, ids, params) for m, ids in prompts(list(paths), seqs, 0)
            ]
            tasks = [asyncio.ensure_future(consume(blend.stream_turn(t))) for t in turns]
            while blend.engine.counters.generated_tokens < 16 * len(turns):
                await asyncio.sleep(0.05)
            s0, n0, t0 = clock.seconds, clock.steps, time.perf_counter()
            c0 = time.thread_time()  # this (the consumer's) thread's CPU time
            await asyncio.sleep(seconds)
            s1, n1, t1 = clock.seconds, clock.steps, time.perf_counter()
            consumer_cpu = 1e3 * (time.thread_time() - c0) / (n1 - n0)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            return 1e3 * (t1 - t0) / (n1 - n0), 1e3 * (s1 - s0) / (n1 - n0), consumer_cpu

        try:
            return asyncio.run(main())
        finally:
            blend.close()


CLIENT = """
import asyncio, json, sys, httpx
url, bodies = sys.argv[1], json.loads(sys.argv[2])
async def one(client, body):
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        async for _ in r.aiter_raw():
            pass
async def main():
    async with httpx.AsyncClient(timeout=None, limits=httpx.Limits(max_connections=1000)) as c:
        await asyncio.gather(*(one(c, b) for b in bodies))
asyncio.run(main())
"""


def served(paths: dict[str, Path], seqs: int, seconds: float) -> tuple[float, float, float]:
    """(wall ms per step, engine.step ms per step, server-thread CPU ms per step), streaming
    every token over HTTP to a client process."""
    import uvicorn

    from blendrt.server.app import create_app

    clock = StepClock()
    with patched(LLMEngine, "step", clock.wrap(LLMEngine.step)):
        members = [Member(n, p, chat_format="vicuna") for n, p in paths.items()]
        blend = Blend(members, config=EngineConfig(device="cpu"), progress=False)
        app = create_app(blend, max_in_flight=10_000)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        bodies = [
            {"model": member, "prompt": ids, "max_tokens": 4000 - PROMPT_TOKENS,
             "ignore_eos": True, "temperature": 0.8, "stream": True}
            for member, ids in prompts(list(paths), seqs, 0)
        ]  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        client = subprocess.Popen([sys.executable, "-c", CLIENT, url, json.dumps(bodies)])
        try:
            while blend.engine.counters.generated_tokens < 16 * len(bodies):
                time.sleep(0.05)
            cpu = time.pthread_getcpuclockid(thread.ident)  # the server thread's CPU clock
            c0, n0 = time.clock_gettime(cpu), clock.steps
            wall, engine = window(clock, seconds)
            server_cpu = 1e3 * (time.clock_gettime(cpu) - c0) / (clock.steps - n0)
            return wall, engine, server_cpu
        finally:
            client.kill()
            client.wait()
            server.should_exit = True
            thread.join(timeout=30)
            blend.close()


def run_one(kind: str, members: Path, seqs: int, args: argparse.Namespace) -> dict:
    """One measurement in a fresh process: no thread pool, cache or allocator state of an
    earlier one (OpenMP pools in particular) colours it."""
    cmd = [
        sys.executable, __file__, "--one", kind, "--members", str(members), "--seqs", str(seqs),
        "--shape", args.shape, "--steps", str(args.steps), "--seconds", str(args.seconds),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def one(args: argparse.Namespace) -> None:
    paths = {p.name: p for p in sorted(args.members.iterdir())}
    (seqs,) = args.seqs
    if args.one == "engine":
        result = engine_phases(paths, seqs, args.steps)
    elif args.one == "loop":
        wall, engine, consumer_cpu = loop_hand_off(paths, seqs, args.seconds)
        result = {"wall": wall, "engine": engine, "consumer_cpu": consumer_cpu}
    else:
        wall, engine, server_cpu = served(paths, seqs, args.seconds)
        result = {"wall": wall, "engine": engine, "server_cpu": server_cpu}
    print(json.dumps(result))


def measure(members: Path, seqs: int, args: argparse.Namespace) -> dict[str, float]:
    runs = [run_one("engine", members, seqs, args) for _ in range(args.repeat)]
    phases = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in runs[0]}
    phases["step spread"] = max(r["step"] for r in runs) - min(r["step"] for r in runs)
    loop = [run_one("loop", members, seqs, args) for _ in range(args.repeat)]
    http = [run_one("http", members, seqs, args) for _ in range(args.repeat)]
    loop_wall = statistics.median(r["wall"] for r in loop)
    http_wall = statistics.median(r["wall"] for r in http)
    # NOTE: against the engine-only step, not the steps inside the loop run: a consumer
    # thread slows the engine's own step too (GIL hand-offs, cores shared with its OpenMP
    # workers), a cost of the hand-off.
    phases["loop hand-off"] = max(0.0, loop_wall - phases["step"])
    # The server thread's CPU beyond what the loop run's consumer spent reading the same
    # streams (that part is in the hand-off already).
    consumer = statistics.median(r["consumer_cpu"] for r in loop)
    phases["server"] = max(0.0, statistics.median(r["server_cpu"] for r in http) - consumer)
    phases["served step"] = http_wall
    phases["served spread"] = max(r["wall"] for r in http) - min(r["wall"] for r in http)
    phases["host overhead"] = sum(phases.get(p, 0.0) for p in PHASES if p != "arithmetic")
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqs", type=int, nargs="+", default=[1, 8, 32], help="per member")
    parser.add_argument("--shape", default="llama-3.2-1b:32:8", help="the members' shape")
    parser.add_argument("--steps", type=int, default=200, help="timed engine steps per repeat")
    parser.add_argument("--seconds", type=float, default=3.0, help="loop / HTTP window")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--one", choices=["engine", "loop", "http"], help=argparse.SUPPRESS)
    parser.add_argument("--members", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return one(args)
    members = Path(tempfile.mkdtemp(prefix="overhead-"))
    make_members(members, args.shape)
    results = {n: measure(members, n, args) for n in args.seqs}
    print(f"ms per decode step, 3 members x N sequences each ({args.shape}); "
          f"torch threads {torch.get_num_threads()}; median of {args.repeat}")  # fmt: skip
    rows = [*PHASES, "host overhead", "step", "step spread", "served step", "served spread"]
    print(f"{'phase':<16}" + "".join(f"{'N=' + str(n):>10}" for n in args.seqs))
    for row in rows:
        print(f"{row:<16}" + "".join(f"{results[n].get(row, 0.0):>10.3f}" for n in args.seqs))
    if args.json:
        config = {k: str(v) for k, v in vars(args).items() if k not in ("one", "members")}
        args.json.write_text(json.dumps({"args": config, "results": results}, indent=2))


if __name__ == "__main__":
    main()
