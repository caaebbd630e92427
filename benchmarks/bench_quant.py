"""Quantized members against the unquantized one: accuracy, memory, CPU decode speed.

Accuracy (teacher-forced over one text, every position): max |delta logprob|, mean KL(ref ||
quantized) and greedy-token agreement, for int8 and int4 (each group size, symmetric and
with zero points) weights, GPTQ / AWQ checkpoints (quantized and packed by auto-gptq and
autoawq themselves, benchmarks/make_quant_checkpoints.py, when installed), and int8 / fp8 KV
caches; and the perplexity of the text under each setting.
On ../shared/models/stories260K the text is its own 200-token greedy continuation (the
reference file); random members of real shapes score a random token sequence.
Memory: weight bytes as allocated and KV bytes per token / tokens per page per setting, and
the peak RSS of a process loading a larger float checkpoint at each precision.
Speed: a CPU decode step at each weight precision (interleaved repeats, median), and one
decoder layer's linears alone at 1, 4 and 16 rows (best of the repeats).

  python benchmarks/bench_quant.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from blendrt import EngineConfig, load_model
from blendrt.bench.shapes import make_shape_member
from blendrt.engine.engine import LLMEngine
from blendrt.engine.loop import run_in_fresh_thread
from blendrt.ops.cpu.linear import PackedLinear
from blendrt.ops.quant_linear import QuantLinear
from blendrt.sampling import SamplingParams

LINEARS = (torch.nn.Linear, PackedLinear, QuantLinear)

STORIES = Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K"
WEIGHTS = ("int8", "int4-g32", "int4-g64", "int4-g128", "int4-g32-zp", "int4-g128-zp")
KV = ("int8", "fp8_e4m3")
SHAPES = ("llama-3.2-1b:32:8", "gpt-j-6b:64:14", "llama-3.2-1b:8:4")


def score(model, ids: list[int], kv_cache_dtype: str = "auto") -> torch.Tensor:
    """log-softmax [N, V] of the model at every position, through a one-member engine."""
    config = EngineConfig(device="cpu", kv_cache_dtype=kv_cache_dtype, num_pages=len(ids) + 4)
    engine = LLMEngine({"m": model}, config)
    request = engine.add_score_request("m", ids)
    while True:
        for out in engine.step():
            if out.request_id == request.request_id and out.finished:
                return out.prompt_logprobs


def compare(ref: torch.Tensor, got: torch.Tensor, ids: list[int]) -> dict:
    kl = (ref.exp() * (ref - got)).sum(-1)
    nll = -got[:-1].gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1)
    return {
        "max_abs_dlogprob": (got - ref).abs().max().item(),
        "mean_kl": kl.mean().item(),
        "greedy_agreement": (got.argmax(-1) == ref.argmax(-1)).float().mean().item(),
        "perplexity": nll.mean().exp().item(),
    }


def accuracy(folder: Path, ids: list[int]) -> dict:
    ref_model = load_model(folder)
    ref = score(ref_model, ids)
    rows = {"fp32": compare(ref, ref, ids) | {"weight_bytes": ref_model.weight_bytes}}
    for scheme in WEIGHTS:
        model = load_model(folder, quantization=scheme)
        rows[scheme] = compare(ref, score(model, ids), ids) | {"weight_bytes": model.weight_bytes}
    for kv in KV:
        rows[f"kv {kv}"] = compare(ref, score(ref_model, ids, kv), ids)
    return rows


def kv_figures(folder: Path) -> dict:
    model = load_model(folder)
    out = {}
    for kv in ("auto", *KV):
        engine = LLMEngine({"m": model}, EngineConfig(device="cpu", kv_cache_dtype=kv, num_pages=4))
        view = engine.kv.views["m"]
        out[kv] = {"bytes_per_token": view.geometry.bytes_per_token,
                   "tokens_per_page": view.tokens_per_page}  # fmt: skip
    return out


LOAD = """
import sys, threading, time
def anon():  # resident anonymous memory (not the checkpoint's memory-mapped pages)
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
import torch, blendrt.models.loaded
peak, base, done = [0], anon(), threading.Event()
def watch():
    while not done.is_set():
        peak[0] = max(peak[0], anon())
        time.sleep(0.002)
