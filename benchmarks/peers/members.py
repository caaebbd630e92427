"""The members of each member set: random Llama weights of real shapes (blendrt.bench.shapes)
as HF folders, converted once to GGUF by llama.cpp's own converter, and one chat template
both systems render identically.

NOTE: the template has no special tokens (no BOS, no </s> between turns). llama.cpp's
sentencepiece tokenizer splits text after a special token differently from transformers
(which blendrt follows), so with them the two systems would not see the same prompt tokens;
without them they do, which `systems.check_same_prompt` verifies before every run.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

from blendrt.bench.shapes import make_shape_member
from blendrt.models.hf_config import parse_hf_config

#: {set name: ((member, shape spec), ...)}; a spec is NAME:WIDTH_DIV:DEPTH_DIV.
MEMBER_SETS: dict[str, tuple[tuple[str, str], ...]] = {
    # three ~2.4M-parameter members (hidden 256, 2 layers, vocab 1024)
    "tiny": tuple((name, "llama-3.2-1b:32:8") for name in ("ann", "bea", "cat")),
    # 31M + 26M + 2.4M parameters: KV bytes per token 30 KiB, 25 KiB and 1 KiB
    "mixed": (("big", "vicuna-13b:8:7"), ("mid", "vicuna-13b:8:8"), ("tiny", "llama-3.2-1b:32:8")),
    # scenario B: five members, two 4.3M and three 2.4M
    "pressure": (
        ("p0", "llama-3.2-1b:8:4"),
        ("p1", "llama-3.2-1b:8:4"),
        ("p2", "llama-3.2-1b:32:8"),
        ("p3", "llama-3.2-1b:32:8"),
        ("p4", "llama-3.2-1b:32:8"),
    ),
}

TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}"
    "{% elif m['role'] == 'user' %} USER: {{ m['content'] }}"
    "{% else %} ASSISTANT: {{ m['content'] }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %} ASSISTANT:{% endif %}"
)


@dataclass(frozen=True)
class Member:
    name: str
    spec: str
    folder: Path  # HF layout, for blendrt
    gguf: Path  # float32, for llama-server
    num_params: int
    kv_bytes_per_token: int  # float32 K and V over all layers


def _num_params(folder: Path) -> int:
    with safe_open(folder / "model.safetensors", "np") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118


def build_members(set_name: str, cache: Path, converter: list[str]) -> list[Member]:
    """The set's members, built (and converted) on first use under `cache`."""
    members = []
    for seed, (name, spec) in enumerate(MEMBER_SETS[set_name]):
        stem = f"{spec.replace(':', '-')}-s{seed}"
        folder, gguf = cache / stem, cache / f"{stem}.gguf"
        if not (folder / "model.safetensors").exists():
            make_shape_member(spec, folder, seed=seed)
        if not gguf.exists():
            cmd = [*converter, str(folder), "--outtype", "f32", "--outfile", str(gguf)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"converting {folder} to GGUF failed:\n{done.stderr[-2000:]}")
        c = parse_hf_config(json.loads((folder / "config.json").read_text()))
        kv = 2 * c.num_layers * c.num_kv_heads * c.head_dim * 4
        members.append(Member(name, spec, folder, gguf, _num_params(folder), kv))
    return members


def write_template(cache: Path) -> Path:
    path = cache / "plain-vicuna.jinja"
    path.write_text(TEMPLATE)
    return path
