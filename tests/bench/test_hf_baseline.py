"""System (d) of the bench: transformers generate() on the whole history, batched per member."""

from __future__ import annotations

import sys
from itertools import pairwise

import pytest
import torch
from checkpoints import make_checkpoint

from blendrt.bench.hf_baseline import run_transformers, run_transformers_with_replies
from blendrt.bench.workload import make_workload, messages_for_turn
from blendrt.blend import Member
from blendrt.tokenizer.formats import get_chat_format
from blendrt.tokenizer.tokenizer import load_tokenizer

MAX_TOKENS = 5
#: KV bytes per cached token of both tiny configs: 2 layers x (K, V) x 4 heads x 16 dims x fp32.
KV_BYTES_PER_TOKEN = 2 * 2 * 4 * 16 * 4


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> list[Member]:
    root = tmp_path_factory.mktemp("hf_members")
    make_checkpoint(root / "ann", "LlamaConfig", seed=3, context=1024)
    make_checkpoint(root / "bob", "GPTJConfig", seed=4, context=1024)
    return [
        Member("ann", root / "ann", chat_format="vicuna"),
        Member("bob", root / "bob", chat_format="pygmalion", chat_options={"bot_name": "Bob"}),
    ]


@pytest.fixture(scope="module")
def run(members: list[Member]):
    workload = make_workload(
        ["ann", "bob"],
        num_conversations=4,
        num_turns=3,
        max_tokens=MAX_TOKENS,
        persona_words=24,
        user_words=5,
        seed=1,
    )
    result, replies = run_transformers_with_replies(workload, members)
    return workload, result, replies


def _format(member: Member):
    return get_chat_format(
        load_tokenizer(member.path), member.chat_format, member=member.name, **member.chat_options
    )


def _messages(workload, i: int, turn: int, replies) -> list[dict]:
    """What blendrt sends for conversation i's `turn`: the answering member's own earlier
    replies carry their token_ids."""
    conv = workload.conversations[i]
    messages = messages_for_turn(conv, turn, [replies[i, k][:2] for k in range(turn)])
    for k in range(turn):
        if replies[i, k][0] == conv.members[turn]:
            messages[2 + 2 * k]["token_ids"] = replies[i, k][2]
    return messages


def test_one_record_per_turn_with_its_member(run) -> None:
    workload, result, replies = run
    assert result.name == "transformers"
    got = sorted((r.conversation, r.turn, r.member) for r in result.turns)
    want = sorted(
        (i, t, m) for i, c in enumerate(workload.conversations) for t, m in enumerate(c.members)
    )
    assert got == want
    assert len({r.member for r in result.turns}) == 2  # the workload really blends both
    assert sorted(replies) == sorted((i, t) for i, t, _ in want)
    for r in result.turns:
        conv = workload.conversations[r.conversation]
        assert r.switched == (r.turn > 0 and conv.members[r.turn - 1] != r.member)
        assert r.output_tokens == MAX_TOKENS
        assert r.computed_prompt_tokens == r.prompt_tokens
        assert len(replies[r.conversation, r.turn][2]) == MAX_TOKENS
    assert result.output_tokens == len(want) * MAX_TOKENS
    assert result.wall_seconds >= max(r.token_times[-1] for r in result.turns)


def test_token_times_and_scheduling(run) -> None:
    workload, result, _ = run
    turns = {(r.conversation, r.turn): r for r in result.turns}
    for r in result.turns:
        assert len(r.token_times) == MAX_TOKENS
        assert all(b > a for a, b in pairwise(r.token_times))
        assert r.token_times[0] > r.submit_time
        if r.turn == 0:
            assert r.submit_time == workload.conversations[r.conversation].arrival
        else:  # ready when the previous reply is done
            assert r.submit_time >= turns[r.conversation, r.turn - 1].token_times[-1]
    # Turn 0 of every conversation is ready at once: one batch per member, shared step times.
    for name in ("ann", "bob"):
        first = [r.token_times for r in result.turns if r.turn == 0 and r.member == name]
        assert first and all(t == first[0] for t in first)


def test_prompts_are_blendrt_renderings_of_the_whole_history(run, members) -> None:
    workload, result, replies = run
    formats = {m.name: _format(m) for m in members}
    for i, conv in enumerate(workload.conversations):
        sizes = [
            r.prompt_tokens
            for r in sorted((r for r in result.turns if r.conversation == i), key=lambda r: r.turn)
        ]
        assert all(b > a for a, b in pairwise(sizes))
        for turn, member in enumerate(conv.members):
            messages = _messages(workload, i, turn, replies)
            assert sizes[turn] == len(formats[member].render(messages))
    tok = load_tokenizer(members[0].path)
    for member, text, ids in replies.values():
        if member == "ann":
            assert text == tok.decode(ids, skip_special_tokens=True)


