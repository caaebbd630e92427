"""GPTQ and AWQ 4-bit checkpoints of a float Hugging Face Llama folder, made by the libraries
that write them (auto-gptq 0.7.1, autoawq 0.2.9), for bench_quant.py and the loader's tests.

    python benchmarks/make_quant_checkpoints.py SRC OUT_DIR [--group-size 32] [--seed 0]
        [--score]

writes OUT_DIR/gptq, OUT_DIR/gptq-act-order and OUT_DIR/awq (any earlier ones replaced):
config.json with the quantization_config each library writes, model.safetensors, and the
tokenizer and generation files of SRC. --score then prints each against SRC, scored by
blendrt on SRC's expected_greedy_t0_n200.txt (max |delta logprob|, mean KL(ref || quant),
greedy agreement, perplexity).

Calibration: no data set is read. The float model (transformers' LlamaForCausalLM, CPU,
float32) samples 8 sequences of 128 tokens (BOS, then 127 tokens at temperature 1.0, no
top-k / top-p, torch.Generator seeded with --seed). The evaluation text
expected_greedy_t0_n200.txt is never used for calibration; --score alone reads it.

GPTQ: auto-gptq's own algorithm (auto_gptq/quantization/gptq.py: GPTQ.add_batch, fasterquant;
4 bits, symmetric, damp 0.01, blocksize 128, no static groups), driven as auto-gptq's
BaseGPTQForCausalLM.quantize drives it: layer by layer, true-sequential ([k, v, q], [o],
[up, gate], [down]), the Hessians of layer i taken from the outputs of layers 0..i-1 already
quantized (and, inside a layer, after the earlier sub-groups were quantized). Packed by the
QuantLinear auto-gptq's pack_model picks (dynamically_import_QuantLinear; on a machine
without its CUDA kernels qlinear_cuda_old, or qlinear_cuda for act-order): v1 format, zero - 1.
Two folders: desc_act false and true. quantization_config is auto-gptq 0.7.1's
BaseQuantizeConfig.to_dict() (which cannot be imported under transformers 5, so its fields
are written here) plus checkpoint_format "gptq", which later writers add.

AWQ: autoawq's AwqQuantizer (awq/quantize/quantizer.py) with LlamaAWQForCausalLM's scaling
groups and AutoAWQForCausalLM.quantize's defaults, run on the CPU in float32: activation-aware
scale search (duo scaling) and clipping search, then its _apply_quant (pseudo_quantize_tensor
in float16, WQLinear_GEMM.from_linear). As in autoawq, layer i's inputs are the float model's
(each layer's output is taken before that layer is scaled and quantized). Two adaptations to
the CPU and to small layers: autoawq's scale search restores the weights after each trial
from a state_dict snapshot taken with .cpu(), which copies only off the CPU, so on the CPU
the first trial's scaling stayed in the weights (on stories260K: mean KL 0.10 instead of
0.03); the snapshot is a copy here. And its clipping search takes 64 output rows at a time,
so a layer with fewer (v_proj, 32) is searched with zero rows appended, their results
dropped (each row's clip is searched on its own). quantization_config is autoawq's
AwqConfig.to_transformers_dict(): gemm, zero point.

Sizes: blendrt reads a layer only when its inputs are a multiple of the group size and its
outputs a multiple of 8; both libraries pack 32 inputs and 32 outputs at a time. An MLP width
that is not a multiple of lcm(group, 32) (stories260K: 172) is padded with zeros up to one
before quantizing (172 -> 192 for groups 32 and 64): zero gate/up rows and down columns, so
the padded float model computes the same logits (checked, and printed), and config.json's
intermediate_size is the padded width. GPTQ's group_size -1 would not help: blendrt carries
it as groups of 128 inputs, and stories260K's attention layers have 64; nor does group 128.

The libraries' package __init__ files import model classes transformers 5 no longer has, and
importing their modules patches torch and os.environ; so the work runs in a child process that
imports only the submodules it needs, its packages stubbed (as
tests/models/test_quant_checkpoints.py does).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

LIBRARIES = {  # import name: how to get it
    "auto_gptq": "pip install auto-gptq==0.7.1",
    "awq": "pip install autoawq==0.2.9",
}
BITS = 4
GROUP_SIZES = (32, 64, 128)
CALIB_SEQUENCES, CALIB_TOKENS = 8, 128
DAMP_PERCENT = 0.01
AWQ_SEARCH = {"duo_scaling": True, "apply_clip": True}  # AutoAWQForCausalLM.quantize's defaults
FOLDERS = ("gptq", "gptq-act-order", "awq")
# auto-gptq's LlamaGPTQForCausalLM.inside_layer_modules: quantized in this order
GPTQ_SEQUENTIAL = (
    ("self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj"),
    ("self_attn.o_proj",),
    ("mlp.up_proj", "mlp.gate_proj"),
    ("mlp.down_proj",),
)
COPIED = ("tokenizer*", "special_tokens_map.json", "added_tokens.json", "generation_config.json")
COPIED += ("vocab*", "merges.txt", "LICENSE*")
EVAL_TEXT = "expected_greedy_t0_n200.txt"
_SIZE_ERROR = 3  # the worker's exit status for sizes the formats cannot carry


class LibraryMissing(RuntimeError):
    """auto-gptq or autoawq is not installed."""


class _Sizes(ValueError):
    """A layer the formats cannot carry at the group size."""


def missing_libraries() -> list[str]:
    """Install commands of the libraries that are not installed."""
    return [cmd for name, cmd in LIBRARIES.items() if importlib.util.find_spec(name) is None]


def make_all(src: Path, out: Path, group_size: int = 32, seed: int = 0) -> dict[str, Path]:
    """Writes out/gptq, out/gptq-act-order and out/awq from the float folder src; returns
    {name: folder}. Raises LibraryMissing without the libraries, ValueError for sizes the
    formats cannot carry, RuntimeError if the child process fails."""
    src, out = Path(src).resolve(), Path(out).resolve()
    if missing := missing_libraries():
        raise LibraryMissing("quantization libraries not installed: " + "; ".join(missing))
    if group_size not in GROUP_SIZES:
        raise ValueError(f"group size {group_size}: choose one of {GROUP_SIZES}")
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src}: config.json not found")
    folders = {name: out / name for name in FOLDERS}
    for folder in folders.values():
        _clear(folder)
    args = [str(src), str(out), "--group-size", str(group_size), "--seed", str(seed)]
    cmd = [sys.executable, str(Path(__file__).resolve()), *args, "--worker"]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode == _SIZE_ERROR:
        raise ValueError(done.stderr.strip().splitlines()[-1])
    if done.returncode != 0:
        raise RuntimeError(f"quantizing {src} failed:\n{done.stderr[-4000:]}")
    print(done.stdout, end="")
    return folders


def _clear(folder: Path) -> None:
    """Removes an earlier output folder, only if it is one (a config.json that declares a
    quantization_config)."""
    if not folder.exists():
        return
    config = folder / "config.json"
    if not (config.is_file() and "quantization_config" in json.loads(config.read_text())):
        raise FileExistsError(f"{folder} exists and is not a quantized checkpoint; not replacing")
    shutil.rmtree(folder)


# ---- the child process: everything that imports torch, transformers and the libraries ------


def _stub_packages() -> None:
    """Lets the libraries' submodules import without their packages' __init__ files."""
    for name in (
        "auto_gptq",
        "auto_gptq.nn_modules",
        "auto_gptq.nn_modules.qlinear",
        "auto_gptq.utils",
        "awq",
        "awq.models",
    ):
        if name in sys.modules:
            continue
        parent, _, leaf = name.rpartition(".")
        if parent:
            path = [f"{p}/{leaf}" for p in sys.modules[parent].__path__]
        else:
            path = list(importlib.util.find_spec(name).submodule_search_locations)
        module = types.ModuleType(name)
        module.__path__ = path
        sys.modules[name] = module


def _worker(src: Path, out: Path, group: int, seed: int) -> None:
    import logging
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    if not torch.cuda.is_available():  # fasterquant calls torch.cuda.synchronize()
        torch.cuda.synchronize = lambda device=None: None
    _stub_packages()
    from transformers import LlamaForCausalLM

    start = time.perf_counter()
    hf_config = json.loads((src / "config.json").read_text())
    model = LlamaForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    calib = _sample(model, seed)
    inter = model.config.intermediate_size
    padded = _pad_mlp(model, math.lcm(group, 32))
    _check_sizes(model, group)
    with torch.no_grad():  # zero padding leaves the float model's function unchanged
        ref = LlamaForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
        drift = (model(calib).logits - ref(calib).logits).abs().max().item()
    hf_config = {**hf_config, "intermediate_size": padded}
    print(f"{src}: calibration {calib.shape[0]} x {calib.shape[1]} tokens sampled at T=1.0, "
          f"seed {seed} ({time.perf_counter() - start:.1f} s)")  # fmt: skip
    if padded != inter:
        print(f"  MLP width {inter} padded with zeros to {padded}: float logits move by "
              f"{drift:.1e} at most")  # fmt: skip
    for name, act_order in (("gptq", False), ("gptq-act-order", True)):
        t = time.perf_counter()
        _gptq(model, calib, group, act_order, src, out / name, hf_config)
        print(f"  {out / name}: auto-gptq GPTQ, {BITS}-bit, group {group}, desc_act "
              f"{act_order}, sym, v1 ({time.perf_counter() - t:.1f} s)")  # fmt: skip
    t = time.perf_counter()
    _awq(model, calib, group, src, out / "awq", hf_config)
    print(f"  {out / 'awq'}: autoawq AWQ (scale + clip search), {BITS}-bit, group {group}, "
          f"GEMM, zero point ({time.perf_counter() - t:.1f} s)")  # fmt: skip
    print(f"  total {time.perf_counter() - start:.1f} s")


def _sample(model: Any, seed: int) -> Any:
    """[CALIB_SEQUENCES, CALIB_TOKENS] token ids the model samples from BOS at T = 1."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    ids = torch.full((CALIB_SEQUENCES, 1), model.config.bos_token_id, dtype=torch.long)
    with torch.no_grad():
        for _ in range(CALIB_TOKENS - 1):
            probs = torch.softmax(model(ids, use_cache=False).logits[:, -1].float(), -1)
            ids = torch.cat([ids, torch.multinomial(probs, 1, generator=gen)], 1)
    return ids


