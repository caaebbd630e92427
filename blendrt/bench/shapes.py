"""Random-initialised members of named real shapes, written as HF folders on the fly.

`NAME[:WIDTH_DIV[:DEPTH_DIV]]` scales a real model down for a CPU: hidden and MLP widths and
head counts are divided by WIDTH_DIV (head dim and the GQA ratio are kept, so attention has
the real per-head shape), layers by DEPTH_DIV. A bundled demo member's tokenizer is copied in
(byte-level BPE for GPT-J shapes, sentencepiece for Llama shapes) so the members can chat.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from blendrt.demo import DEMO_DIR
from blendrt.tokenizer.tokenizer import load_tokenizer

#: {name: (architecture, real dimensions)}
SHAPES = {
    "llama-3.2-1b": (
        "llama",
        dict(hidden=2048, layers=16, heads=32, kv_heads=8, head_dim=64, inter=8192, theta=500000.0),
    ),
    "vicuna-13b": (
        "llama",
        dict(
            hidden=5120, layers=40, heads=40, kv_heads=40, head_dim=128, inter=13824, theta=10000.0
        ),
    ),
    "gpt-j-6b": (
        "gptj",
        dict(
            hidden=4096, layers=28, heads=16, kv_heads=16, head_dim=256, inter=16384, rotary_dim=64
        ),
    ),
}
#: The demo member whose tokenizer each architecture borrows.
_TOKENIZER_FROM = {"llama": "vic", "gptj": "ann"}


def parse_shape(spec: str) -> tuple[str, int, int]:
    name, *divs = spec.split(":")
    if name not in SHAPES or len(divs) > 2:
        raise ValueError(
            f"unknown shape {spec!r}; use NAME[:WIDTH_DIV[:DEPTH_DIV]] with NAME "
            f"one of {', '.join(SHAPES)}"
        )
    width, depth = [int(d) for d in divs] + [1] * (2 - len(divs))
    if width < 1 or depth < 1:
        raise ValueError(f"shape {spec!r}: divisors must be >= 1")
    return name, width, depth


def _tensors(arch: str, d: dict, vocab: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    def w(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * 0.02

    q, kv = d["heads"] * d["head_dim"], d["kv_heads"] * d["head_dim"]
    h, inter = d["hidden"], d["inter"]
    if arch == "gptj":
        t = {
            "transformer.wte.weight": w(vocab, h),
            "transformer.ln_f.weight": torch.ones(h),
            "transformer.ln_f.bias": torch.zeros(h),
            "lm_head.weight": w(vocab, h),
            "lm_head.bias": torch.zeros(vocab),
        }
        for i in range(d["layers"]):
            p = f"transformer.h.{i}."
            t |= {
                p + "ln_1.weight": torch.ones(h),
                p + "ln_1.bias": torch.zeros(h),
                p + "mlp.fc_in.weight": w(inter, h),
                p + "mlp.fc_in.bias": torch.zeros(inter),
                p + "mlp.fc_out.weight": w(h, inter),
                p + "mlp.fc_out.bias": torch.zeros(h),
                p + "attn.out_proj.weight": w(h, q),
            }
            t |= {f"{p}attn.{n}_proj.weight": w(q, h) for n in ("q", "k", "v")}
        return t
    t = {
        "model.embed_tokens.weight": w(vocab, h),
        "model.norm.weight": torch.ones(h),
        "lm_head.weight": w(vocab, h),
    }
    for i in range(d["layers"]):
        p = f"model.layers.{i}."
        t |= {
            p + "input_layernorm.weight": torch.ones(h),
            p + "post_attention_layernorm.weight": torch.ones(h),
            p + "self_attn.q_proj.weight": w(q, h),
            p + "self_attn.k_proj.weight": w(kv, h),
            p + "self_attn.v_proj.weight": w(kv, h),
            p + "self_attn.o_proj.weight": w(h, q),
            p + "mlp.gate_proj.weight": w(inter, h),
            p + "mlp.up_proj.weight": w(inter, h),
            p + "mlp.down_proj.weight": w(h, inter),
        }
    return t


def _hf_config(arch: str, d: dict, vocab: int, context: int) -> dict:
    if arch == "gptj":
        return {
            "architectures": ["GPTJForCausalLM"],
            "model_type": "gptj",
            "vocab_size": vocab,
            "n_embd": d["hidden"],
            "n_layer": d["layers"],
            "n_head": d["heads"],
            "n_inner": d["inter"],
            "rotary_dim": d["rotary_dim"],
            "n_positions": context,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": 1e-5,
            "tie_word_embeddings": False,
            "bos_token_id": 1,
            "eos_token_id": 2,
        }
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": d["hidden"],
        "num_hidden_layers": d["layers"],
        "num_attention_heads": d["heads"],
        "num_key_value_heads": d["kv_heads"],
        "head_dim": d["head_dim"],
        "intermediate_size": d["inter"],
        "max_position_embeddings": context,
        "rms_norm_eps": 1e-5,
        "rope_theta": d["theta"],
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def make_shape_member(spec: str, folder: Path, *, seed: int = 0, context: int = 4096) -> str:
    """Writes a random model of shape `spec` to `folder`; returns the chat format to use."""
    name, width_div, depth_div = parse_shape(spec)
    arch, real = SHAPES[name]
    d = dict(real)
    group = real["heads"] // real["kv_heads"]
    d["kv_heads"] = max(1, real["kv_heads"] // width_div)
    d["heads"] = d["kv_heads"] * group
    d["hidden"] = d["heads"] * real["head_dim"]
    d["inter"] = max(1, real["inter"] * d["hidden"] // real["hidden"])
    d["layers"] = max(1, math.ceil(real["layers"] / depth_div))
    folder.mkdir(parents=True, exist_ok=True)
    donor = DEMO_DIR / "members" / _TOKENIZER_FROM[arch]
    for f in donor.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, folder / f.name)
    vocab = -(-load_tokenizer(folder).vocab_size // 64) * 64
    (folder / "config.json").write_text(json.dumps(_hf_config(arch, d, vocab, context), indent=2))
    gen = torch.Generator().manual_seed(seed)
    save_file(
        {k: v.contiguous() for k, v in _tensors(arch, d, vocab, gen).items()},
        folder / "model.safetensors",
    )
    return "vicuna" if arch == "llama" else "pygmalion"
