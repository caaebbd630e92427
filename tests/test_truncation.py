"""Truncation of histories past a member's window: the checkpoint rule, exact cuts, and
what it does to a growing conversation (a stable prefix, re-prefills once per chunk)."""

from __future__ import annotations

import itertools
import random

import pytest

from blendrt.demo import demo_members
from blendrt.tokenizer.formats import get_chat_format
from blendrt.tokenizer.tokenizer import load_tokenizer
from blendrt.truncation import ContextLengthError, cut_points, fit_history

WORDS = "hello how are you today I like music books and long walks by the sea why not".split()


@pytest.fixture(scope="module")
def fmt():
    ann = next(m for m in demo_members() if m["name"] == "ann")
    return get_chat_format(load_tokenizer(ann["path"]), "pygmalion", bot_name="Ann")


def chat(n: int, seed: int = 0, system: bool = True) -> list[dict]:
    rng = random.Random(seed)
    messages = [{"role": "system", "content": "Ann is a cheerful baker."}] if system else []
    for i in range(n):
        role = "user" if i % 2 == 0 else "assistant"
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 25)))
        messages.append({"role": role, "content": text})
    return messages


def test_checkpoints_are_the_first_turns_past_each_multiple_of_the_chunk() -> None:
    lengths = [10] * 10
    starts = [True] * 10
    assert cut_points(lengths, starts, 0, 9, 25) == [0, 3, 5, 8, 9]
    # Only turn starts (user messages) qualify; the latest turn always closes the list.
    starts = [i % 2 == 0 for i in range(10)]
    assert cut_points(lengths, starts, 0, 8, 25) == [0, 4, 6, 8]
    # One long message passes several marks: one checkpoint, the next mark after it.
    assert cut_points([100, 5, 5, 5], [True] * 4, 0, 3, 10) == [0, 1, 3]
    # chunk 1: every turn start is a checkpoint (the fewest messages dropped).
    assert cut_points(lengths, starts, 0, 8, 1) == [0, 2, 4, 6, 8]
    with pytest.raises(ValueError, match="chunk"):
        cut_points(lengths, starts, 0, 8, 0)


def test_a_fitting_history_is_rendered_whole(fmt) -> None:
    messages = chat(5)
    fitted = fit_history(fmt, messages, window=1024, reserve=64)
    assert fitted.prompt_ids == fmt.render(messages)
    assert (fitted.num_truncated_messages, fitted.num_truncated_tokens) == (0, 0)


def test_auto_keeps_the_system_message_and_the_latest_turn(fmt) -> None:
    messages = chat(41)  # ends with a user message
    full = fmt.render(messages)
    fitted = fit_history(fmt, messages, window=256, reserve=32)
    n = fitted.num_truncated_messages
    assert n > 0 and len(fitted.prompt_ids) + 32 <= 256
    # Exactly the system message and messages[1 + n:], rendered as a whole conversation.
    kept = [messages[0], *messages[1 + n :]]
    assert fitted.prompt_ids == fmt.render(kept)
    assert kept[1]["role"] == "user"  # cut at a turn start
    assert fitted.num_truncated_tokens == len(full) - len(fitted.prompt_ids)
    text = fmt.tokenizer.decode(fitted.prompt_ids)
    assert "Ann is a cheerful baker." in text and messages[-1]["content"] in text


def test_disabled_refuses_and_names_the_sizes(fmt) -> None:
    messages = chat(41)
    with pytest.raises(ContextLengthError, match=r"window is 256 tokens.*truncation 'auto'") as e:
        fit_history(fmt, messages, window=256, reserve=32, truncation="disabled")
    assert e.value.code == "context_length_exceeded" and e.value.param == "messages"


def test_what_can_never_fit_is_named(fmt) -> None:
    long = [{"role": "user", "content": " ".join(WORDS * 40)}]
    with pytest.raises(ContextLengthError, match=r"message 0 \(user\) alone takes \d+ tokens"):
        fit_history(fmt, long, window=256, reserve=32)
    with pytest.raises(ContextLengthError, match="max_tokens 300 can never fit") as e:
        fit_history(fmt, chat(3), window=256, reserve=300)
    assert e.value.param == "max_tokens"
    with pytest.raises(ValueError, match="truncation must be one of"):
        fit_history(fmt, chat(3), window=256, reserve=3, truncation="left")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_growing_chat_keeps_its_prefix_between_chunked_jumps(fmt, seed: int) -> None:
    """Grown two messages per turn, the kept history starts at a cut that only moves
    forward, and moves about once per chunk of tokens; dropping as few messages as possible
    moves it nearly every turn once the window is full."""
    messages = chat(200, seed=seed)
    moves = {}
    for chunk in (None, 1):
        cuts, prompts = [], []
        for end in range(2, len(messages) + 1, 2):  # each history ends with a user message
            fitted = fit_history(fmt, messages[:end], window=384, reserve=48, chunk=chunk)
            assert len(fitted.prompt_ids) + 48 <= 384
            cuts.append(fitted.num_truncated_messages)
            prompts.append(fitted.prompt_ids)
        assert cuts == sorted(cuts)  # stateless and monotone: the same history, the same cut
        # Between moves, each prompt extends the previous one: a prefix-cache hit.
        for a, b, ca, cb in zip(prompts, prompts[1:], cuts, cuts[1:], strict=False):
            if ca == cb:
                assert b[: len(a)] == a
        moves[chunk] = sum(a != b for a, b in itertools.pairwise(cuts))
    truncated_turns = 100 - cuts.count(0)
    assert moves[1] >= 0.7 * truncated_turns  # minimal: a move nearly every turn
    # Chunked: about one move per chunk (half the room) of tokens the history grows by.
    lengths = [len(s.ids) for s in fmt.segments(messages)]
    chunk = (384 - 48 - lengths[0]) // 2
    assert moves[None] <= 1.25 * sum(lengths[1:]) / chunk
    assert moves[None] * 2 <= moves[1]
