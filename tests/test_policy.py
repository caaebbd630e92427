"""Who answers a turn: uniform, weighted and round-robin draws, seeded, over all members or
a subset of them."""

from __future__ import annotations

import pytest

from blendrt.policy import MemberPolicy

NAMES = ["a", "b", "c"]


def draws(policy: MemberPolicy, n: int, among: list[str] | None = None) -> list[str]:
    return [policy.choose(among) for _ in range(n)]


def test_uniform_is_seeded_and_covers_every_member() -> None:
    picks = draws(MemberPolicy(NAMES, [1, 1, 1], "uniform", seed=5), 300)
    assert set(picks) == set(NAMES) and all(60 < picks.count(n) < 140 for n in NAMES)
    assert draws(MemberPolicy(NAMES, [1, 1, 1], "uniform", seed=5), 300) == picks
    assert draws(MemberPolicy(NAMES, [1, 1, 1], "uniform", seed=6), 300) != picks


def test_weighted_follows_the_weights() -> None:
    picks = draws(MemberPolicy(NAMES, [6, 3, 1], "weighted", seed=0), 3000)
    shares = [picks.count(n) / 3000 for n in NAMES]
    assert shares == pytest.approx([0.6, 0.3, 0.1], abs=0.04)
    never = draws(MemberPolicy(NAMES, [1, 0, 1], "weighted", seed=0), 200)
    assert "b" not in never


def test_round_robin_takes_members_in_order() -> None:
    policy = MemberPolicy(NAMES, [1, 1, 1], "round-robin")
    assert draws(policy, 7) == ["a", "b", "c", "a", "b", "c", "a"]
    assert draws(policy, 3, among=["a", "c"]) == ["c", "a", "c"]  # next in order among them


def test_a_subset_draws_only_from_it() -> None:
    for kind in ("uniform", "weighted"):
        policy = MemberPolicy(NAMES, [1, 1, 1], kind, seed=1)
        assert set(draws(policy, 100, among=["b", "c"])) == {"b", "c"}
    zero = MemberPolicy(NAMES, [1, 0, 0], "weighted", seed=1)
    assert set(draws(zero, 50, among=["b", "c"])) == {"b", "c"}  # all weight 0: uniform


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((NAMES, [1, 1, 1], "random-ish"), "unknown policy 'random-ish'"),
        ((NAMES, [1, 1], "uniform"), "one weight per member"),
        (([], [], "uniform"), "at least one member"),
        ((NAMES, [1, -1, 1], "weighted"), "weights must be >= 0"),
        ((NAMES, [0, 0, 0], "weighted"), "positive sum"),
    ],
)
def test_bad_policies_are_refused(args, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MemberPolicy(*args)
    with pytest.raises(ValueError, match="no member to choose from"):
        MemberPolicy(NAMES, [1, 1, 1]).choose(among=["z"])
