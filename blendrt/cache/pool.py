"""The shared KV page pool: ONE byte allocation, fixed-size pages, per-member typed views.

Every member of a blend stores its K/V in the same `torch.uint8` tensor. A page holds all of
one member's layers for `tokens_per_page` consecutive tokens of one sequence; the member's
`tokens_per_page` is how many of its tokens fit in `page_bytes`. Any member may use any page:
the pool is not partitioned, and views are zero-copy `as_strided` reinterpretations.

Layout of one page for a member (L layers, H KV heads, head dim D, element size b):

    | layer 0 K [tpp, H, D] | layer 0 V [tpp, H, D] | layer 1 K | ... | layer L-1 V | waste |
    0                                                         tpp * 2*L*H*D*b    page_bytes

With a quantized KV cache (blendrt/ops/kv_quant.py) values take one byte each (b = 1) and the
float16 scales of each layer's K and V rows follow them in the same page, so a page stays
self-contained (any page, any member; copying a page copies its scales):

    | layer 0 K | layer 0 V | ... | layer L-1 V | layer 0 K scales [tpp, H] | ... | waste |
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from blendrt.config import KV_CACHE_DTYPES

#: Page sizes are multiples of this, so every member's rows stay aligned for vector loads.
PAGE_ALIGNMENT = 256
#: {quantized cache dtype: the element type its values are stored as}
KV_STORAGE = {"int8": torch.int8, "fp8_e4m3": torch.float8_e4m3fn}
SCALE_BYTES = 2  # a quantized (token, head) row's float16 scale


@dataclass(frozen=True)
class KVGeometry:
    """What a member stores per token: K and V for each layer and KV head.

    `cache_dtype` "auto" stores K/V in the model's dtype; "int8" and "fp8_e4m3" store each
    (token, head) row quantized, one byte per element, with its own float16 scale (amax /
    127, or amax / 448 for fp8): D + 2 bytes per head instead of D * b."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype  # the model's activations
    cache_dtype: str = "auto"
    element_size: int = field(init=False)  # bytes of a stored K/V element
    bytes_per_token: int = field(init=False)

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_kv_heads", "head_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(self.dtype, torch.dtype) or not self.dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating torch.dtype, got {self.dtype!r}")
        if self.cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(
                f"kv cache dtype must be one of {', '.join(KV_CACHE_DTYPES)}, "
                f"got {self.cache_dtype!r}"
            )
        quantized = self.cache_dtype != "auto"
        element_size = 1 if quantized else torch.empty((), dtype=self.dtype).element_size()
        row = self.head_dim * element_size + (SCALE_BYTES if quantized else 0)
        object.__setattr__(self, "element_size", element_size)
        object.__setattr__(self, "bytes_per_token", 2 * self.num_layers * self.num_kv_heads * row)

    @property
    def quantized(self) -> bool:
        return self.cache_dtype != "auto"


@dataclass(frozen=True)
class MemberKV:
    """A member's zero-copy view of the pool: per layer, K and V as
    `[num_pages, tokens_per_page, num_kv_heads, head_dim]` tensors over the shared bytes."""

    name: str
    geometry: KVGeometry
    tokens_per_page: int
    k_caches: tuple[torch.Tensor, ...]  # L x [num_pages, tokens_per_page, H_kv, D]
    v_caches: tuple[torch.Tensor, ...]  # L x [num_pages, tokens_per_page, H_kv, D]
    wasted_bytes_per_page: int
    # Quantized K/V (int8, fp8_e4m3): each (token, head) row's float16 scale, else None.
    k_scales: tuple[torch.Tensor, ...] | None = None  # L x [num_pages, tokens_per_page, H_kv]
    v_scales: tuple[torch.Tensor, ...] | None = None  # L x [num_pages, tokens_per_page, H_kv]

    @property
    def num_slots(self) -> int:
        """Flat slot ids of this member run over [0, num_pages * tokens_per_page)."""
        return self.k_caches[0].shape[0] * self.tokens_per_page


