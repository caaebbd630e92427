"""Who answers a turn: uniform at random (the paper), by weight, round-robin, by a reward
model's verdict on a short probe of each member ("reward", run by the Blend), or any object
with `choose(conversation, members, rng) -> name` (a learned router, say).

NOTE (reproducible draws): given the conversation, uniform, weighted and custom policies
draw from a generator seeded by the blend's seed *and the conversation so far* (its
messages' roles and text), so the same conversation at the same turn gets the same member
whatever else arrived in between: a retried turn is answered by the same member. Without
one, draws follow one seeded stream. Round-robin is an order by nature.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

POLICIES = ("uniform", "weighted", "round-robin", "reward")


@runtime_checkable
class ChoosesMember(Protocol):
    """A pluggable policy: picks one of `members` (the eligible names, in blend order) for
    the next turn of `conversation` (the messages so far, as the caller sent them)."""

    def choose(
        self, conversation: Sequence[Mapping[str, Any]], members: Sequence[str], rng: random.Random
    ) -> str: ...


def conversation_rng(seed: int, conversation: Sequence[Mapping[str, Any]] | None) -> random.Random:
    """A generator for this seed and conversation (roles and text only: ids the caller may
    attach do not change the draw)."""
    # NOTE: long texts are hashed as bytes (hashlib releases the GIL past 2 KiB), never
    # re-serialized: a 4 MiB message must not hold the server's event loop.
    digest = hashlib.sha256(str(seed).encode())
    for message in conversation or ():
        content = message.get("content")
        if not isinstance(content, str):
            content = json.dumps(content, sort_keys=True)
        for part in (str(message.get("role")), content):
            digest.update(len(part).to_bytes(8, "little"))
            digest.update(part.encode("utf-8", "surrogatepass"))
    return random.Random(int.from_bytes(digest.digest()[:8], "little"))


class MemberPolicy:
    """Thread-safe, seeded choice of a member per turn."""

    def __init__(
        self,
        names: Sequence[str],
        weights: Sequence[float],
        policy: str | ChoosesMember = "uniform",
        seed: int | None = None,
    ) -> None:
        if isinstance(policy, str):
            if policy not in POLICIES:
                raise ValueError(
                    f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)} "
                    "or pass an object with choose(conversation, members, rng)"
                )
        elif not isinstance(policy, ChoosesMember):
            raise ValueError(
                f"policy must be a name or an object with choose(conversation, members, rng), "
                f"got {type(policy).__name__}"
            )
        if not names or len(names) != len(weights):
            raise ValueError("a policy needs one weight per member and at least one member")
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"member weights must be >= 0 with a positive sum, got {weights}")
        self.names = list(names)
        self.weights = list(weights)
        self.policy = policy
        self.seed = random.SystemRandom().getrandbits(63) if seed is None else seed
        self._rng = random.Random(self.seed)  # draws with no conversation given
        self._turn = 0
        self._lock = threading.Lock()
        # The Blend sets this for "reward": (conversation, eligible names, rng) -> name.
        self.reward_router: ChoosesMember | None = None

    def choose(
        self,
        among: Collection[str] | None = None,
        conversation: Sequence[Mapping[str, Any]] | None = None,
    ) -> str:
        """The next member, drawn from `among` (default: every member) by the policy."""
        names, weights = self.names, self.weights
        if among is not None:
            pairs = [(n, w) for n, w in zip(names, weights, strict=True) if n in among]
            if not pairs:
                raise ValueError("no member to choose from")
            names, weights = [n for n, _ in pairs], [w for _, w in pairs]
        if conversation is None:
            with self._lock:
                rng = random.Random(self._rng.getrandbits(64))
        else:
            rng = conversation_rng(self.seed, conversation)
        if not isinstance(self.policy, str) or self.policy == "reward":
            return self._ask(self.policy if not isinstance(self.policy, str) else None,
                             conversation, names, rng)  # fmt: skip
        if self.policy == "uniform":
            return rng.choice(names)
        if self.policy == "weighted":
            if sum(weights) <= 0:  # the eligible members all have weight 0
                return rng.choice(names)
            return rng.choices(names, weights=weights)[0]
        with self._lock:
            for _ in range(len(self.names)):
                name = self.names[self._turn % len(self.names)]
                self._turn += 1
                if name in names:
                    return name
        raise AssertionError("unreachable: names is a non-empty subset")

    def _ask(
        self,
        chooser: ChoosesMember | None,
        conversation: Sequence[Mapping[str, Any]] | None,
        names: list[str],
        rng: random.Random,
    ) -> str:
        chooser = chooser or self.reward_router
        if chooser is None:
            raise ValueError("the reward policy needs a blend with a reward_model")
        name = chooser.choose(list(conversation or ()), tuple(names), rng)
        if name not in names:
            raise ValueError(
                f"policy {type(chooser).__name__} chose {name!r}, not one of {', '.join(names)}"
            )
        return name
