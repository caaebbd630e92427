"""4-bit GPTQ and AWQ checkpoints, converted tensor by tensor at load into blendrt's
canonical int4 (ops/quant.py: qweight [N, K // 2], scales and zeros [N, K // G], perm).

One linear layer of K inputs, N outputs, group size G, as these checkpoints store it:

GPTQ (AutoGPTQ, GPTQModel)
    qweight  int32 [K / 8, N]    packed along K: input 8r + i in bits 4i..4i+3 of row r
    qzeros   int32 [K / G, N / 8]  packed along N the same way. checkpoint_format "gptq"
                                 (v1) stores zero - 1, subtracted from the whole word
                                 (0x11111111, borrows included); "gptq_v2" the zeros
    scales   fp16  [K / G, N]
    g_idx    int32 [K]           each input's group; act-order (desc_act) shuffles it
    W[n, k] = (q[k, n] - z[g_idx[k], n]) * s[g_idx[k], n]
AWQ, version GEMM (AutoAWQ)
    qweight  int32 [K, N / 8]    packed along N: output 8c + AWQ_ORDER[i] in nibble i of c
    qzeros   int32 [K / G, N / 8]  the same order; the zeros themselves
    scales   fp16  [K / G, N]

GPTQ's group_size -1 (one group over all inputs) is carried as groups of 128 inputs that
share a scale and zero point; g_idx, not desc_act, decides the permutation. A v1 zero point
of 0 is read as GPTQModel writes it (the word borrow); AutoGPTQ's own writer cannot store it.
A layer's bias, if any, is stored and loaded as usual.

Use: `checkpoint_quantization(config)` once; per layer, `expected_shapes` against the
safetensors headers, then the `linear_tensor_names` tensors into `gptq_to_canonical` or
`awq_to_canonical`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from blendrt.ops.quant import GROUP_SIZES, QuantizedWeight, QuantScheme, pack_int4

GPTQ_FORMATS = ("gptq", "gptq_v2")
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i of an AWQ word holds output AWQ_ORDER[i]
MAX_FEATURES = 1 << 22  # inputs or outputs of one layer; larger headers are refused
MAX_SKIPPED_MODULES = 4096  # entries of AWQ's modules_to_not_convert
_PER_CHANNEL_GROUP = 128  # how GPTQ's group_size -1 is carried

_NIBBLES = torch.arange(0, 32, 4, dtype=torch.int32)  # shift of nibble i of an int32
_AWQ_SHIFTS = 4 * torch.tensor(sorted(range(8), key=AWQ_ORDER.__getitem__), dtype=torch.int32)
_BYTES = torch.arange(0, 32, 8, dtype=torch.int32)


@dataclass(frozen=True)
class CheckpointQuant:
    """How a checkpoint's linear layers were quantized (its config.json quantization_config)."""

    method: str  # "gptq" | "awq"
    bits: int  # 4
    group_size: int  # 32, 64 or 128; GPTQ also -1 (one group over all inputs)
    desc_act: bool = False  # GPTQ act-order: g_idx shuffles the inputs' groups
    sym: bool = True  # informative: zero points are read from qzeros either way
    checkpoint_format: str = "gptq"  # GPTQ: "gptq" (v1, zero - 1) | "gptq_v2"; AWQ: "gemm"
    modules_to_not_convert: tuple[str, ...] = ()  # AWQ: modules (name parts) left in float

    @property
    def scheme(self) -> QuantScheme:
        """The canonical int4 scheme the converted layers use (always with zero points)."""
        group = _PER_CHANNEL_GROUP if self.group_size == -1 else self.group_size
        return QuantScheme(4, group, zero_point=True)


