"""Who answers a turn: uniform at random (the paper), by weight, or round-robin."""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence

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

    def choose(self) -> str:
        with self._lock:
            if self.policy == "uniform":
                return self._rng.choice(self.names)
            if self.policy == "weighted":
                return self._rng.choices(self.names, weights=self.weights)[0]
            name = self.names[self._turn % len(self.names)]
            self._turn += 1
            return name
