"""Who answers a turn: uniform at random (the paper), by weight, or round-robin."""

from __future__ import annotations

import random
import threading
from collections.abc import Collection, Sequence

POLICIES = ("uniform", "weighted", "round-robin")


class MemberPolicy:
    """Thread-safe, seeded choice of a member per turn."""

    def __init__(
        self,
        names: Sequence[str],
        weights: Sequence[float],
        policy: str = "uniform",
        seed: int | None = None,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
        if not names or len(names) != len(weights):
            raise ValueError("a policy needs one weight per member and at least one member")
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"member weights must be >= 0 with a positive sum, got {weights}")
        self.names = list(names)
        self.weights = list(weights)
        self.policy = policy
        self._rng = random.Random(seed)
        self._turn = 0
        self._lock = threading.Lock()

    def choose(self, among: Collection[str] | None = None) -> str:
        """The next member, drawn from `among` (default: every member) by the policy;
        round-robin takes the next member in order that is among them."""
        names, weights = self.names, self.weights
        if among is not None:
            pairs = [(n, w) for n, w in zip(names, weights, strict=True) if n in among]
            if not pairs:
                raise ValueError("no member to choose from")
            names, weights = [n for n, _ in pairs], [w for _, w in pairs]
        with self._lock:
            if self.policy == "uniform":
                return self._rng.choice(names)
            if self.policy == "weighted":
                if sum(weights) <= 0:  # the eligible members all have weight 0
                    return self._rng.choice(names)
                return self._rng.choices(names, weights=weights)[0]
            for _ in range(len(self.names)):
                name = self.names[self._turn % len(self.names)]
                self._turn += 1
                if name in names:
                    return name
            raise AssertionError("unreachable: names is a non-empty subset")