def checkpoint_quantization(hf_config: dict[str, Any]) -> CheckpointQuant | None:
    """The checkpoint quantization config.json declares (None: a float checkpoint).
    Raises ValueError, naming the method or setting, for anything blendrt cannot read."""
    if not isinstance(hf_config, dict):
        raise ValueError("config.json must hold a JSON object")
    qc = hf_config.get("quantization_config")
    if qc is None:
        return None
    if not isinstance(qc, dict):
        raise ValueError(f"config.json: quantization_config must be an object, got {qc!r}")
    method = _str(qc, "quant_method", None)
    if method == "gptq":
        return _gptq_config(qc)
    if method == "awq":
        return _awq_config(qc)
    raise ValueError(
        f"quantization_config: quant_method {method!r} is not supported; blendrt reads 4-bit "
        "GPTQ and AWQ (GEMM) checkpoints, or quantizes a float checkpoint at load"
    )


def _gptq_config(qc: dict[str, Any]) -> CheckpointQuant:
    bits, group = _int(qc, ("bits",), None), _int(qc, ("group_size",), 128)
    fmt = _str(qc, "checkpoint_format", None) or _str(qc, "format", "gptq")
    fmt = "marlin" if _bool(qc, "is_marlin_format", False) else fmt
    pack_dtype = _str(qc, "pack_dtype", "int32")
    _need(bits == 4, f"GPTQ with bits={bits}", "4 only")
    _need(group in (*GROUP_SIZES, -1), f"GPTQ group_size {group}", "32, 64, 128 or -1")
    _need(fmt in GPTQ_FORMATS, f"GPTQ checkpoint_format {fmt!r}", "gptq or gptq_v2")
    _need(pack_dtype in ("int32", "torch.int32"), f"GPTQ pack_dtype {pack_dtype!r}", "int32")
    _need(not _bool(qc, "lm_head", False), "GPTQ with a quantized lm_head (lm_head: true)")
    _need(not qc.get("dynamic"), "GPTQ with per-module overrides (dynamic)")
    desc_act, sym = _bool(qc, "desc_act", False), _bool(qc, "sym", True)
    return CheckpointQuant("gptq", 4, group, desc_act, sym, fmt)


def _awq_config(qc: dict[str, Any]) -> CheckpointQuant:
    bits, group = _int(qc, ("bits", "w_bit"), None), _int(qc, ("group_size", "q_group_size"), 128)
    version, backend = _str(qc, "version", "gemm"), _str(qc, "backend", "autoawq")
    _need(bits == 4, f"AWQ with bits={bits}", "4 only")
    _need(group in GROUP_SIZES, f"AWQ group_size {group}", "32, 64 or 128")
    _need(version == "gemm", f"AWQ version {version!r}", "gemm only")
    _need(backend == "autoawq", f"AWQ backend {backend!r}", "autoawq packing only")
    _need(_bool(qc, "zero_point", True), "AWQ without zero points (zero_point: false)")
    skipped = qc.get("modules_to_not_convert") or []
    if not (
        isinstance(skipped, list)
        and len(skipped) <= MAX_SKIPPED_MODULES
        and all(isinstance(m, str) and 0 < len(m) <= 1024 for m in skipped)
    ):
        raise ValueError(
            "quantization_config: modules_to_not_convert must be a list of at most "
            f"{MAX_SKIPPED_MODULES} module names, got {skipped!r:.200}"
        )
    return CheckpointQuant("awq", 4, group, False, False, "gemm", tuple(skipped))


def _need(ok: bool, what: str, supported: str = "") -> None:
    if not ok:
        hint = f" ({supported})" if supported else ""
        raise ValueError(f"quantization_config: {what} is not supported{hint}")


def _int(qc: dict[str, Any], keys: tuple[str, ...], default: int | None) -> int:
    key = next((k for k in keys if qc.get(k) is not None), None)
    value = qc[key] if key else default
    if type(value) is not int:  # bool is not an int here
        raise ValueError(f"quantization_config: {key or keys[0]} must be an int, got {value!r}")
    return value


def _bool(qc: dict[str, Any], key: str, default: bool) -> bool:
    value = qc.get(key)
    if value is None:
        return default
    if type(value) is not bool:
        raise ValueError(f"quantization_config: {key} must be true or false, got {value!r}")
    return value