def page_bytes_for(geometries: Iterable[KVGeometry], min_tokens_per_page: int = 16) -> int:
    """The smallest aligned page size giving every member at least `min_tokens_per_page`."""
    if min_tokens_per_page <= 0:
        raise ValueError(f"min_tokens_per_page must be positive, got {min_tokens_per_page}")
    largest = max((g.bytes_per_token for g in geometries), default=0)
    if largest == 0:
        raise ValueError("page_bytes_for needs at least one geometry")
    need = largest * min_tokens_per_page
    return -(-need // PAGE_ALIGNMENT) * PAGE_ALIGNMENT


def num_pages_for(
    page_bytes: int, *, num_pages: int | None = None, pool_bytes: int | None = None
) -> int:
    """How many pages a pool gets: `num_pages`, or as many as fit in `pool_bytes` (exactly
    one of the two). NOTE: the one place a pool's size in pages is decided."""
    if (num_pages is None) == (pool_bytes is None):
        raise ValueError("size the pool with exactly one of num_pages, pool_bytes")
    if pool_bytes is not None:
        if not isinstance(pool_bytes, int) or pool_bytes < page_bytes:
            raise ValueError(
                f"pool_bytes={pool_bytes} is smaller than one page ({page_bytes} bytes)"
            )
        num_pages = pool_bytes // page_bytes
    if not isinstance(num_pages, int) or num_pages <= 0:
        raise ValueError(f"num_pages must be a positive int, got {num_pages!r}")
    return num_pages


class PagePool:
    """One contiguous `torch.uint8` allocation cut into `num_pages` pages of `page_bytes`.

    Size it with exactly one of `num_pages` or `pool_bytes` (see `num_pages_for`).
    """

    def __init__(
        self,
        page_bytes: int,
        *,
        num_pages: int | None = None,
        pool_bytes: int | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        if not isinstance(page_bytes, int) or page_bytes <= 0 or page_bytes % PAGE_ALIGNMENT:
            raise ValueError(
                f"page_bytes must be a positive multiple of {PAGE_ALIGNMENT}, got {page_bytes!r}"
            )
        self.device = torch.device(device)
        self.page_bytes = page_bytes
        self.num_pages = num_pages_for(page_bytes, num_pages=num_pages, pool_bytes=pool_bytes)
        self.buffer = torch.empty(
            self.num_pages * page_bytes, dtype=torch.uint8, device=self.device
        )  # [num_pages * page_bytes]
        self.members: dict[str, MemberKV] = {}  # {name: view}

    def copy_page(self, src: int, dst: int) -> None:
        """Copies page src's bytes (every layer of every member view) into page dst."""
        pages = self.buffer.view(self.num_pages, self.page_bytes)
        pages[dst].copy_(pages[src])

    @property
    def pool_bytes(self) -> int:
        return self.num_pages * self.page_bytes

    def tokens_per_page(self, geometry: KVGeometry) -> int:
        return self.page_bytes // geometry.bytes_per_token

    def register_member(self, name: str, geometry: KVGeometry) -> MemberKV:
        """Gives member `name` its typed K/V views of every page of the pool."""
        if name in self.members:
            raise ValueError(f"member {name!r} is already registered in the pool")
        tokens_per_page = self.tokens_per_page(geometry)
        if tokens_per_page < 1:
            raise ValueError(
                f"member {name!r} needs {geometry.bytes_per_token} bytes per token, more than "
                f"a page ({self.page_bytes} bytes); use page_bytes_for() to size pages"
            )
        g = geometry
        storage = KV_STORAGE[g.cache_dtype] if g.quantized else g.dtype
        typed = self.buffer.view(storage)  # [num_pages * page_bytes / element_size]
        page_elems = self.page_bytes // g.element_size
        row = g.num_kv_heads * g.head_dim
        block = tokens_per_page * row  # elements of one layer's K (or V) in a page
        shape = (self.num_pages, tokens_per_page, g.num_kv_heads, g.head_dim)
        stride = (page_elems, row, g.head_dim, 1)
        k_caches = tuple(
            typed.as_strided(shape, stride, storage_offset=(2 * layer) * block)
            for layer in range(g.num_layers)
        )
        v_caches = tuple(
            typed.as_strided(shape, stride, storage_offset=(2 * layer + 1) * block)
            for layer in range(g.num_layers)
        )
        k_scales = v_scales = None
        if g.quantized:
            # The scales follow every layer's K/V values: float16 [tpp, H] per layer and K/V.
            halves = self.buffer.view(torch.float16)
            first = g.num_layers * block  # float16 elements before the scales (2 L block bytes)
            size = tokens_per_page * g.num_kv_heads
            scale_shape = (self.num_pages, tokens_per_page, g.num_kv_heads)
            scale_stride = (self.page_bytes // 2, g.num_kv_heads, 1)

            def scales(kind: int) -> tuple[torch.Tensor, ...]:
                return tuple(
                    halves.as_strided(scale_shape, scale_stride, first + (2 * i + kind) * size)
                    for i in range(g.num_layers)
                )

            k_scales, v_scales = scales(0), scales(1)
        view = MemberKV(
            name=name,
            geometry=geometry,
            tokens_per_page=tokens_per_page,
            k_caches=k_caches,
            v_caches=v_caches,
            wasted_bytes_per_page=self.page_bytes - tokens_per_page * g.bytes_per_token,
            k_scales=k_scales,
            v_scales=v_scales,
        )
        self.members[name] = view
        return view

    def __repr__(self) -> str:
        members = ", ".join(
            f"{m.name}: {m.tokens_per_page} tok/page" for m in self.members.values()
        )
        return (
            f"PagePool({self.num_pages} pages x {self.page_bytes} B on {self.device}; "
            f"{members or 'no members'})"
        )
