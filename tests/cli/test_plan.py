"""`blendrt plan`: byte counts checked against hand arithmetic, the paper's blend against its
published sizes, the search's choices, the JSON output, and that no weight is ever read."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest
import safetensors
import torch

import blendrt.models.weights as weights_module
from blendrt.cli import main
from blendrt.cli.plan import PAPER_DIR, PAPER_MEMBERS
from blendrt.plan import kv_geometry, parse_size, read_member, weight_bytes
from blendrt.plan_search import CUDA_CONTEXT_BYTES, cheapest_mix, plan_blend

GiB = 1 << 30

#: A Llama of hand-checkable size: hidden 256, 4 heads of 64, 2 KV heads, MLP 512, 2 layers.
TINY = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "vocab_size": 1000,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}
# Per layer, the quantized linears as [N, K]: q 256x256, k and v 128x256, o 256x256, gate and
# up 512x256, down 256x512: 589,824 weights in 2,048 rows, 4,608 groups of 128 (18,432 of 32).
# Kept in bf16: embeddings and lm_head 1000x256 each, 2 norms of 256 per layer, the final norm.
LINEAR, ROWS, GROUPS_128, GROUPS_32 = 2 * 589_824, 2 * 2_048, 2 * 4_608, 2 * 18_432
OTHER = 2 * 256_000 + 2 * 2 * 256 + 256  # 513,280
BF16 = 2 * (LINEAR + OTHER)  # 3,385,856
INT8 = LINEAR + 2 * ROWS + 2 * OTHER  # 2,214,400
INT4_G128 = LINEAR // 2 + 3 * GROUPS_128 + 2 * OTHER  # 1,644,032
INT4_G32 = LINEAR // 2 + 3 * GROUPS_32 + 2 * OTHER  # 1,726,976


def write_config(folder: Path, **overrides: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**TINY, **overrides}))
    return folder


def tiny_tensors(layers: int = 2) -> dict[str, list[int]]:
    """The tiny Llama's checkpoint tensors, {HF name: shape}."""
    shapes = {
        "model.embed_tokens.weight": [1000, 256],
        "model.norm.weight": [256],
        "lm_head.weight": [1000, 256],
    }
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": [256],
            p + "post_attention_layernorm.weight": [256],
            p + "self_attn.q_proj.weight": [256, 256],
            p + "self_attn.k_proj.weight": [128, 256],
            p + "self_attn.v_proj.weight": [128, 256],
            p + "self_attn.o_proj.weight": [256, 256],
            p + "mlp.gate_proj.weight": [512, 256],
            p + "mlp.up_proj.weight": [512, 256],
            p + "mlp.down_proj.weight": [256, 512],
        }
    return shapes