def _str(qc: dict[str, Any], key: str, default: str | None) -> str | None:
    value = qc.get(key)
    if value is None:
        return default
    if not isinstance(value, str) or len(value) > 64:
        raise ValueError(f"quantization_config: {key} must be a short string, got {value!r:.80}")
    return value.lower()


# ---- tensors -------------------------------------------------------------------------------


def linear_tensor_names(prefix: str, cq: CheckpointQuant) -> list[str]:
    """The checkpoint tensors of one quantized linear layer, e.g. prefix
    "model.layers.0.self_attn.q_proj" -> [prefix.qweight, prefix.qzeros, prefix.scales,
    prefix.g_idx (GPTQ only)]."""
    suffixes = ["qweight", "qzeros", "scales"] + (["g_idx"] if cq.method == "gptq" else [])
    return [f"{prefix}.{s}" for s in suffixes]


def expected_shapes(
    prefix: str, in_features: int, out_features: int, cq: CheckpointQuant
) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} of one quantized linear layer, to check headers against before
    anything is allocated. Raises ValueError if the layer's sizes cannot be carried."""
    return {f"{prefix}.{s}": shape for s, shape in _shapes(in_features, out_features, cq).items()}


def _shapes(k: int, n: int, cq: CheckpointQuant) -> dict[str, tuple[int, ...]]:
    group = cq.scheme.group_size
    for what, size, multiple in (("in_features", k, group), ("out_features", n, 8)):
        if type(size) is not int or not 1 <= size <= MAX_FEATURES or size % multiple:
            raise ValueError(
                f"{cq.method.upper()} int4 (group size {cq.group_size}) needs {what} to be a "
                f"multiple of {multiple} in [1, {MAX_FEATURES}], got {size!r}"
            )
    groups = 1 if cq.group_size == -1 else k // group
    shapes = {"qzeros": (groups, n // 8), "scales": (groups, n)}
    if cq.method == "gptq":
        return {"qweight": (k // 8, n), **shapes, "g_idx": (k,)}
    return {"qweight": (k, n // 8), **shapes}


def _dims(qweight: torch.Tensor, cq: CheckpointQuant, method: str) -> tuple[int, int]:
    """(K, N) of a layer from its packed qweight."""
    if cq.method != method or qweight.dim() != 2:
        raise ValueError(
            f"{method}_to_canonical needs a config with quant_method {method!r} and a 2-D "
            f"qweight, got {cq.method!r} and shape {tuple(qweight.shape)}"
        )
    rows, cols = qweight.shape
    return (rows * 8, cols) if method == "gptq" else (rows, cols * 8)


def _check(cq: CheckpointQuant, k: int, n: int, **tensors: torch.Tensor) -> None:
    """Shapes against the layer's, and dtypes: int32 packing, float scales, integer g_idx."""
    for name, shape in _shapes(k, n, cq).items():
        t, what = tensors[name], f"{cq.method.upper()} {name}"
        if tuple(t.shape) != shape:
            raise ValueError(f"{what} has shape {tuple(t.shape)}, expected {shape}")
        if name in ("qweight", "qzeros") and t.dtype != torch.int32:
            raise ValueError(f"{what} must be int32, got {t.dtype}")
        if name == "scales" and not (t.is_floating_point() and torch.isfinite(t).all()):
            raise ValueError(f"{what} must be finite floats ({t.dtype})")
        if name == "g_idx" and t.dtype not in (torch.int16, torch.int32, torch.int64):
            raise ValueError(f"{what} must be integers, got {t.dtype}")


def _unpack(packed: torch.Tensor, shifts: torch.Tensor, dim: int) -> torch.Tensor:
    """int32 words -> their 8 nibbles (uint8), nibble i placed at index 8w + i along `dim`."""
    nibbles = (packed.unsqueeze(dim + 1) >> shifts.view(-1, *[1] * (packed.dim() - dim - 1))) & 15
    shape = list(packed.shape)
    shape[dim] *= 8
    return nibbles.to(torch.uint8).reshape(shape)


def _canonical(
    cq: CheckpointQuant,
    packed: torch.Tensor,  # uint8 [N, K / 2]
    scales: torch.Tensor,  # [K / G, N]
    zeros: torch.Tensor,  # uint8 [K / G, N]
    perm: torch.Tensor | None,  # [K]
    scale_dtype: torch.dtype,
) -> QuantizedWeight:
    reps = packed.shape[1] * 2 // _PER_CHANNEL_GROUP if cq.group_size == -1 else 1
    scales, zeros = (t.T.repeat_interleave(reps, 1).contiguous() for t in (scales, zeros))
    perm = None if perm is None else perm.to(torch.int32)
    return QuantizedWeight(cq.scheme, packed.contiguous(), scales.to(scale_dtype), zeros, perm)


def gptq_to_canonical(
    qweight: torch.Tensor,  # int32 [K / 8, N]
    qzeros: torch.Tensor,  # int32 [K / G, N / 8]
    scales: torch.Tensor,  # float [K / G, N]
    g_idx: torch.Tensor | None,  # int [K]; None: the trivial k // G
    cq: CheckpointQuant,
    scale_dtype: torch.dtype = torch.float16,
) -> QuantizedWeight:
    """One GPTQ linear layer (CPU tensors) -> canonical int4. Act-order g_idx becomes
    perm = a stable argsort of g_idx, the weight's inputs reordered to match."""
    k, n = _dims(qweight, cq, "gptq")
    group = k if cq.group_size == -1 else cq.group_size
    trivial = torch.arange(k) // group  # [K]
    g_idx = trivial if g_idx is None else g_idx
    _check(cq, k, n, qweight=qweight, qzeros=qzeros, scales=scales, g_idx=g_idx)
    if cq.checkpoint_format == "gptq":  # v1: undo the word-wide "- 0x11111111"
        qzeros = (qzeros.long() + 0x11111111) & 0xFFFFFFFF
    zeros = _unpack(qzeros, _NIBBLES, 1)  # [K / G, N]
    if torch.equal(g_idx.long(), trivial):  # a word's 4 bytes are 4 canonical bytes
        q = (qweight.T.unsqueeze(-1) >> _BYTES) & 0xFF  # [N, K / 8, 4]
        return _canonical(
            cq, q.to(torch.uint8).reshape(n, k // 2), scales, zeros, None, scale_dtype
        )
    perm = torch.argsort(g_idx.long(), stable=True)  # [K]
    if not torch.equal(g_idx.long()[perm], trivial):
        raise ValueError(
            f"GPTQ g_idx must give each of its {k // group} groups exactly {group} inputs"
        )
    q = _unpack(qweight, _NIBBLES, 0)[perm]  # [K, N], inputs in perm order
    return _canonical(cq, pack_int4(q.T), scales, zeros, perm, scale_dtype)


def awq_to_canonical(
    qweight: torch.Tensor,  # int32 [K, N / 8]
    qzeros: torch.Tensor,  # int32 [K / G, N / 8]
    scales: torch.Tensor,  # float [K / G, N]
    cq: CheckpointQuant,
    scale_dtype: torch.dtype = torch.float16,
) -> QuantizedWeight:
    """One AWQ (GEMM) linear layer (CPU tensors) -> canonical int4."""
    k, n = _dims(qweight, cq, "awq")
    _check(cq, k, n, qweight=qweight, qzeros=qzeros, scales=scales)
    q = _unpack(qweight, _AWQ_SHIFTS, 1)  # [K, N], outputs in natural order
    zeros = _unpack(qzeros, _AWQ_SHIFTS, 1)  # [K / G, N]
    return _canonical(cq, pack_int4(q.T), scales, zeros, None, scale_dtype)
