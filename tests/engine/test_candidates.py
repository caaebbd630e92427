"""Several candidates of one request (n, best_of) share the prompt's pages: the prompt is
computed once, a partly filled last page is copied on write, and each candidate continues
exactly as a lone request would. Log-probabilities, logit_bias, min_tokens, ignore_eos."""

from __future__ import annotations

import pytest
from members import generated_ids, greedy, make_engine, run_all
from scoring import score

from blendrt.sampling import SamplingParams


def by_index(outputs) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for o in outputs:
        out.setdefault(o.index, []).extend(o.new_token_ids)
    return out


@pytest.mark.parametrize("prompt_len", [37, 48], ids=["partial-last-page", "full-pages"])
def test_greedy_candidates_equal_a_lone_request(member_folders, prompt_len: int) -> None:
    engine = make_engine(member_folders, num_pages=128)
    assert 48 % engine.managers["llama"].tokens_per_page("llama") == 0
    prompt = list(range(3, 3 + prompt_len))
    lone = engine.add_request("llama", prompt, greedy(12))
    alone = generated_ids(run_all(engine)[lone.request_id])
    computed = engine.counters.prompt_tokens_computed
    engine.managers["llama"].clear_prefix_cache()
    group = engine.add_request("llama", prompt, greedy(12, n=3))
    outputs = run_all(engine)[group.request_id]
    assert by_index(outputs) == {0: alone, 1: alone, 2: alone}
    # The prompt was computed once for the three (not three times).
    assert engine.counters.prompt_tokens_computed - computed == prompt_len
    assert sum(o.done for o in outputs) == 1 and outputs[-1].done
    manager = engine.managers["llama"]
    assert manager.num_pages_in_use == 0
    manager.check_invariants()


def test_seeded_candidates_differ_and_reproduce(member_folders) -> None:
    engine = make_engine(member_folders, num_pages=128)
    params = SamplingParams(temperature=1.0, max_tokens=10, seed=7, n=4, ignore_eos=True)
    runs = []
    for _ in range(2):
        request = engine.add_request("gptj", list(range(3, 40)), params)
        runs.append(by_index(run_all(engine)[request.request_id]))
    assert runs[0] == runs[1]  # the same seed: the same four candidates
    assert len({tuple(v) for v in runs[0].values()}) > 1  # and not all alike


def test_best_of_keeps_cumulative_logprobs_of_every_candidate(member_folders) -> None:
    engine = make_engine(member_folders, num_pages=128)
    params = SamplingParams(temperature=1.0, max_tokens=6, seed=3, n=1, best_of=3, ignore_eos=True)
    request = engine.add_request("mha", list(range(3, 30)), params)
    finals = [o for o in run_all(engine)[request.request_id] if o.finished]
    assert sorted(o.index for o in finals) == [0, 1, 2]
    model = engine.models["mha"]
    for out in finals:
        ids = list(range(3, 30)) + list(out.reply_token_ids)
        lp = score(model, ids)
        want = sum(float(lp[26 + i, t]) for i, t in enumerate(out.reply_token_ids))
        assert out.cumulative_logprob == pytest.approx(want, abs=1e-4)


def test_logprobs_are_the_models_with_the_top_alternatives(member_folders) -> None:
    engine = make_engine(member_folders, num_pages=128)
    prompt = list(range(3, 25))
    request = engine.add_request("llama", prompt, greedy(5, logprobs=3))
    outputs = run_all(engine)[request.request_id]
    picks = [lp for o in outputs for lp in o.logprobs]
    ids = generated_ids(outputs)
    assert [p.token_id for p in picks] == ids
    lp = score(engine.models["llama"], prompt + ids)  # [N, V]
    for i, pick in enumerate(picks):
        row = lp[len(prompt) - 1 + i]
        assert pick.logprob == pytest.approx(float(row[pick.token_id]), abs=1e-5)
        top = row.topk(3)
        assert [t for t, _ in pick.top] == top.indices.tolist()
        assert pick.top[0][0] == pick.token_id  # greedy chose the most likely


def test_logit_bias_min_tokens_and_ignore_eos(member_folders) -> None:
    engine = make_engine(member_folders, num_pages=128)
    eos = engine.models["llama"].config.eos_token_ids[0]
    prompt = list(range(3, 20))
    forced = engine.add_request(
        "llama", prompt, SamplingParams(temperature=0, max_tokens=4, logit_bias={77: 100.0})
    )
    assert generated_ids(run_all(engine)[forced.request_id]) == [77] * 4
    # EOS made certain: min_tokens holds it off for 3 tokens, then it stops the reply.
    eager = SamplingParams(temperature=0, max_tokens=10, min_tokens=3, logit_bias={eos: 100.0})
    request = engine.add_request("llama", prompt, eager)
    ids = generated_ids(run_all(engine)[request.request_id])
    assert len(ids) == 4 and eos not in ids[:3] and ids[3] == eos
    # ignore_eos: EOS neither stops the reply nor is sampled.
    ignoring = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, logit_bias={eos: 100.0})
    request = engine.add_request("llama", prompt, ignoring)
    ids = generated_ids(run_all(engine)[request.request_id])
    assert len(ids) == 6 and eos not in ids
    with pytest.raises(ValueError, match=r"below member 'llama'.s vocabulary size 320"):
        engine.add_request("llama", prompt, SamplingParams(logit_bias={320: 1.0}))


def test_abort_ends_every_candidate(member_folders) -> None:
    engine = make_engine(member_folders, num_pages=128)
    request = engine.add_request("gptj", list(range(3, 40)), greedy(50, n=3))
    for _ in range(4):
        engine.step()
    outs = engine.abort_request(request.request_id)
    assert sorted(o.index for o in outs) == [0, 1, 2] and outs[-1].done
    assert all(o.finish_reason == "abort" for o in outs)
    assert not engine.has_unfinished_requests()
    assert engine.managers["gptj"].num_pages_in_use == 0
    # Aborted before its prompt was computed: the unforked candidates end too.
    request = engine.add_request("gptj", list(range(3, 40)), greedy(50, n=2))
    outs = engine.abort_request(request.request_id)
    assert len(outs) == 2 and outs[-1].done and not engine.has_unfinished_requests()
    assert engine.managers["gptj"].num_pages_in_use == 0
