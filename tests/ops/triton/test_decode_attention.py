"""Split-KV paged decode attention against the torch reference and plain SDPA.

Without a GPU the kernels run in Triton's interpreter (tests/conftest.py), so cases stay
small. Every case reads K/V through real pool views (page stride > tokens_per_page * H * D)
whose unused pages and slots hold NaN, with the sequences' pages randomly permuted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from blendrt.cache.pool import KVGeometry, PagePool, page_bytes_for
from blendrt.ops.reference import paged_attention_reference
from blendrt.ops.triton import decode_attention as da

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _fill(k_cache, v_cache, lens, tpp, free, gen, key_shift=None):
    """Writes random K/V for each sequence into pages taken off `free` (shuffled page ids);
    `key_shift` ([L, H_kv, D]) is added to the keys of positions 0..L-1."""
    _, _, num_kv_heads, head_dim = k_cache.shape
    need = [-(-n // tpp) for n in lens]
    block_tables = torch.full((len(lens), max(need) + 2), -1, dtype=torch.int32)  # [B, W]
    keys, values = [], []  # B x [L, H_kv, D]
    for b, (n, pages) in enumerate(zip(lens, need, strict=True)):
        ids = torch.tensor([free.pop() for _ in range(pages)])
        block_tables[b, :pages] = ids
        pos = torch.arange(n)
        for cache, out in ((k_cache, keys), (v_cache, values)):
            data = torch.randn(n, num_kv_heads, head_dim, generator=gen)
            if key_shift is not None and cache is k_cache:
                data += key_shift[:n]
            data = data.to(cache.dtype)
            cache[ids[pos // tpp].to(DEVICE), (pos % tpp).to(DEVICE)] = data.to(DEVICE)
            out.append(data)
    return block_tables.to(DEVICE), keys, values


def _shuffled(num_pages, gen):
    return torch.randperm(num_pages, generator=gen).tolist()


def _member(pool, name, num_kv_heads, head_dim, dtype):
    """Layer 1 of a 2-layer member: a non-zero offset and a page stride past its own rows."""
    view = pool.register_member(name, KVGeometry(2, num_kv_heads, head_dim, dtype))
    return view.k_caches[1], view.v_caches[1], view.tokens_per_page


def _pool(geometry_tpp, num_pages):
    geometry = KVGeometry(2, *geometry_tpp[:3])
    pool = PagePool(page_bytes_for([geometry], geometry_tpp[3]), num_pages=num_pages, device=DEVICE)
    pool.buffer.fill_(255)  # NaN in fp32, fp16 and bf16: pages never written stay NaN
    return pool


def _check(q, k_cache, v_cache, block_tables, lens, keys, values, scale, **kwargs):
    context_lens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    out = da.decode_attention(
        q, k_cache, v_cache, block_tables, context_lens, scale, max_context_len=max(lens), **kwargs
    )  # [B, H_q, D]
    assert out.shape == q.shape and out.dtype == q.dtype and torch.isfinite(out).all()
    cu = list(range(len(lens) + 1))
    ref = paged_attention_reference(q, k_cache, v_cache, block_tables, cu, lens, scale)
    tol = TOL[q.dtype]
    torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=tol)
    group = q.shape[1] // k_cache.shape[2]
    for b, (k, v) in enumerate(zip(keys, values, strict=True)):  # plain SDPA on contiguous K/V
        k, v = (x.to(DEVICE).float().repeat_interleave(group, 1).transpose(0, 1) for x in (k, v))
        want = F.scaled_dot_product_attention(q[b, :, None].float(), k, v, scale=scale)[:, 0]
        torch.testing.assert_close(out[b].float(), want, atol=tol, rtol=tol)


CASES = [  # head_dim, group, tokens_per_page, dtype
    (64, 1, 16, torch.float32),
    (64, 5, 48, torch.float16),
    (80, 2, 100, torch.float16),
    (80, 4, 16, torch.float32),
    (96, 4, 48, torch.float32),
    (96, 2, 100, torch.float16),
    (128, 8, 16, torch.float16),
    (128, 1, 48, torch.float32),
    (256, 5, 48, torch.float16),
    (256, 1, 100, torch.float32),
]
if DEVICE.type == "cuda":  # the interpreter computes bf16 wrongly: only on a GPU
    CASES += [(128, 8, 16, torch.bfloat16), (80, 3, 100, torch.bfloat16)]


@pytest.mark.parametrize(("head_dim", "group", "tpp", "dtype"), CASES)
def test_matches_references(head_dim, group, tpp, dtype):
    gen = torch.Generator().manual_seed(head_dim * 100 + group * 10 + tpp)
    lens = [1, 150, 300]  # one token; ending mid-page; ending mid-page or on a page's end
    num_kv_heads, num_pages = 2, -(-451 // tpp) + 6
    pool = _pool((num_kv_heads, head_dim, dtype, tpp), num_pages)
    k_cache, v_cache, got_tpp = _member(pool, "m", num_kv_heads, head_dim, dtype)
    assert got_tpp == tpp and k_cache.stride(0) > tpp * num_kv_heads * head_dim
    block_tables, keys, values = _fill(k_cache, v_cache, lens, tpp, _shuffled(num_pages, gen), gen)
    q = torch.randn(len(lens), num_kv_heads * group, head_dim, generator=gen).to(DEVICE, dtype)
    _check(q, k_cache, v_cache, block_tables, lens, keys, values, 1.5 / head_dim**0.5)


@pytest.mark.parametrize("num_splits", [1, 3, 16])
def test_forced_splits_including_empty_ones(num_splits):
    gen = torch.Generator().manual_seed(num_splits)
    lens = [1, 5, 130, 300]  # 16 splits of >= 64 tokens: most hold nothing
    pool = _pool((2, 64, torch.float32, 48), 20)
    k_cache, v_cache, tpp = _member(pool, "m", 2, 64, torch.float32)
    block_tables, keys, values = _fill(k_cache, v_cache, lens, tpp, _shuffled(20, gen), gen)
    q = torch.randn(4, 4, 64, generator=gen).to(DEVICE)
    _check(q, k_cache, v_cache, block_tables, lens, keys, values, 0.2, num_splits=num_splits)


def test_merge_over_many_chunks_of_splits():
    gen = torch.Generator().manual_seed(5)
    lens = [600, 3]  # fp32 D=256: 16-token blocks, so 38 of 40 splits hold tokens (2 chunks)
    pool = _pool((1, 256, torch.float32, 16), 50)
    k_cache, v_cache, tpp = _member(pool, "m", 1, 256, torch.float32)
    q = torch.randn(2, 2, 256, generator=gen)
    shift = torch.zeros(600, 1, 256)
    shift[520:] = 0.1 * q[0].mean(0)  # the second chunk's splits outscore the first's
    block_tables, keys, values = _fill(k_cache, v_cache, lens, tpp, _shuffled(50, gen), gen, shift)
    q = q.to(DEVICE)
    _check(q, k_cache, v_cache, block_tables, lens, keys, values, 0.15, num_splits=40)


def test_sequence_without_tokens_gives_zeros():
    """Never scheduled (a decode step always has its new token), but must not poison the batch."""
    gen = torch.Generator().manual_seed(3)
    pool = _pool((1, 64, torch.float32, 16), 4)
    k_cache, v_cache, tpp = _member(pool, "m", 1, 64, torch.float32)
    block_tables, _, _ = _fill(k_cache, v_cache, [20], tpp, _shuffled(4, gen), gen)
    block_tables = torch.cat([torch.full_like(block_tables, -1), block_tables])  # [2, W]
    q = torch.randn(2, 2, 64, generator=gen).to(DEVICE)
    context_lens = torch.tensor([0, 20], dtype=torch.int32, device=DEVICE)
    for num_splits in (None, 8):
        out = da.decode_attention(
            q, k_cache, v_cache, block_tables, context_lens, 0.1, max_context_len=20,
            num_splits=num_splits,
        )  # fmt: skip
        assert torch.equal(out[0], torch.zeros_like(out[0]))
        ref = paged_attention_reference(
            q[1:], k_cache, v_cache, block_tables[1:], [0, 1], [20], 0.1
        )
        torch.testing.assert_close(out[1:], ref, atol=1e-5, rtol=1e-5)


def test_mixed_batch_with_strided_q():
    gen = torch.Generator().manual_seed(7)
    lens = [1, 300, *torch.randint(2, 300, (6,), generator=gen).tolist()]
    num_kv_heads, group, head_dim = 1, 4, 64
    pool = _pool((num_kv_heads, head_dim, torch.float16, 16), 130)
    k_cache, v_cache, tpp = _member(pool, "m", num_kv_heads, head_dim, torch.float16)
    block_tables, keys, values = _fill(k_cache, v_cache, lens, tpp, _shuffled(130, gen), gen)
    qkv = torch.randn(len(lens), (group + 2) * num_kv_heads, head_dim, generator=gen)
    q = qkv.to(DEVICE, torch.float16)[:, : group * num_kv_heads]  # as split off a fused qkv
    assert not q.is_contiguous()
    _check(q, k_cache, v_cache, block_tables, lens, keys, values, 0.125)


def test_two_members_share_one_pool():
    gen = torch.Generator().manual_seed(11)
    geometries = {"a": (2, 64, torch.float32), "b": (1, 80, torch.float16)}
    pool = PagePool(51200, num_pages=24, device=DEVICE)  # a: 25 tokens/page, b: 80
    pool.buffer.fill_(255)
    lens = {"a": [130, 1, 47], "b": [300, 9]}  # 9 + 5 of the 24 pages, interleaved at random
    free = torch.randperm(24, generator=gen).tolist()
    batches = {}
    for name, geometry in geometries.items():
        k_cache, v_cache, tpp = _member(pool, name, *geometry)
        batches[name] = (k_cache, v_cache, *_fill(k_cache, v_cache, lens[name], tpp, free, gen))
    assert pool.members["a"].tokens_per_page == 25 and pool.members["b"].tokens_per_page == 80
    for name, (num_kv_heads, head_dim, dtype) in geometries.items():  # after both wrote
        q = torch.randn(len(lens[name]), 3 * num_kv_heads, head_dim, generator=gen)
        _check(q.to(DEVICE, dtype), *batches[name][:3], lens[name], *batches[name][3:], 0.1)


def test_rejects_bad_inputs():
    pool = _pool((1, 64, torch.float16, 16), 4)
    k_cache, v_cache, _ = _member(pool, "m", 1, 64, torch.float16)
    block_tables = torch.zeros((1, 1), dtype=torch.int32, device=DEVICE)
    context_lens = torch.ones(1, dtype=torch.int32, device=DEVICE)
    k_cache[0].normal_()
    v_cache[0].normal_()
    q = torch.randn(1, 2, 64, device=DEVICE, dtype=torch.float16)

    def call(q, k, **kw):
        return da.decode_attention(q, k, v_cache, block_tables, context_lens, 1.0, **kw)

    assert torch.isfinite(call(q, k_cache, max_context_len=1)).all()
    with pytest.raises(ValueError, match="dtypes"):
        call(q.float(), k_cache, max_context_len=1)
    shifted = torch.empty(k_cache.numel() + 1, dtype=k_cache.dtype, device=DEVICE)[1:]
    with pytest.raises(ValueError, match="aligned"):  # 2 bytes off: the kernels' hints fail
        call(q, shifted.view(4, 16, 1, 64), max_context_len=1)


def test_num_splits_scale_with_context(monkeypatch):
    monkeypatch.setattr(da, "_sm_count", lambda device: 132)  # an H100
    cuda = torch.device("cuda")
    splits = [da._num_splits(8, n, cuda) for n in (1, 128, 1024, 4096, 32768, 131072)]
    assert splits == sorted(splits) and splits[0] == splits[1] == 1 and splits[-1] == da.MAX_SPLITS
    assert splits[2] == 1024 // da.MIN_SPLIT_TOKENS  # no split under MIN_SPLIT_TOKENS
    assert da._num_splits(16 * 8, 2048, cuda) * 16 * 8 >= 4 * 132  # a few waves at batch 16
    assert da._num_splits(da.PROGRAMS_PER_SM * 132, 32768, cuda) == 1  # the batch fills it


# Compiles aot_targets() ahead of time in a process without the interpreter; prints one
# JSON line per kernel with its resource usage from cuobjdump.
_AOT_SCRIPT = r"""
import json, os, re, subprocess, sys, tempfile
import torch, triton
from triton.backends.compiler import GPUTarget
from blendrt.ops.triton.decode_attention import aot_targets
cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
for arch, head_dim, group, dtype in json.loads(sys.argv[1]):
    for t in aot_targets(head_dim, group, getattr(torch, dtype)):
        src = triton.compiler.ASTSource(t["fn"], t["signature"], constexprs=t["constexprs"])
        options = {"num_warps": t["num_warps"], "num_stages": t["num_stages"]}
        kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(kernel.asm["cubin"])
            f.flush()
            usage = subprocess.run([cuobjdump, "--dump-resource-usage", f.name],
                                   capture_output=True, text=True, check=True).stdout
        regs, stack = re.search(r"REG:(\d+) STACK:(\d+)", usage).groups()
        print(json.dumps({"arch": arch, "head_dim": head_dim, "group": group, "dtype": dtype,
                          "kernel": t["fn"].__name__, "regs": int(regs), "stack": int(stack),
                          "shared": kernel.metadata.shared}))
