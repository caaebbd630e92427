"""A 60-turn conversation over members with different windows: truncation "auto" keeps
every turn inside the chosen member's window, drops the oldest messages in chunks (the
members keep hitting their prefix caches), and reports what it dropped; "disabled" refuses
with ContextLengthError and the blend keeps serving."""

from __future__ import annotations

import pytest
from windowed_members import SYSTEM, WINDOWS, make_windowed_members, user_line

from blendrt import Blend, EngineConfig
from blendrt.truncation import ContextLengthError

MAX_TOKENS = 12


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> list:
    return make_windowed_members(tmp_path_factory.mktemp("windowed"))


def converse(blend: Blend, turns: int, **kw: object) -> list:
    messages = [{"role": "system", "content": SYSTEM}]
    replies = []
    for turn in range(turns):
        messages.append({"role": "user", "content": user_line(turn)})
        reply = blend.chat(messages, sampling={"max_tokens": MAX_TOKENS, "seed": turn}, **kw)
        replies.append(reply)
        messages.append({"role": "assistant", "content": reply.text, "member": reply.member})
    return replies


def test_sixty_turns_fit_every_members_window(members) -> None:
    config = EngineConfig(device="cpu", num_pages=256)
    with Blend(members, seed=3, config=config) as blend:
        replies = converse(blend, 60)
        stats = blend.stats()
    assert {r.member for r in replies} == set(WINDOWS)
    for r in replies:
        assert r.usage.prompt_tokens + MAX_TOKENS <= WINDOWS[r.member]
        assert r.usage.completion_tokens >= 1
    truncated = [r for r in replies if r.usage.truncated_messages]
    assert len(truncated) >= 40  # the chat outgrew every window early on
    assert all(r.usage.truncated_tokens > 0 for r in truncated)
    # The dropped count grows with the chat and only in steps (chunks), never shrinking
    # for a member between its turns.
    for name in WINDOWS:
        drops = [r.usage.truncated_messages for r in replies if r.member == name]
        assert drops == sorted(drops)
    late = replies[20:]
    cached = sum(r.usage.cached_prompt_tokens for r in late)
    assert cached / sum(r.usage.prompt_tokens for r in late) > 0.3
    assert stats["pool"]["pages_in_use"] == 0


def test_disabled_refuses_past_the_window_and_the_blend_keeps_serving(members) -> None:
    with Blend(members, seed=3, config=EngineConfig(device="cpu", num_pages=256)) as blend:
        with pytest.raises(ContextLengthError, match="no member's window fits") as e:
            converse(blend, 60, truncation="disabled")
        assert e.value.code == "context_length_exceeded"
        with pytest.raises(ContextLengthError, match=r"member 'max': .*192 tokens"):
            converse(blend, 60, truncation="disabled", member="max")
        assert blend.stats()["pool"]["pages_in_use"] == 0
        ok = blend.chat([{"role": "user", "content": "hi"}], sampling={"max_tokens": 3})
        assert ok.usage.completion_tokens >= 1


def test_an_unpinned_turn_goes_to_a_member_whose_window_holds_it(members) -> None:
    """A history only the largest window (vic, 384) holds whole: with truncation disabled
    every unpinned turn goes to vic, whatever the policy draws."""
    messages = [{"role": "system", "content": SYSTEM}]
    for turn in range(4):
        messages += [
            {"role": "user", "content": user_line(turn)},
            {"role": "assistant", "content": "that sounds lovely, tell me more"},
        ]
    messages.append({"role": "user", "content": "and then?"})
    with Blend(members, seed=0, config=EngineConfig(device="cpu", num_pages=256)) as blend:
        sizes = {n: len(blend.prepare(messages, member=n, sampling={"max_tokens": 1},
                                      truncation="auto").prompt_ids) for n in WINDOWS}  # fmt: skip
        full = {n: len(blend.formats[n].render(messages)) for n in WINDOWS}
        assert full["vic"] + 8 <= 384 and full["ann"] > 256 and full["max"] > 192, full
        assert sizes["ann"] < full["ann"]  # auto truncated it
        chosen = {
            blend.prepare(messages, sampling={"max_tokens": 8}, truncation="disabled").member
            for _ in range(20)
        }
        assert chosen == {"vic"}