def _pad_mlp(model: Any, multiple: int) -> int:
    """Pads the MLP width to a multiple of `multiple` with zero gate/up rows and down
    columns (silu(0) * 0 = 0: the same function); returns the new width."""
    import torch
    from torch import nn

    inter = model.config.intermediate_size
    padded = -(-inter // multiple) * multiple
    if padded == inter:
        return inter

    def grown(old: nn.Linear, rows: int, cols: int) -> nn.Linear:
        new = nn.Linear(cols, rows, bias=old.bias is not None, dtype=old.weight.dtype)
        with torch.no_grad():
            new.weight.zero_()
            new.weight[: old.out_features, : old.in_features] = old.weight
            if old.bias is not None:
                new.bias.zero_()
                new.bias[: old.out_features] = old.bias
        return new

    for layer in model.model.layers:
        mlp = layer.mlp
        mlp.gate_proj = grown(mlp.gate_proj, padded, mlp.gate_proj.in_features)
        mlp.up_proj = grown(mlp.up_proj, padded, mlp.up_proj.in_features)
        mlp.down_proj = grown(mlp.down_proj, mlp.down_proj.out_features, padded)
        mlp.intermediate_size = padded
    model.config.intermediate_size = padded
    return padded


def _linears(model: Any) -> dict[str, Any]:
    """{name: nn.Linear} of the decoder layers' projections."""
    from torch import nn

    return {
        n: m
        for n, m in model.model.layers.named_modules(prefix="model.layers")
        if isinstance(m, nn.Linear)
    }


def _check_sizes(model: Any, group: int) -> None:
    for name, linear in _linears(model).items():
        if linear.in_features % group or linear.out_features % 32:
            raise _Sizes(
                f"{name}: {linear.in_features} inputs, {linear.out_features} outputs; group "
                f"size {group} needs inputs a multiple of {group} and outputs of 32"
            )


def _capture_layer0(model: Any, calib: Any) -> tuple[Any, dict]:
    """(hidden states, other kwargs) the first decoder layer is called with."""

    class Stop(Exception):
        pass

    seen: dict = {}

    def hook(module: Any, args: tuple, kwargs: dict) -> None:
        kwargs = dict(kwargs)
        seen["x"] = args[0] if args else kwargs.pop("hidden_states")
        seen["kwargs"] = kwargs
        raise Stop

    handle = model.model.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(calib, use_cache=False)
    except Stop:
        pass
    finally:
        handle.remove()
    return seen["x"], seen["kwargs"]


def _gptq(
    float_model: Any,
    calib: Any,
    group: int,
    act_order: bool,
    src: Path,
    folder: Path,
    hf_config: dict,
) -> None:
    import copy

    import torch
    from auto_gptq.quantization.gptq import GPTQ
    from auto_gptq.utils.import_utils import dynamically_import_QuantLinear

    model = copy.deepcopy(float_model)
    quantizers = {}
    with torch.no_grad():
        x, kwargs = _capture_layer0(model, calib)
        for i, layer in enumerate(model.model.layers):
            for names in GPTQ_SEQUENTIAL:
                gptq = {n: GPTQ(layer.get_submodule(n)) for n in names}
                for g in gptq.values():
                    g.quantizer.configure(BITS, perchannel=True, sym=True, mse=False)
                handles = [
                    layer.get_submodule(n).register_forward_hook(
                        lambda _m, inp, out, g=g: g.add_batch(inp[0].data, out.data)
                    )
                    for n, g in gptq.items()
                ]
                layer(x, **kwargs)
                for h in handles:
                    h.remove()
                for n, g in gptq.items():
                    scale, zero, g_idx = g.fasterquant(
                        percdamp=DAMP_PERCENT,
                        group_size=group,
                        actorder=act_order,
                        static_groups=False,
                    )
                    quantizers[f"model.layers.{i}.{n}"] = (scale, zero, g_idx)
                    g.free()
            x = _first(layer(x, **kwargs))  # the next layer sees this quantized layer
    # as auto-gptq's pack_model (its make_quant also gives every layer a zero bias buffer;
    # these layers have no bias, so none is written)
    quant_linear = dynamically_import_QuantLinear(
        use_triton=False,
        desc_act=act_order,
        group_size=group,
        bits=BITS,
        disable_exllama=False,
        disable_exllamav2=True,
        disable_marlin=True,
    )
    state = model.state_dict()
    for name, (scale, zero, g_idx) in quantizers.items():
        linear = model.get_submodule(name)
        q = quant_linear(BITS, group, linear.in_features, linear.out_features, False)
        q.pack(linear, scale, zero, g_idx)
        del state[name + ".weight"]
        state[name + ".qweight"] = q.qweight
        state[name + ".qzeros"] = q.qzeros
        state[name + ".scales"] = q.scales.half()
        state[name + ".g_idx"] = q.g_idx
    qc = {  # auto-gptq 0.7.1's BaseQuantizeConfig.to_dict()
        "bits": BITS,
        "group_size": group,
        "damp_percent": DAMP_PERCENT,
        "desc_act": act_order,
        "static_groups": False,
        "sym": True,
        "true_sequential": True,
        "model_name_or_path": None,
        "model_file_base_name": None,
        "is_marlin_format": False,
        "quant_method": "gptq",
        "checkpoint_format": "gptq",
    }
    metadata = {  # what auto-gptq's save_quantized stores in the safetensors header
        "auto_gptq_version": importlib.metadata.version("auto-gptq"),
        "gptq_bits": str(BITS),
        "gptq_group_size": str(group),
        "gptq_desc_act": str(act_order),
        "gptq_damp_percent": str(DAMP_PERCENT),
        "gptq_is_marlin_format": "False",
    }
    _save(folder, src, hf_config, qc, state, metadata)
    (folder / "quantize_config.json").write_text(json.dumps(qc, indent=2))


def _first(output: Any) -> Any:
    return output[0] if isinstance(output, tuple) else output


def _awq(
    float_model: Any, calib: Any, group: int, src: Path, folder: Path, hf_config: dict
) -> None:
    import copy

    import torch
    from awq.models._config import AwqConfig
    from awq.models.llama import LlamaAWQForCausalLM
    from awq.quantize.quantizer import AwqQuantizer

    class Llama(LlamaAWQForCausalLM):  # the class's static methods; no model wrapped
        model_type = "llama"

    class Quantizer(AwqQuantizer):
        def _compute_best_scale(self, *a: Any, **kw: Any) -> torch.Tensor:
            # autoawq restores module2inspect after each trial scaling from
            # {k: v.cpu() for k, v in state_dict()}, a copy only off the CPU: on the CPU the
            # first trial's in-place fc.weight.mul_(scales) stays in the weights (duo scaling
            # makes those scales != 1). A copying state_dict while it searches:
            module = kw["module2inspect"] if "module2inspect" in kw else a[3]
            state_dict = module.state_dict
            module.state_dict = lambda *b, **k: {
                n: t.clone() for n, t in state_dict(*b, **k).items()
            }
            try:
                return super()._compute_best_scale(*a, **kw)
            finally:
                del module.state_dict

        def _compute_best_clip(self, w: torch.Tensor, input_feat: torch.Tensor, **kw: Any):
            rows = w.shape[0]  # autoawq searches 64 (or 256) output rows at a time
            if rows % 64:
                w = torch.cat([w, w.new_zeros(-rows % 64, w.shape[1])])
            return super()._compute_best_clip(w, input_feat, **kw)[:rows]

    model = copy.deepcopy(float_model)
    model.config.use_cache = False
    quantizer = Quantizer(
        Llama,
        model,
        None,  # tokenizer: the calibration is token ids
        w_bit=BITS,
        group_size=group,
        zero_point=True,
        version="gemm",
        calib_data=calib.tolist(),
        split="train",
        text_column="text",
        modules_to_not_convert=None,
        export_compatible=False,
        **AWQ_SEARCH,
        n_parallel_calib_samples=None,
        max_calib_samples=calib.shape[0],
        max_calib_seq_len=calib.shape[1],
    )
    with torch.no_grad():
        quantizer.quantize()
    qc = AwqConfig(
        zero_point=True, q_group_size=group, w_bit=BITS, version="gemm"
    ).to_transformers_dict()
    _save(folder, src, hf_config, qc, model.state_dict(), {})


def _save(folder: Path, src: Path, hf_config: dict, qc: dict, state: dict, metadata: dict) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    if hf_config.get("tie_word_embeddings"):
        state.pop("lm_head.weight", None)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    save_file(tensors, folder / "model.safetensors", {"format": "pt", **metadata})
    config = {**hf_config, "quantization_config": qc}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for pattern in COPIED:
        for path in src.glob(pattern):
            if path.is_file():
                shutil.copyfile(path, folder / path.name)


# ---- scoring (--score) ---------------------------------------------------------------------


def score_all(src: Path, folders: dict[str, Path], tokens: int = 200) -> dict[str, dict]:
    """Each folder against src, teacher-forced over src's expected_greedy_t0_n200.txt (BOS,
    then `tokens` tokens): {name: max_abs_dlogprob, mean_kl, greedy_agreement, perplexity}."""
    import torch

    from blendrt import EngineConfig, load_model
    from blendrt.engine.engine import LLMEngine

    def logprobs(model: Any, ids: list[int]) -> torch.Tensor:
        engine = LLMEngine({"m": model}, EngineConfig(device="cpu", num_pages=len(ids) + 4))
        request = engine.add_score_request("m", ids)
        while True:
            for out in engine.step():
                if out.request_id == request.request_id and out.finished:
                    return out.prompt_logprobs

    ref_model = load_model(src)
    text = (src / EVAL_TEXT).read_text()
    ids = [1, *ref_model.tokenizer.encode(text, add_special_tokens=False)[:tokens]]
    ref = logprobs(ref_model, ids)
    rows = {}
    for name, folder in {"float": src, **folders}.items():
        got = ref if name == "float" else logprobs(load_model(folder), ids)
        nll = -got[:-1].gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1)
        rows[name] = {
            "max_abs_dlogprob": (got - ref).abs().max().item(),
            "mean_kl": (ref.exp() * (ref - got)).sum(-1).mean().item(),
            "greedy_agreement": (got.argmax(-1) == ref.argmax(-1)).float().mean().item(),
            "perplexity": nll.mean().exp().item(),
            "finite": bool(torch.isfinite(got).all()),
        }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="float Hugging Face Llama folder")
    parser.add_argument("out", type=Path, help="writes OUT/gptq, OUT/gptq-act-order, OUT/awq")
    parser.add_argument("--group-size", type=int, default=32, choices=GROUP_SIZES)
    parser.add_argument("--seed", type=int, default=0, help="calibration sampling seed")
    parser.add_argument("--score", action="store_true", help=f"score each on SRC/{EVAL_TEXT}")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        try:
            _worker(args.src.resolve(), args.out.resolve(), args.group_size, args.seed)
        except _Sizes as e:
            print(e, file=sys.stderr)
            sys.exit(_SIZE_ERROR)
        return
    try:
        start = time.perf_counter()
        folders = make_all(args.src, args.out, args.group_size, args.seed)
        print(f"wrote {', '.join(map(str, folders.values()))} in "
              f"{time.perf_counter() - start:.1f} s")  # fmt: skip
    except (LibraryMissing, ValueError, FileExistsError, FileNotFoundError) as e:
        sys.exit(f"make_quant_checkpoints: {e}")
    if args.score:
        print(f"\nagainst {args.src} on {EVAL_TEXT}: max|dlogprob|, mean KL, greedy agreement, "
              "perplexity")  # fmt: skip
        for name, r in score_all(args.src.resolve(), folders).items():
            print(f"  {name:<15} {r['max_abs_dlogprob']:8.4f} {r['mean_kl']:10.2e} "
                  f"{r['greedy_agreement']:7.3f} {r['perplexity']:9.3f}"
                  f"{'' if r['finite'] else '  NON-FINITE logprobs'}")  # fmt: skip


if __name__ == "__main__":
    main()
