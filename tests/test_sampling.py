"""The vectorised sampler against direct definitions of each knob."""

from __future__ import annotations

import pytest
import torch

from blendrt.sampling import SamplingParams, SamplingRow, sample


def rows(*params: SamplingParams, prompt=(), output=()) -> list[SamplingRow]:
    return [
        SamplingRow(
            p,
            list(prompt),
            list(output),
            torch.Generator().manual_seed(p.seed) if p.seed is not None else None,
        )
        for p in params
    ]


def test_greedy_and_degenerate_filters_pick_the_argmax() -> None:
    logits = torch.randn(5, 50)
    expected = logits.argmax(-1)
    for p in (
        SamplingParams(temperature=0),
        SamplingParams(top_k=1),
        SamplingParams(top_p=1e-6),
        SamplingParams(min_p=1.0),
    ):
        assert torch.equal(sample(logits.clone(), rows(*[p] * 5)), expected), p


def test_sampling_follows_the_distribution() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().repeat(20000, 1)
    counts = torch.bincount(sample(logits, rows(*[SamplingParams()] * 20000)), minlength=4)
    assert torch.allclose(counts / 20000, probs, atol=0.015)


def test_top_k_top_p_min_p_keep_the_right_tokens() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().repeat(4000, 1)
    cases = {  # params -> allowed token ids
        SamplingParams(top_k=2): {0, 1},
        SamplingParams(top_p=0.7): {0, 1},  # 0.5 < 0.7, then 0.8 covers it
        SamplingParams(top_p=0.85): {0, 1, 2},
        SamplingParams(min_p=0.25): {0, 1, 2},  # floor 0.125
        SamplingParams(min_p=0.5): {0, 1},
    }
    for params, allowed in cases.items():
        got = set(sample(logits, rows(*[params] * 4000)).tolist())
        assert got == allowed, params


def test_mixed_batch_applies_each_rows_own_parameters() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0]] * 3)
    params = [
        SamplingParams(temperature=0),
        SamplingParams(top_k=1),
        SamplingParams(temperature=0, repetition_penalty=100.0),
    ]
    out = sample(logits, rows(*params, prompt=[2]))
    assert out.tolist() == [2, 2, 1]  # the last row's penalty demotes token 2


def test_penalties() -> None:
    logits = torch.tensor([[2.0, 1.9, -1.0, 0.5]])
    greedy = SamplingParams(temperature=0)
    assert sample(logits, rows(greedy, output=[0])).item() == 0
    presence = SamplingParams(temperature=0, presence_penalty=0.2)
    assert sample(logits, rows(presence, output=[0])).item() == 1
    frequency = SamplingParams(temperature=0, frequency_penalty=0.06)
    assert sample(logits, rows(frequency, output=[0])).item() == 0  # 2.0 - 0.06 > 1.9
    assert sample(logits, rows(frequency, output=[0, 0])).item() == 1  # 2.0 - 0.12 < 1.9
    # Repetition: positive logits divided, negative multiplied.
    repetition = SamplingParams(temperature=0, repetition_penalty=5.0)
    assert sample(logits, rows(repetition, prompt=[0, 1])).item() == 3  # 0.4, 0.38 < 0.5
    negative = torch.tensor([[-1.0, -1.5]])
    assert (
        sample(
            negative, rows(SamplingParams(temperature=0, repetition_penalty=2.0), prompt=[0])
        ).item()
        == 1
    )  # -1.0 * 2 < -1.5


def test_seeded_rows_do_not_depend_on_the_batch() -> None:
    logits = torch.randn(1, 1000)
    seeded = SamplingParams(seed=42)
    alone = [sample(logits, rows(seeded))]
    other = torch.randn(7, 1000)
    batch = sample(torch.cat([other, logits]), rows(*[SamplingParams()] * 7, seeded))
    assert batch[-1].item() == alone[0].item()
    draws = {sample(logits, rows(SamplingParams(seed=s))).item() for s in range(30)}
    assert len(draws) > 1


@pytest.mark.parametrize(
    "bad",
    [
        dict(temperature=-1),
        dict(top_p=0),
        dict(top_k=-1),
        dict(min_p=2),
        dict(max_tokens=0),
        dict(repetition_penalty=0),
        dict(presence_penalty=3),
        dict(stop=("",)),
        dict(seed="x"),
    ],
)
def test_invalid_parameters(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        SamplingParams(**bad)
