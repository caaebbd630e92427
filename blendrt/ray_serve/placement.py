"""Where a conversation goes: rendezvous (highest-random-weight) hashing over replica ids,
with a bounded-load fallback. Pure functions (no Ray), so they are tested on their own.

Rendezvous hashing ranks every replica by hash(key, replica id); the top one is the
conversation's home. When a replica leaves, only its conversations move (each to its own
next-ranked replica); when one joins, it takes about 1/N of the conversations from the others
and nothing else moves. Every ingress computes the same ranking with no shared state.

Bounded load: the home is used while its queue is at most `max_imbalance` longer than the
shortest queue; past that, the first replica in the key's own ranking that is within the
bound takes the request (so a spilled conversation also lands consistently).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import TypeVar

T = TypeVar("T")

DEFAULT_MAX_IMBALANCE = 4  # requests a home replica may queue beyond the shortest queue


def _weight(key: str, replica: str) -> int:
    digest = hashlib.blake2b(f"{key}\x00{replica}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rank(key: str, replicas: Sequence[str]) -> list[str]:
    """The replicas in the key's order of preference (highest rendezvous weight first)."""
    # NOTE: ties (a 64-bit collision) break by id, so every ingress ranks alike.
    return sorted(replicas, key=lambda r: (-_weight(key, r), r))


def bounded_order(
    ranked: Sequence[T], queue_lens: Mapping[T, int | None], max_imbalance: int
) -> list[T]:
    """`ranked` reordered so the first replica is within `max_imbalance` of the shortest
    known queue: the key's first such replica leads, the rest keep their rank order.
    Replicas whose queue length is unknown (a probe failed) go last."""
    known = [r for r in ranked if queue_lens.get(r) is not None]
    unknown = [r for r in ranked if queue_lens.get(r) is None]
    if not known:
        return list(ranked)
    shortest = min(queue_lens[r] for r in known)  # type: ignore[type-var]
    lead = next(r for r in known if queue_lens[r] - shortest <= max_imbalance)  # type: ignore[operator]
    return [lead, *(r for r in known if r != lead), *unknown]
