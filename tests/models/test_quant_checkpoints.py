"""GPTQ and AWQ checkpoints -> blendrt's canonical int4 (models/quant_checkpoints).

Three kinds of evidence: config parsing (every refusal names what is refused); tensors packed
here by hand from the format definitions (nibble order, GPTQ v1's zero - 1, AWQ's interleave,
act-order); and tensors packed by the libraries that write these checkpoints (auto-gptq,
autoawq, gptqmodel), dequantized by those libraries too. The libraries run in a child process:
they patch torch, transformers and os.environ when imported.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from blendrt.models.quant_checkpoints import (
    CheckpointQuant,
    awq_to_canonical,
    checkpoint_quantization,
    expected_shapes,
    gptq_to_canonical,
    linear_tensor_names,
)
from blendrt.ops.quant import (
    QuantizedWeight,
    QuantScheme,
    dequantize_reference,
    quant_matmul_reference,
    unpack_int4,
)

K = 256  # inputs of every test layer
AWQ = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i of an AWQ word holds output AWQ[i] (AutoAWQ's order)


def gptq(**fields: object) -> dict:
    return {
        "quant_method": "gptq",
        "bits": 4,
        "group_size": 128,
        "desc_act": False,
        "sym": True,
        **fields,
    }


def awq(**fields: object) -> dict:
    return {
        "quant_method": "awq",
        "bits": 4,
        "group_size": 128,
        "zero_point": True,
        "version": "gemm",
        **fields,
    }


def parse(qc: object) -> CheckpointQuant | None:
    return checkpoint_quantization(
        {"architectures": ["LlamaForCausalLM"], "quantization_config": qc}
    )


# ---- config.json ---------------------------------------------------------------------------


def test_float_checkpoint_has_none() -> None:
    assert checkpoint_quantization({"architectures": ["LlamaForCausalLM"]}) is None
    assert parse(None) is None


@pytest.mark.parametrize(
    "qc, expected",
    [
        # AutoGPTQ (v1), desc_act and asymmetric
        (
            gptq(desc_act=True, sym=False, damp_percent=0.01, true_sequential=True),
            CheckpointQuant("gptq", 4, 128, True, False, "gptq"),
        ),
        # GPTQModel v2, its "format" key, group 32
        (
            gptq(group_size=32, format="gptq_v2", pack_dtype="int32", lm_head=False),
            CheckpointQuant("gptq", 4, 32, False, True, "gptq_v2"),
        ),
        (
            gptq(group_size=64, checkpoint_format="gptq"),
            CheckpointQuant("gptq", 4, 64, False, True, "gptq"),
        ),
        (gptq(group_size=-1), CheckpointQuant("gptq", 4, -1, False, True, "gptq")),
        # AutoAWQ, and its older key names
        (awq(modules_to_not_convert=None), CheckpointQuant("awq", 4, 128, False, False, "gemm")),
        (
            {
                "quant_method": "awq",
                "w_bit": 4,
                "q_group_size": 64,
                "zero_point": True,
                "version": "GEMM",
                "modules_to_not_convert": ["gate"],
            },
            CheckpointQuant("awq", 4, 64, False, False, "gemm", ("gate",)),
        ),
    ],
)
def test_accepted(qc: dict, expected: CheckpointQuant) -> None:
    cq = parse(qc)
    assert cq == expected
    assert cq.scheme == QuantScheme(4, 128 if cq.group_size == -1 else cq.group_size, True)


@pytest.mark.parametrize(
    "qc, message",
    [
        ({"quant_method": "bitsandbytes", "load_in_4bit": True}, "'bitsandbytes' is not supp"),
        ({"quant_method": "fp8", "activation_scheme": "dynamic"}, "'fp8' is not supported"),
        ({"quant_method": "compressed-tensors"}, "'compressed-tensors' is not supported"),
        ({"quant_method": "exl2"}, "'exl2' is not supported"),
        ({"quant_method": "hqq"}, "'hqq' is not supported"),
        ({"bits": 4}, "quant_method None is not supported"),
        (gptq(bits=8), "GPTQ with bits=8 is not supported"),
        (gptq(bits=3), "GPTQ with bits=3 is not supported"),
        (gptq(bits=2), "GPTQ with bits=2 is not supported"),
        (gptq(group_size=256), "GPTQ group_size 256 is not supported"),
        (gptq(group_size=16), "GPTQ group_size 16 is not supported"),
        (gptq(checkpoint_format="marlin"), "GPTQ checkpoint_format 'marlin' is not supp"),
        (gptq(is_marlin_format=True), "GPTQ checkpoint_format 'marlin' is not supported"),
        (gptq(format="bitblas"), "GPTQ checkpoint_format 'bitblas' is not supported"),
        (gptq(pack_dtype="int16"), "GPTQ pack_dtype 'int16' is not supported"),
        (gptq(lm_head=True), "quantized lm_head"),
        (gptq(dynamic={"-:.*mlp.*": {}}), "per-module overrides"),
        (awq(version="gemv"), "AWQ version 'gemv' is not supported"),
        (awq(version="gemv_fast"), "AWQ version 'gemv_fast' is not supported"),
        (awq(version="marlin"), "AWQ version 'marlin' is not supported"),
        (awq(version="exllama"), "AWQ version 'exllama' is not supported"),
        (awq(backend="llm-awq"), "AWQ backend 'llm-awq' is not supported"),
        (awq(zero_point=False), "zero_point: false"),
        (awq(bits=8), "AWQ with bits=8 is not supported"),
        (awq(group_size=-1), "AWQ group_size -1 is not supported"),
        # untrusted types
        ([], "quantization_config must be an object"),
        ("gptq", "quantization_config must be an object"),
        ({"quant_method": 4}, "quant_method must be a short string"),
        ({"quant_method": "gptq" * 100}, "quant_method must be a short string"),
        (gptq(bits="4"), "bits must be an int"),
        (gptq(bits=4.0), "bits must be an int"),
        (gptq(group_size=True), "group_size must be an int"),
        (gptq(desc_act="true"), "desc_act must be true or false"),
        (gptq(sym=1), "sym must be true or false"),
        (gptq(checkpoint_format=["gptq"]), "checkpoint_format must be a short string"),
        (awq(zero_point="yes"), "zero_point must be true or false"),
        (awq(modules_to_not_convert="gate"), "modules_to_not_convert must be a list"),
        (awq(modules_to_not_convert=[1]), "modules_to_not_convert must be a list"),
        (awq(modules_to_not_convert=["x"] * 5000), "modules_to_not_convert must be a list"),
    ],
)
def test_refused(qc: object, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parse(qc)


# ---- tensor names and shapes ---------------------------------------------------------------


def test_names_and_shapes() -> None:
    p = "model.layers.0.self_attn.q_proj"
    g, a = parse(gptq(group_size=64)), parse(awq(group_size=32))
    assert linear_tensor_names(p, g) == [f"{p}.qweight", f"{p}.qzeros", f"{p}.scales", f"{p}.g_idx"]
    assert linear_tensor_names(p, a) == [f"{p}.qweight", f"{p}.qzeros", f"{p}.scales"]
    assert expected_shapes(p, 512, 72, g) == {
        f"{p}.qweight": (64, 72),
        f"{p}.qzeros": (8, 9),
        f"{p}.scales": (8, 72),
        f"{p}.g_idx": (512,),
    }
    assert expected_shapes(p, 512, 72, a) == {
        f"{p}.qweight": (512, 9),
        f"{p}.qzeros": (16, 9),
        f"{p}.scales": (16, 72),
    }
    per_channel = expected_shapes(p, 256, 8, parse(gptq(group_size=-1)))
    assert per_channel[f"{p}.scales"] == (1, 8) and per_channel[f"{p}.qzeros"] == (1, 1)


@pytest.mark.parametrize(
    "k, n, qc, message",
    [
        (96, 64, gptq(group_size=64), "in_features to be a multiple of 64"),
        (128, 60, gptq(), "out_features to be a multiple of 8"),
        (128, 60, awq(), "out_features to be a multiple of 8"),
        (192, 64, gptq(group_size=-1), "in_features to be a multiple of 128"),
        (1 << 23, 64, gptq(), "in_features to be a multiple of 128 in"),
        (128, 0, awq(), "out_features"),
    ],
)
def test_shapes_refused(k: int, n: int, qc: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        expected_shapes("x", k, n, parse(qc))


# ---- hand-packed from the format definitions -----------------------------------------------


@dataclass
class Layer:
    """A quantized layer as the checkpoints mean it, inputs in their original order."""

    q: torch.Tensor  # int64 [N, K] in 0..15
    zeros: torch.Tensor  # int64 [N, groups]
    scales: torch.Tensor  # fp16 [N, groups]
    g_idx: torch.Tensor  # int32 [K]: each input's group
    weight: torch.Tensor  # fp32 [N, K]: (q - zero) * scale of the input's group


def random_layer(n: int, group: int, act_order: bool, sym: bool, min_zero: int, seed: int) -> Layer:
    gen = torch.Generator().manual_seed(seed)
    size = K if group == -1 else group
    g_idx = torch.arange(K) // size
    if act_order:  # GPTQ's act-order: groups follow a permutation of the inputs
        g_idx = g_idx[torch.randperm(K, generator=gen)]
    q = torch.randint(0, 16, (n, K), generator=gen)
    zeros = torch.randint(min_zero, 16, (n, K // size), generator=gen)
    zeros[0, 0], zeros[-1, -1] = min_zero, 15  # both extremes, always
    zeros = torch.full_like(zeros, 8) if sym else zeros
    scales = (torch.rand(n, K // size, generator=gen) * 0.05 + 1e-3).half()
    weight = (q - zeros[:, g_idx]) * scales.float()[:, g_idx]
    return Layer(q, zeros, scales, g_idx.int(), weight)


def pack(t: torch.Tensor, dim: int, order: tuple[int, ...] = tuple(range(8))) -> torch.Tensor:
    """int32 words of 8 nibbles along `dim`: nibble i of word w holds element 8w + order[i]."""
    t = t.long().movedim(dim, -1)
    t = t.reshape(*t.shape[:-1], -1, 8)
    words = sum(t[..., order[i]] << (4 * i) for i in range(8))
    words = torch.where(words >= 1 << 31, words - (1 << 32), words)  # as int32 bits
    return words.to(torch.int32).movedim(-1, dim)


def check_converted(qw: QuantizedWeight, layer: Layer, cq: CheckpointQuant) -> None:
    """qw must stand for exactly layer.weight (inputs in qw.perm order)."""
    perm = torch.arange(K) if qw.perm is None else qw.perm.long()
    expected_perm = np.argsort(layer.g_idx.numpy(), kind="stable")
    assert (qw.perm is None) == (expected_perm == np.arange(K)).all()
    assert torch.equal(perm, torch.from_numpy(expected_perm))
    assert qw.scheme == cq.scheme and qw.qweight.dtype == torch.uint8
    assert qw.perm is None or qw.perm.dtype == torch.int32
    assert torch.equal(unpack_int4(qw.qweight).long(), layer.q[:, perm])
    assert torch.equal(dequantize_reference(qw), layer.weight[:, perm])
    x = torch.randn(3, K, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(quant_matmul_reference(x, qw), x @ layer.weight.T)


@pytest.mark.parametrize(
    "group, act_order, sym, fmt, n",
    [
        (32, False, True, "gptq", 72),
        (32, True, False, "gptq", 72),
        (64, True, True, "gptq_v2", 200),
        (64, False, False, "gptq_v2", 8),
        (128, True, False, "gptq_v2", 136),
        (128, False, False, "gptq", 200),
        (-1, False, False, "gptq", 72),
        (-1, False, True, "gptq_v2", 8),
    ],
)
def test_gptq_hand_packed(group: int, act_order: bool, sym: bool, fmt: str, n: int) -> None:
    v1 = fmt == "gptq"
    layer = random_layer(n, group, act_order, sym, min_zero=1 if v1 else 0, seed=group + n)
    cq = parse(gptq(group_size=group, desc_act=act_order, sym=sym, checkpoint_format=fmt))
    qweight = pack(layer.q.T, 0)  # [K / 8, N], inputs in their original order
    qzeros = pack(layer.zeros.T - int(v1), 1)  # [groups, N / 8]; v1 stores zero - 1
    qw = gptq_to_canonical(qweight, qzeros, layer.scales.T.contiguous(), layer.g_idx, cq)
    check_converted(qw, layer, cq)
    reps = K // 128 if group == -1 else 1
    assert torch.equal(qw.zeros.long(), layer.zeros.repeat_interleave(reps, 1))
    assert qw.scales.dtype == torch.float16
    assert torch.equal(qw.scales, layer.scales.repeat_interleave(reps, 1))
    if not act_order:  # g_idx may be left out when it is the trivial k // G
        none = gptq_to_canonical(qweight, qzeros, layer.scales.T, None, cq)
        assert torch.equal(none.qweight, qw.qweight) and none.perm is None


@pytest.mark.parametrize("group, n", [(32, 72), (64, 200), (128, 8)])
def test_awq_hand_packed(group: int, n: int) -> None:
    layer = random_layer(n, group, act_order=False, sym=False, min_zero=0, seed=group + n)
    cq = parse(awq(group_size=group))
    qweight = pack(layer.q.T, 1, AWQ)  # [K, N / 8]
    qzeros = pack(layer.zeros.T, 1, AWQ)  # [K / G, N / 8]
    qw = awq_to_canonical(qweight, qzeros, layer.scales.T, cq)
    check_converted(qw, layer, cq)
    assert torch.equal(qw.zeros.long(), layer.zeros) and qw.scales.dtype == torch.float16
    bf16 = awq_to_canonical(qweight, qzeros, layer.scales.T, cq, scale_dtype=torch.bfloat16)
    assert torch.equal(bf16.scales, layer.scales.bfloat16())


def test_literal_words() -> None:
    """Single words, decoded by hand: nibble order, v1's whole-word zero - 1, AWQ's order."""
    g = parse(gptq(group_size=32, checkpoint_format="gptq_v2"))
    qweight = torch.zeros(4, 8, dtype=torch.int32)  # K = 32, N = 8
    qweight[0, 0], qweight[1, 0] = 0x76543210, 0xFEDCBA98 - (1 << 32)
    qzeros = torch.tensor([[0x00000008]], dtype=torch.int32)
    scales = torch.ones(1, 8, dtype=torch.float16)
    qw = gptq_to_canonical(qweight, qzeros, scales, None, g)
    assert qw.qweight[0].tolist() == [0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE] + [0] * 8
    assert qw.zeros[:, 0].tolist() == [8, 0, 0, 0, 0, 0, 0, 0]
    assert dequantize_reference(qw)[0, :16].tolist() == [float(i - 8) for i in range(16)]

    v1 = parse(gptq(group_size=32, checkpoint_format="gptq"))
    for word, zeros in [
        (0x76543210, [1, 2, 3, 4, 5, 6, 7, 8]),  # zero - 1 in each nibble
        (0x77777777, [8] * 8),  # symmetric
        (0xEEEEEEEF, [0] * 8),  # 0 - 0x11111111: every nibble borrowed
        (0xFFFFFFFF, [0] + [1] * 7),  # 0x11111110 - 0x11111111
        (0x7654320F, [0, 2, 3, 4, 5, 6, 7, 8]),  # 0x87654320 - 0x11111111: one borrow
    ]:
        qz = torch.tensor([[word - (1 << 32) * (word >= 1 << 31)]], dtype=torch.int32)
        assert gptq_to_canonical(qweight, qz, scales, None, v1).zeros[:, 0].tolist() == zeros

    a = parse(awq(group_size=32))
    qweight = torch.zeros(32, 1, dtype=torch.int32)  # K = 32, N = 8
    qweight[0, 0] = 0x76543210  # nibble i = i, for output AWQ[i]
    qzeros = torch.tensor([[0x76543210]], dtype=torch.int32)
    qw = awq_to_canonical(qweight, qzeros, scales, a)
    assert unpack_int4(qw.qweight)[:, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    assert qw.zeros[:, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


def test_bad_tensors() -> None:
    layer = random_layer(16, 64, act_order=True, sym=False, min_zero=0, seed=0)
    cq = parse(gptq(group_size=64, checkpoint_format="gptq_v2"))
    qweight, qzeros, scales = pack(layer.q.T, 0), pack(layer.zeros.T, 1), layer.scales.T
    ok = dict(qweight=qweight, qzeros=qzeros, scales=scales, g_idx=layer.g_idx, cq=cq)
    uneven = layer.g_idx.clone()
    uneven[0] = (uneven[0] + 1) % 4  # one group gets 65 inputs
    for change, message in [
        (dict(qzeros=qzeros[:, :1]), r"GPTQ qzeros has shape \(4, 1\), expected \(4, 2\)"),
        (dict(scales=scales[:2]), r"GPTQ scales has shape \(2, 16\), expected \(4, 16\)"),
        (dict(g_idx=layer.g_idx[:128]), r"GPTQ g_idx has shape \(128,\), expected \(256,\)"),
        (dict(qweight=qweight.long()), "GPTQ qweight must be int32, got torch.int64"),
        (dict(qzeros=qzeros.float()), "GPTQ qzeros must be int32"),
        (dict(scales=scales.int()), "GPTQ scales must be finite floats"),
        (dict(scales=scales.clone().fill_(float("inf"))), "GPTQ scales must be finite floats"),
        (dict(g_idx=layer.g_idx.float()), "GPTQ g_idx must be integers"),
        (dict(g_idx=uneven), "each of its 4 groups exactly 64 inputs"),
        (dict(g_idx=layer.g_idx + 1), "each of its 4 groups exactly 64 inputs"),
        (dict(qweight=qweight.reshape(-1)), "a 2-D qweight"),
        (dict(cq=parse(awq(group_size=64))), "needs a config with quant_method 'gptq'"),
    ]:
        with pytest.raises(ValueError, match=message):
            gptq_to_canonical(**{**ok, **change})
    with pytest.raises(ValueError, match="needs a config with quant_method 'awq'"):
        awq_to_canonical(qweight, qzeros, scales, cq)
    with pytest.raises(ValueError, match=r"AWQ qzeros has shape \(4, 2\), expected \(1, 2\)"):
        awq_to_canonical(pack(layer.q.T, 1)[:64], qzeros, scales, parse(awq(group_size=64)))


# ---- packed by the libraries that write these checkpoints ----------------------------------

# (group, act_order, sym, n), K = 256; n a multiple of 32 (auto-gptq and autoawq size their
# packed outputs as n // 32 * 4 words), mostly not of 64
GPTQ_CASES = [
    (32, False, True, 96),
    (32, True, False, 160),
    (64, True, True, 224),
    (64, False, False, 32),
    (128, True, False, 96),
    (128, False, True, 160),
    (-1, False, False, 96),
]
AWQ_CASES = [(32, 96), (64, 160), (128, 224)]  # (group, n)
REFERENCES = {  # import name: [(format, case)]
    "auto_gptq": [("gptq", c) for c in GPTQ_CASES],
    "awq": [("awq", (g, False, False, n)) for g, n in AWQ_CASES],
    "gptqmodel": [(f, c) for f in ("gptq_v2", "gptq") for c in GPTQ_CASES]
    + [("awq", (g, False, False, n)) for g, n in AWQ_CASES],
}
INSTALL = {  # auto-gptq and autoawq come with the test extra
    "auto_gptq": "pip install auto-gptq==0.7.1",
    "awq": "pip install autoawq==0.2.9",
    # GPTQModel's own requirements (torch>=2.14.1, numpy>=2.4.6) clash with the test extra's
    "gptqmodel": "pip install --no-deps gptqmodel==7.7.0 pypcre==0.6.4 logbar==0.4.15 "
    "threadpoolctl==3.8.0 device-smi==0.5.7 tokenicer==0.0.14 defuser==0.0.28 pillow==13.0.0 "
    "(after the test extra)",
}


def _stub_package(name: str) -> None:
    """Lets `name`'s submodules import without its __init__, which auto-gptq 0.7.1 and autoawq
    0.2.9 fill with model classes of older transformers; their packing code needs none."""
    if name in sys.modules:
        return
    module = types.ModuleType(name)
    module.__path__ = list(importlib.util.find_spec(name).submodule_search_locations)
    sys.modules[name] = module


def _pack_with(library: str, fmt: str, case: tuple[int, bool, bool, int]) -> dict:
    """One layer packed, then dequantized ([N, K], fp16), by `library`'s own code."""
    group, act_order, sym, n = case
    # auto-gptq's v1 writer cannot store zero 0 (its zero - 1 overflows into other nibbles)
    layer = random_layer(n, group, act_order, sym, int(library == "auto_gptq"), seed=n + group)
    linear = torch.nn.Linear(K, n, bias=False)
    linear.weight.data = layer.weight.clone()
    scales, zeros = layer.scales.float(), layer.zeros.int()  # [N, groups]
    if library == "auto_gptq":
        _stub_package("auto_gptq")
        from auto_gptq.nn_modules.qlinear.qlinear_cuda import QuantLinear

        m = QuantLinear(4, group, K, n, bias=False)
        m.pack(linear, scales, zeros, layer.g_idx)
        m.scales = m.scales.half()
        tensors = {"qweight": m.qweight, "qzeros": m.qzeros, "scales": m.scales, "g_idx": m.g_idx}
        dequant = m(torch.eye(K, dtype=torch.float16)).T  # its own (CPU) path: x @ W.T
    elif library == "awq":
        _stub_package("awq")
        from awq.modules.linear.gemm import WQLinear_GEMM
        from awq.utils.packing_utils import dequantize_gemm

        m = WQLinear_GEMM.from_linear(linear, 4, group, scales=scales.T, zeros=zeros.T)
        tensors = {"qweight": m.qweight, "qzeros": m.qzeros, "scales": m.scales}
        dequant = dequantize_gemm(m.qweight, m.qzeros, m.scales, 4, group).T
    elif fmt == "awq":
        from gptqmodel.nn_modules.qlinear.torch_awq import AwqTorchLinear
        from gptqmodel.quantization.awq.utils.packing_utils import dequantize_gemm

        m = AwqTorchLinear(4, group, False, False, K, n, register_buffers=True)
        m.pack(linear, scales, zeros)
        tensors = {"qweight": m.qweight, "qzeros": m.qzeros, "scales": m.scales}
        dequant = dequantize_gemm(m.qweight, m.qzeros, m.scales, 4, group).T
    else:
        from gptqmodel.nn_modules.qlinear import PackableQuantLinear
        from gptqmodel.nn_modules.qlinear.torch import TorchLinear
        from gptqmodel.utils.model import convert_gptq_v2_to_v1_format_module

        m = TorchLinear(4, group, sym, act_order, K, n, register_buffers=True)
        m.pack(linear, scales, zeros, layer.g_idx)  # GPTQModel packs v2, true zeros
        dequant = PackableQuantLinear.dequantize_weight(m.eval()).T
        if fmt == "gptq":  # and saves v1 this way
            convert_gptq_v2_to_v1_format_module(
                m, types.SimpleNamespace(bits=4, pack_dtype=torch.int32)
            )
        tensors = {"qweight": m.qweight, "qzeros": m.qzeros, "scales": m.scales, "g_idx": m.g_idx}
    return {**tensors, "weight": layer.weight, "g_idx_made": layer.g_idx, "dequant": dequant}