"""
SHARED_LIMIT = {90: 228 * 1024, 80: 164 * 1024}
F16, BF16 = "float16", "bfloat16"
if os.environ.get("BLENDRT_SLOW_TESTS") == "1":  # the whole matrix: ~2 minutes on 2 cores
    AOT_MATRIX = [
        (a, d, g, t) for a in (90, 80) for d in (64, 80, 96, 128, 256) for g in (1, 2, 4, 8)
        for t in (F16, BF16)
    ]  # fmt: skip
else:  # every head dim and group on sm_90, and two sm_80 builds: ~15 s
    AOT_MATRIX = [
        (90, 64, 1, F16), (90, 80, 2, BF16), (90, 96, 4, F16), (90, 128, 8, BF16),
        (90, 256, 8, F16), (80, 128, 4, F16), (80, 256, 1, BF16),
    ]  # fmt: skip


def test_aot_compiles_without_spills():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}

    def spawn(part):
        cmd = [sys.executable, "-c", _AOT_SCRIPT, json.dumps(part)]
        return subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    procs = [spawn(AOT_MATRIX[i::2]) for i in range(2)]  # two processes: CI has two cores
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-4000:]
        results += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(results) == 2 * len(AOT_MATRIX)
    for r in sorted(results, key=lambda r: (r["kernel"], -r["arch"], r["head_dim"], r["group"])):
        print(r)  # shown with -s: the resource figures per config
        assert r["shared"] <= SHARED_LIMIT[r["arch"]], r
        assert r["stack"] == 0 and r["regs"] <= 255, r  # no local-memory spills
