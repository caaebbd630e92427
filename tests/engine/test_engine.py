"""The engine: greedy parity with transformers (alone and in a busy mixed batch), chunked
prefill, preemption under a small pool with nothing lost or leaked, seeds, bad requests."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from checkpoints import VOCAB
from members import generated_ids, greedy, make_engine, run_all

from blendrt.sampling import SamplingParams


def hf_greedy(model, prompt: list[int], n: int) -> list[int]:
    model.generation_config.eos_token_id = None  # generate exactly n tokens
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=n, do_sample=False, pad_token_id=0
        )
    return out[0, len(prompt) :].tolist()


def prompts(rng: np.random.Generator, n: int, low: int, high: int) -> list[list[int]]:
    return [rng.integers(3, VOCAB, int(rng.integers(low, high))).tolist() for _ in range(n)]


def test_greedy_matches_transformers_alone_and_in_a_busy_batch(member_folders) -> None:
    rng = np.random.default_rng(0)
    prompt = rng.integers(3, VOCAB, 37).tolist()
    refs = {name: hf_greedy(hf, prompt, 24) for name, (_, hf) in member_folders.items()}
    # A budget below the prompt length forces chunked prefill.
    engine = make_engine(member_folders, num_pages=512, max_num_batched_tokens=24)
    for name, ref in refs.items():
        request = engine.add_request(name, prompt, greedy(24))
        assert generated_ids(run_all(engine)[request.request_id]) == ref, name

    # Busy: the same requests among 15 others of every member, sampled, of mixed lengths,
    # some arriving mid-flight.
    targets = {engine.add_request(name, prompt, greedy(24)).request_id: name for name in refs}
    names = list(refs)
    early = []
    for i, other in enumerate(prompts(rng, 15, 1, 90)):
        engine.add_request(names[i % 3], other, SamplingParams(temperature=1.0, max_tokens=9))
        if i % 5 == 4:
            early += engine.step()  # the queue changes between steps
    outputs = run_all(engine)
    for request_id, name in targets.items():
        mine = [out for out in early if out.request_id == request_id] + outputs[request_id]
        assert generated_ids(mine) == refs[name], name


def test_many_requests_in_a_small_pool_all_complete_without_leaks(member_folders) -> None:
    rng = np.random.default_rng(1)
    engine = make_engine(member_folders, num_pages=48, max_num_batched_tokens=256)
    persona = rng.integers(3, VOCAB, 40).tolist()
    requests = []
    for i, tail in enumerate(prompts(rng, 200, 1, 30)):
        name = ("llama", "gptj", "mha")[i % 3]
        requests.append(engine.add_request(name, persona + tail, greedy(12)))
    outputs = run_all(engine)
    assert len(outputs) == 200
    for request in requests:
        out = outputs[request.request_id]
        assert out[-1].finish_reason == "length"
        assert len(generated_ids(out)) == 12
    assert engine.scheduler.num_preemptions > 0
    manager = engine.managers["llama"]
    stats = manager.stats()
    assert stats.pages_in_use == 0 and stats.pages_free + stats.pages_cached == 48
    manager.check_invariants()
    # Preempted requests recomputed from scratch still produce what they would alone.
    probe = requests[-1]
    solo = make_engine(member_folders, num_pages=512)
    alone = solo.add_request(probe.member, probe.prompt_token_ids, greedy(12))
    assert generated_ids(run_all(solo)[alone.request_id]) == probe.output_token_ids


def test_seeded_requests_reproduce_whatever_the_batch(member_folders) -> None:
    rng = np.random.default_rng(2)
    prompt = rng.integers(3, VOCAB, 20).tolist()
    params = SamplingParams(
        temperature=1.0, top_p=0.9, top_k=50, max_tokens=16, seed=1234, ignore_eos=True
    )
    engine = make_engine(member_folders, num_pages=256)
    first = engine.add_request("gptj", prompt, params)
    alone = generated_ids(run_all(engine)[first.request_id])
    again = engine.add_request("gptj", prompt, params)
    for other in prompts(rng, 6, 5, 40):
        engine.add_request("gptj", other, SamplingParams(temperature=1.0, max_tokens=16))
    assert generated_ids(run_all(engine)[again.request_id]) == alone
    other_seed = engine.add_request(
        "gptj",
        prompt,
        SamplingParams(
            temperature=1.0, top_p=0.9, top_k=50, max_tokens=16, seed=99, ignore_eos=True
        ),
    )
    assert generated_ids(run_all(engine)[other_seed.request_id]) != alone


def test_requests_that_can_never_run_are_rejected_at_once(member_folders) -> None:
    engine = make_engine(member_folders, num_pages=8)
    with pytest.raises(ValueError, match="unknown member 'nope'"):
        engine.add_request("nope", [1, 2], greedy(4))
    with pytest.raises(ValueError, match=r"exceeds member 'llama'.s context of 1024"):
        engine.add_request("llama", [5] * 1000, greedy(100))
    with pytest.raises(ValueError, match=r"needs .* pages"):
        engine.add_request("llama", [5] * 500, greedy(100))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 320\)"):
        engine.add_request("llama", [5, VOCAB], greedy(4))
    with pytest.raises(ValueError, match="non-empty"):
        engine.add_request("llama", [], greedy(4))
    with pytest.raises(ValueError, match=r"max_tokens must be an int in \[1, 1048576\]"):
        SamplingParams(max_tokens=0)
    ok = engine.add_request("llama", [5, 6, 7], greedy(3))
    assert len(generated_ids(run_all(engine)[ok.request_id])) == 3
    assert not engine.requests


def test_abort_frees_pages_at_once(member_folders) -> None:
    engine = make_engine(member_folders, num_pages=64)
    request = engine.add_request("mha", list(range(3, 60)), greedy(50))
    for _ in range(3):
        engine.step()
    manager = engine.managers["mha"]
    assert manager.stats().pages_in_use > 0
    (out,) = engine.abort_request(request.request_id)
    assert out.finish_reason == "abort" and out.done
    assert manager.stats().pages_in_use == 0
    assert engine.abort_request(request.request_id) == []  # already gone
    assert not engine.has_unfinished_requests()