def _write_references(library: str, out: str) -> None:
    """Child process: every case of `library`, saved to `out`."""
    torch.save([_pack_with(library, fmt, case) for fmt, case in REFERENCES[library]], out)


@functools.cache
def _references(library: str, out: Path) -> list[dict]:
    if importlib.util.find_spec(library) is None:
        pytest.skip(f"{library} is not installed: {INSTALL[library]}")
    code = (
        f"import sys; sys.path[:0] = {sys.path!r}; import importlib; "
        f"importlib.import_module({__name__!r})._write_references({library!r}, {str(out)!r})"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{library} failed to pack:\n{done.stderr[-3000:]}"
    return torch.load(out, weights_only=True)


@pytest.mark.parametrize(
    "library, index", [(lib, i) for lib, cases in REFERENCES.items() for i in range(len(cases))]
)
def test_library_packed(library: str, index: int, tmp_path_factory: pytest.TempPathFactory) -> None:
    fmt, (group, act_order, sym, _) = REFERENCES[library][index]
    out = tmp_path_factory.getbasetemp() / f"{library}.pt"
    ref = _references(library, out)[index]
    if fmt == "awq":
        cq = parse(awq(group_size=group))
        qw = awq_to_canonical(ref["qweight"], ref["qzeros"], ref["scales"], cq)
    else:
        cq = parse(gptq(group_size=group, desc_act=act_order, sym=sym, checkpoint_format=fmt))
        assert torch.equal(ref["g_idx"].long(), ref["g_idx_made"].long())
        qw = gptq_to_canonical(ref["qweight"], ref["qzeros"], ref["scales"], ref["g_idx"], cq)
    assert (qw.perm is not None) == act_order
    inverse = torch.argsort(qw.perm.long()) if act_order else torch.arange(K)
    ours = dequantize_reference(qw)[:, inverse]  # back to the checkpoint's input order
    assert torch.equal(ours, ref["weight"])  # the quantized values packed
    assert torch.equal(ours.half(), ref["dequant"])  # the library's own dequantization