def test_peak_kv_bytes_is_one_batch_cache(run) -> None:
    _, result, _ = run
    longest = max(r.prompt_tokens for r in result.turns)
    # At least the longest row's cache (prompt + all but the last token); at most 4 such rows.
    assert result.peak_kv_bytes >= KV_BYTES_PER_TOKEN * (longest + MAX_TOKENS - 1)
    assert result.peak_kv_bytes <= 4 * KV_BYTES_PER_TOKEN * (longest + MAX_TOKENS - 1)


def _greedy_alone(model, ids: list[int], got: list[int]) -> int:
    """How many of `got` match greedy decoding of `ids` by `model` alone (batch 1, no padding,
    no cache); asserts the first token, stops at a near tie. One forward over ids + got: while
    got agrees with the argmax, its prefix is exactly what greedy decoding feeds back."""
    with torch.inference_mode():
        logits = model(torch.tensor([ids + got])).logits[0, len(ids) - 1 : len(ids) - 1 + len(got)]
    logits = logits.clone()
    logits[:, model.config.eos_token_id] = float("-inf")  # ignore_eos masks EOS
    top2 = logits.topk(2)
    for step, token in enumerate(got):
        want = int(top2.indices[step, 0])
        if step and float(top2.values[step, 0] - top2.values[step, 1]) < 1e-3:
            return step
        assert token == want, (step, got, want)
    return len(got)


def test_replies_equal_greedy_of_the_model_alone(run, members) -> None:
    """The comparability check: each reply is what the member alone generates greedily from
    the ids blendrt renders for that history (its own earlier replies as their token_ids).
    Left padding and batch shape may move fp32 logits by ~1e-6, which can only flip a near
    tie, so the first token must match, later ones wherever the reference's top-2 margin is
    clear (1e-3), up to the first near tie. Turn 0 is the history-independent case; later
    turns also check that the history went back as blendrt sends it."""
    from transformers import AutoModelForCausalLM

    workload, _, replies = run
    models = {
        m.name: AutoModelForCausalLM.from_pretrained(str(m.path), dtype=torch.float32).eval()
        for m in members
    }
    formats = {m.name: _format(m) for m in members}
    matched = {0: 0, 1: 0}  # turn 0, later turns: tokens checked
    for i, conv in enumerate(workload.conversations):
        for turn, name in enumerate(conv.members):
            ids = formats[name].render(_messages(workload, i, turn, replies))
            matched[min(turn, 1)] += _greedy_alone(models[name], ids, replies[i, turn][2])
    # Mostly whole replies, not just first tokens (each side's maximum is 4 or 8 replies x 5).
    assert matched[0] >= 3 * len(workload.conversations)
    assert matched[1] >= 3 * 2 * len(workload.conversations)


def test_eos_neither_stops_nor_is_sampled(tmp_path) -> None:
    """A member whose every greedy token is EOS: a reply is max_tokens other ids (as
    blendrt's ignore_eos masks EOS)."""
    model = make_checkpoint(tmp_path, "GPTJConfig", seed=6, context=1024)
    with torch.no_grad():
        model.lm_head.bias[model.config.eos_token_id] = 1e4
    model.save_pretrained(tmp_path, safe_serialization=True)
    workload = make_workload(["eve"], num_conversations=2, num_turns=2, max_tokens=4, seed=2)
    result, replies = run_transformers_with_replies(
        workload, [Member("eve", tmp_path, chat_format="vicuna")]
    )
    assert all(len(r.token_times) == 4 for r in result.turns) and len(result.turns) == 4
    assert all(len(ids) == 4 and 2 not in ids and text for _, text, ids in replies.values())


def test_arrivals_are_waited_for(members) -> None:
    """Arrivals at ~0.32 s and ~0.50 s (seed 1): each turn waits for its own arrival (a 2-token
    generate of the tiny model takes well under 0.17 s), so they are served one by one."""
    workload = make_workload(
        ["ann"],
        num_conversations=2,
        num_turns=1,
        max_tokens=2,
        persona_words=12,
        user_words=3,
        arrival_rate=4.0,
        seed=1,
    )
    arrivals = [c.arrival for c in workload.conversations]
    assert 0.2 < arrivals[0] < arrivals[1] - 0.1
    result = run_transformers(workload, members[:1])
    first, second = sorted(result.turns, key=lambda r: r.conversation)
    for r, arrival in zip((first, second), arrivals, strict=True):
        assert r.submit_time == arrival and r.token_times[0] > arrival
    assert second.token_times[0] > first.token_times[-1]
    assert result.wall_seconds > arrivals[1]


def test_without_transformers_it_says_what_to_install(members, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)
    workload = make_workload(["ann"], num_conversations=1, num_turns=1, max_tokens=1)
    with pytest.raises(ImportError, match="pip install transformers"):
        run_transformers(workload, members[:1])


def test_unknown_member_is_refused(members) -> None:
    workload = make_workload(["zed"], num_conversations=1, num_turns=1, max_tokens=1)
    with pytest.raises(ValueError, match="zed"):
        run_transformers(workload, members)