threading.Thread(target=watch, daemon=True).start()
from blendrt import load_model
t = time.perf_counter()
m = load_model(sys.argv[1], quantization=None if sys.argv[2] == "fp32" else sys.argv[2])
seconds = time.perf_counter() - t
done.set()
print(max(peak[0], anon()) - base, anon() - base, m.weight_bytes, seconds)
"""


def load_rss(folder: Path, scheme: str) -> dict:
    """Anonymous resident memory a process gains while loading (peak, and after), beyond
    what it held before; mapped checkpoint pages are not counted (they are page cache)."""
    out = subprocess.run([sys.executable, "-c", LOAD, str(folder), scheme], check=True,
                         capture_output=True, text=True).stdout.split()  # fmt: skip
    return {"peak_anon_bytes": int(out[0]), "after_anon_bytes": int(out[1]),
            "weight_bytes": int(out[2]), "seconds": float(out[3])}  # fmt: skip


def decode_ms(folder: Path, scheme: str, seqs: int, steps: int) -> float:
    def run() -> float:
        model = load_model(folder, quantization=None if scheme == "fp32" else scheme)
        engine = LLMEngine({"m": model}, EngineConfig(device="cpu"))
        params = SamplingParams(temperature=0, max_tokens=steps + 16, ignore_eos=True)
        for i in range(seqs):
            engine.add_request("m", [1 + i, 2, 3, 4, 5, 6, 7, 8], params)
        for _ in range(8):
            engine.step()
        start = time.perf_counter()
        for _ in range(steps):
            engine.step()
        return 1e3 * (time.perf_counter() - start) / steps

    return run_in_fresh_thread(run)


def linear_us(folder: Path, scheme: str, tokens: int, repeats: int) -> float:
    """Microseconds for all of one decoder layer's linears at `tokens` rows (best of
    `repeats` timings of 100 calls): the bytes-read part of a decode step, without the rest."""

    def run() -> float:
        model = load_model(folder, quantization=None if scheme == "fp32" else scheme)
        layer = model.model.layers[0]
        linears = [m for m in layer.modules() if isinstance(m, LINEARS)]
        xs = [torch.randn(tokens, m.in_features) for m in linears]
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(100):
                for m, x in zip(linears, xs, strict=True):
                    m(x)
            best = min(best, (time.perf_counter() - start) / 100 * 1e6)
        return best

    return run_in_fresh_thread(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speed-shape", default="vicuna-13b:8:8", help="member for speed/RSS")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report: dict = {"accuracy": {}, "kv": {}}
    root = Path(tempfile.mkdtemp(prefix="bench-quant-"))
    if STORIES.is_dir():
        model = load_model(STORIES)
        text = (STORIES / "expected_greedy_t0_n200.txt").read_text()
        ids = [1, *model.tokenizer.encode(text, add_special_tokens=False)[:200]]
        report["accuracy"]["stories260K"] = rows = accuracy(STORIES, ids)
        try:  # real GPTQ and AWQ checkpoints, made by their libraries' own code
            from make_quant_checkpoints import LibraryMissing, make_all
        except ImportError:
            LibraryMissing, make_all = RuntimeError, None
        try:
            folders = make_all(STORIES, root / "checkpoints", group_size=32) if make_all else {}
        except LibraryMissing as e:
            print(f"GPTQ/AWQ checkpoints skipped: {e}")
            folders = {}
        ref = score(load_model(STORIES), ids)
        for name, folder in folders.items():
            packed = load_model(folder)
            figures = compare(ref, score(packed, ids), ids)
            rows[name] = figures | {"weight_bytes": packed.weight_bytes}
        report["kv"]["stories260K"] = kv_figures(STORIES)
    for seed, shape in enumerate(SHAPES):
        folder = root / shape.replace(":", "-")
        run_in_fresh_thread(lambda f=folder, s=shape, k=seed: make_shape_member(s, f, seed=k))
        ids = torch.randint(3, 1000, (160,), generator=torch.Generator().manual_seed(seed))
        report["accuracy"][shape] = accuracy(folder, ids.tolist())
        report["kv"][shape] = kv_figures(folder)
    big = root / "speed"
    run_in_fresh_thread(lambda: make_shape_member(args.speed_shape, big, seed=9))
    report["load"] = {s: load_rss(big, s) for s in ("fp32", "int8", "int4-g128")}
    times: dict[str, list[float]] = {s: [] for s in ("fp32", "int8", "int4-g128")}
    for _ in range(args.repeats):
        for s in times:
            times[s].append(decode_ms(big, s, 4, args.steps))
    report["decode_ms"] = {s: {"median": statistics.median(t), "runs": t} for s, t in times.items()}
    report["layer_linears_us"] = {
        s: {t: linear_us(big, s, t, args.repeats) for t in (1, 4, 16)} for s in times
    }
    report["speed_shape"] = args.speed_shape
    for name, rows in report["accuracy"].items():
        print(f"\n{name}: setting, max|dlogprob|, mean KL, greedy agreement, perplexity, MiB")
        for setting, r in rows.items():
            mib = f"{r['weight_bytes'] / 2**20:.2f}" if "weight_bytes" in r else ""
            print(f"  {setting:<14} {r['max_abs_dlogprob']:8.4f} {r['mean_kl']:10.2e} "
                  f"{r['greedy_agreement']:7.3f} {r['perplexity']:9.3f} {mib}")  # fmt: skip
    print("\nKV bytes per token / tokens per page:", json.dumps(report["kv"]))
    print("loading", args.speed_shape, json.dumps(report["load"]))
    print("decode ms per step (4 seqs):", json.dumps(report["decode_ms"]))
    print("one layer's linears, us by rows:", json.dumps(report["layer_linears_us"]))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