def write_garbage_safetensors(path: Path, shapes: dict[str, list[int]]) -> None:
    """A valid safetensors header, then bytes that are no sensible weights (0xff: bf16 NaN)."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 2 * math.prod(shape)
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\xff" * offset)


@pytest.fixture(scope="module")
def paper() -> list:
    return [read_member(name, PAPER_DIR / name) for name in PAPER_MEMBERS]


def test_weight_and_kv_bytes_match_hand_arithmetic(tmp_path: Path) -> None:
    member = read_member("tiny", write_config(tmp_path / "tiny"))
    assert member.source == "config"
    assert member.params == LINEAR + OTHER
    assert weight_bytes(member, "bf16") == BF16
    assert weight_bytes(member, "int8") == INT8
    assert weight_bytes(member, "int4-g128") == INT4_G128
    assert weight_bytes(member, "int4") == INT4_G128  # QuantScheme's default group
    assert weight_bytes(member, "int4-g64-zp") == weight_bytes(member, "int4-g64")  # zeros kept
    assert weight_bytes(member, "int4-g32") == INT4_G32
    # KV per token: 2 (K, V) x 2 layers x 2 heads x 64 dims x 2 bytes; int8: 64 + 2 (scale).
    assert kv_geometry(member).bytes_per_token == 1024
    assert kv_geometry(member, "int8").bytes_per_token == 2 * 2 * 2 * 66
    assert kv_geometry(member, "fp8_e4m3").bytes_per_token == 528


def test_int4_needs_inputs_divisible_by_the_group(tmp_path: Path) -> None:
    # hidden 192: K = 192 is not a multiple of 128 (but is of 32 and 64).
    member = read_member("odd", write_config(tmp_path / "odd", hidden_size=192))
    assert weight_bytes(member, "int4-g64") > 0
    with pytest.raises(ValueError, match="cannot load as int4-g128"):
        weight_bytes(member, "int4-g128")
    best = cheapest_mix([member], gpu_memory=GiB // 1000, min_conversations=10**6)
    assert best is None  # nothing fits, and int4-g128 was never tried (it would raise)


def test_headers_are_read_never_the_weights(tmp_path: Path, monkeypatch) -> None:
    folder = write_config(tmp_path / "tiny")
    write_garbage_safetensors(folder / "model.safetensors", tiny_tensors())
    real_open = safetensors.safe_open

    class HeadersOnly:
        def __init__(self, *args, **kwargs) -> None:
            self.handle = real_open(*args, **kwargs)

        def __enter__(self):
            self.handle.__enter__()
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

        def keys(self):
            return self.handle.keys()

        def get_slice(self, name):
            return _ShapeOnly(self.handle.get_slice(name))

        def get_tensor(self, name):
            raise AssertionError(f"plan read the weight {name}")

    monkeypatch.setattr(weights_module, "safe_open", HeadersOnly)
    monkeypatch.setattr(safetensors, "safe_open", HeadersOnly)
    member = read_member("tiny", folder)
    assert member.source == "headers"
    assert weight_bytes(member, "bf16") == BF16
    assert weight_bytes(member, "int4-g128") == INT4_G128


class _ShapeOnly:
    def __init__(self, sl) -> None:
        self.sl = sl

    def get_shape(self):
        return self.sl.get_shape()

    def __getitem__(self, item):
        raise AssertionError("plan read a slice of a weight")


def test_headers_that_disagree_with_the_config_are_refused(tmp_path: Path) -> None:
    folder = write_config(tmp_path / "liar", intermediate_size=1024)  # headers say 512
    write_garbage_safetensors(folder / "model.safetensors", tiny_tensors())
    with pytest.raises(ValueError, match="shape"):
        read_member("liar", folder)
    folder = write_config(tmp_path / "short")
    write_garbage_safetensors(folder / "model.safetensors", tiny_tensors(layers=1))
    with pytest.raises(ValueError, match="declares 2 layers"):
        read_member("short", folder)


def gptq_tensors(layers: int = 2, group: int = 128) -> dict[str, list[int]]:
    """The tiny Llama as a GPTQ checkpoint: each projection [N, K] as qweight [K / 8, N],
    qzeros [K / G, N / 8], scales [K / G, N], g_idx [K]."""
    shapes = {}
    for name, shape in tiny_tensors(layers).items():
        if name.endswith("_proj.weight"):
            (n, k), prefix = shape, name.removesuffix(".weight")
            shapes |= {
                prefix + ".qweight": [k // 8, n],
                prefix + ".qzeros": [k // group, n // 8],
                prefix + ".scales": [k // group, n],
                prefix + ".g_idx": [k],
            }
        else:
            shapes[name] = shape
    return shapes


def test_a_gptq_folder_counts_as_the_int4_it_loads_as(tmp_path: Path) -> None:
    plain = read_member("plain", write_config(tmp_path / "plain"))
    gptq = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False}
    folder = write_config(tmp_path / "q", quantization_config=gptq)
    write_garbage_safetensors(folder / "model.safetensors", gptq_tensors())
    member = read_member("q", folder)
    assert (member.source, member.precision) == ("headers", "int4-g128-zp")
    # Zero points are stored for symmetric int4 too: the same bytes as at-load int4-g128.
    assert weight_bytes(member) == INT4_G128 == weight_bytes(plain, "int4-g128")
    # act-order adds a perm int32 [K] per checkpoint projection: per layer q, k, v and o
    # (K 256), gate and up (K 256), down (K 512): 4 x (6 x 256 + 512) bytes.
    act_order = gptq | {"desc_act": True}
    act = read_member("a", write_config(tmp_path / "a", quantization_config=act_order))
    assert weight_bytes(act) == INT4_G128 + 2 * 4 * (6 * 256 + 512)
    awq = {"quant_method": "awq", "w_bit": 4, "q_group_size": 64}
    assert read_member("w", write_config(tmp_path / "w", quantization_config=awq)).precision == (
        "int4-g64-zp"
    )
    per_row = write_config(tmp_path / "r", quantization_config=gptq | {"group_size": -1})
    assert weight_bytes(read_member("r", per_row)) == INT4_G128  # carried as groups of 128
    with pytest.raises(ValueError, match="already a int4-g128-zp checkpoint"):
        plan_blend([member], gpu_memory=GiB, quantization={"q": "int8"})
    eight = write_config(tmp_path / "g8", quantization_config=gptq | {"bits": 8})
    with pytest.raises(ValueError, match="bits=8"):
        read_member("g8", eight)
    bad = write_config(tmp_path / "bad", quantization_config=gptq)
    write_garbage_safetensors(bad / "model.safetensors", gptq_tensors(group=64))
    with pytest.raises(ValueError, match="qzeros"):
        read_member("bad", bad)  # headers of another group size


@pytest.mark.parametrize("scheme", ["int8", "int4-g32", "int4-g128-zp"])
def test_plan_bytes_are_what_the_loader_allocates(tmp_path: Path, scheme: str) -> None:
    """The loader's own layout: the tiny Llama on the meta device with its linears swapped
    for QuantLinear, every floating tensor in bf16 (as it materializes them on a GPU)."""
    from blendrt.models.loader import MODEL_CLASSES, read_config
    from blendrt.models.quantize import quantize_linears, quantized_bytes
    from blendrt.ops.quant import QuantScheme

    config = read_config(write_config(tmp_path / "tiny"))
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("meta"):
            model = MODEL_CLASSES[config.family](config)
        quantize_linears(model, QuantScheme.parse(scheme))
    finally:
        torch.set_default_dtype(default)
    floats = sum(p.numel() * p.element_size() for p in model.parameters())
    member = read_member("tiny", tmp_path / "tiny")
    assert weight_bytes(member, scheme) == floats + quantized_bytes(model)


def test_the_paper_blend_has_its_published_sizes(paper) -> None:
    pyg, chai, vicuna = paper
    # GPT-J-6B and Llama-2-13B parameter counts.
    assert pyg.params == chai.params == 6_050_882_784
    assert vicuna.params == 13_015_864_320
    assert weight_bytes(pyg, "bf16") == 2 * pyg.params  # ~12.1 GB
    total = sum(weight_bytes(m, "bf16") for m in paper)
    assert 50.0e9 < total < 50.4e9  # 2 x 12.1 GB + 26.0 GB
    # KV per token: GPT-J 2 x 28 layers x 16 heads x 256 x 2 bytes; Vicuna 2 x 40 x 40 x 128 x 2.
    assert [kv_geometry(m).bytes_per_token for m in paper] == [458_752, 458_752, 819_200]


def test_the_paper_blend_does_not_fit_24gib_in_bf16_and_the_suggestion_does(paper) -> None:
    plan = plan_blend(paper, gpu_memory=24 * GiB, context=4096)
    assert not plan.fits and plan.pool_bytes == 0 and plan.conversations == 0
    best = cheapest_mix(paper, gpu_memory=24 * GiB, context=4096)
    assert best is not None and best.fits and best.conversations >= 8
    assert best.weight_bytes + best.activation_reserve + best.pool_bytes <= 0.9 * 24 * GiB
    assert all(m.precision == "int4-g128" for m in best.members)
    assert best.flags[-1] == "--kv-cache-dtype int8"
    # The same weights with the KV cache in bf16 hold too few conversations: int8 KV is needed.
    bf16_kv = plan_blend(
        paper,
        gpu_memory=24 * GiB,
        context=4096,
        quantization={m.name: "int4-g128" for m in paper},
    )
    assert bf16_kv.num_pages > 0 and not bf16_kv.fits


def test_the_search_prefers_int8_kv_then_quantizes_the_largest_member(paper) -> None:
    # bf16 weights need ~47.3 GiB with the reserve; 8 conversations of int8 KV ~6.7 GiB more.
    best = cheapest_mix(paper, gpu_memory=64 * GiB, context=4096)
    assert best.flags == ("--kv-cache-dtype int8",)
    best = cheapest_mix(paper, gpu_memory=48 * GiB, context=4096)
    assert best.flags == ("--quantization vicuna-13b=int8", "--kv-cache-dtype int8")
    best = cheapest_mix(paper, gpu_memory=80 * GiB, context=4096)
    assert best.flags == () and best == plan_blend(paper, gpu_memory=80 * GiB, context=4096)


def test_a_large_blend_searches_one_precision_for_all(tmp_path: Path) -> None:
    members = [read_member(f"m{i}", write_config(tmp_path / "tiny")) for i in range(9)]
    # 9 x int8 weights and 2.7 MB for the pool: a full search would keep one member in bf16
    # (1.17 MB more) and still hold a conversation; with 9 members all go to int8 together.
    budget = CUDA_CONTEXT_BYTES + 9 * (INT8 + 300_000)
    best = cheapest_mix(members, gpu_memory=budget, gpu_memory_utilization=1.0, min_conversations=1,
                        max_num_seqs=1, max_num_batched_tokens=1)  # fmt: skip
    assert best is not None and {m.precision for m in best.members} == {"int8"}
    assert plan_blend(members, gpu_memory=budget, gpu_memory_utilization=1.0,
                      min_conversations=1, max_num_seqs=1, max_num_batched_tokens=1,
                      quantization={f"m{i}": "int8" for i in range(8)}).fits  # fmt: skip


def test_pool_pages_and_conversations_by_hand(paper) -> None:
    plan = plan_blend(paper, gpu_memory=80 * GiB, context=4096)
    # engine.memory's reserve: the widest member's hidden states for 2048 tokens plus float32
    # logits x4 for 256 sequences; GPT-J: 2048 x (3 x 4096 + 3 x 4096 + 3 x 16384) x 2 bytes
    # + 256 x 50400 x 16 beats Vicuna's.
    assert plan.activation_reserve == 2048 * 73_728 * 2 + 256 * 50_400 * 16
    assert plan.pool_bytes == int(0.9 * 80 * GiB) - plan.weight_bytes - plan.activation_reserve
    assert plan.page_bytes == 16 * 819_200  # Vicuna's 16 tokens (already 256-aligned)
    pages = plan.pool_bytes // plan.page_bytes
    assert plan.num_pages == pages
    pyg, _, vicuna = plan.members
    assert (pyg.tokens_per_page, vicuna.tokens_per_page) == (28, 16)  # 13107200 // 458752
    # GPT-J holds its 2048-token window of a 4096-token conversation: 74 pages; Vicuna 256.
    assert (pyg.conversation_tokens, pyg.pages_per_conversation) == (2048, 74)
    assert vicuna.pages_per_conversation == 256
    assert vicuna.conversations_alone == pages // 256 and pyg.tokens_alone == pages * 28
    assert plan.conversations == pages * 3 // (74 + 74 + 256)  # uniform draw
    assert plan.conversations_all_cached == pages // (74 + 74 + 256)
    weighted = plan_blend(
        paper, gpu_memory=80 * GiB, context=4096, draw_weights={"vicuna-13b": 0, "chai-6b": 3}
    )
    assert weighted.conversations == pages // 74  # only the GPT-Js are drawn


@pytest.mark.parametrize(
    ("text", "size"),
    [("24GiB", 24 * GiB), ("24GB", 24 * 10**9), ("512 MiB", 512 << 20), ("80000mb", 8 * 10**10),
     ("1.5GiB", 3 * GiB // 2)],
)  # fmt: skip
def test_sizes_parse(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["24", "24G", "24TB", "GiB", "-1GiB", "0GiB", "1e3GiB", "x"])
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="memory size"):
        parse_size(text)


def test_bad_plan_inputs_are_refused(paper) -> None:
    with pytest.raises(ValueError, match="names no member"):
        plan_blend(paper, gpu_memory=GiB, quantization={"nobody": "int8"})
    with pytest.raises(ValueError, match="unknown quantization"):
        plan_blend(paper, gpu_memory=GiB, quantization={"chai-6b": "int3"})
    with pytest.raises(ValueError, match="kv cache dtype"):
        plan_blend(paper, gpu_memory=GiB, kv_cache_dtype="int4")
    with pytest.raises(ValueError, match="context"):
        plan_blend(paper, gpu_memory=GiB, context=0)
    with pytest.raises(ValueError, match="--weight"):
        plan_blend(paper, gpu_memory=GiB, draw_weights={"chai-6b": float("nan")})


def test_cli_prints_the_plan_and_the_suggested_flags(capsys) -> None:
    assert main(["plan", "--paper", "--gpu-memory", "24GiB", "--context", "4096"]) == 0
    out = capsys.readouterr().out
    assert "does NOT fit" in out
    assert (
        "cheapest mix that fits: --quantization pygmalion-6b=int4-g128 --quantization "
        "chai-6b=int4-g128 --quantization vicuna-13b=int4-g128 --kv-cache-dtype int8"
    ) in out


def test_cli_json_parses_and_evaluates_the_mix_asked_for(capsys) -> None:
    argv = ["plan", "--paper", "--gpu-memory", "48GiB", "--context", "4096", "--json"]
    quant = ["--quantization", "vicuna-13b=int4", "--kv-cache-dtype", "int8"]
    assert main([*argv, *quant]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in report["members"]] == list(PAPER_MEMBERS)
    assert report["members"][2]["weight_bytes"]["bf16"] == 2 * 13_015_864_320
    assert report["plan"]["fits"] is True
    assert [m["precision"] for m in report["plan"]["members"]] == ["bf16", "bf16", "int4-g128"]
    assert report["suggestion"]["flags"] == [
        "--quantization vicuna-13b=int8",
        "--kv-cache-dtype int8",
    ]


def test_cli_plans_the_bundled_demo_from_its_headers(capsys) -> None:
    assert main(["plan", "--gpu-memory", "1GiB", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {m["source"] for m in report["members"]} == {"headers"}
    assert report["plan"]["fits"] is True and report["suggestion"]["flags"] == []


def test_cli_errors_name_the_problem(capsys, monkeypatch) -> None:
    assert main(["plan", "--paper", "--gpu-memory", "24XB"]) == 2
    assert "memory size '24XB'" in capsys.readouterr().err
    assert main(["plan", "--paper", "--gpu-memory", "24GiB", "--weight", "vic=1"]) == 2
    assert "--weight names no member: vic" in capsys.readouterr().err
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert main(["plan", "--paper"]) == 2
    assert "--gpu-memory" in capsys.readouterr().err
