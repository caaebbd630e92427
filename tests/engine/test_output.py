"""Stop strings over streamed text: cut before the stop, across token boundaries, held back
only while they might still start a stop string."""

from __future__ import annotations

import pytest
from checkpoints import save_tiny_tokenizer

from blendrt.engine.output import OutputText
from blendrt.tokenizer.tokenizer import load_tokenizer

TEXT = "hello world, how are you today?"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("tok")
    save_tiny_tokenizer(folder)
    return load_tokenizer(folder)


def stream(tokenizer, stop: tuple[str, ...], text: str = TEXT) -> tuple[list[str], OutputText]:
    out = OutputText(tokenizer, stop)
    deltas = []
    for token in tokenizer.encode(text, add_special_tokens=False):
        out.add(token)
        deltas.append(out.take_delta(final=out.stopped))
        if out.stopped:
            break
    if not out.stopped:
        out.finish()
        deltas.append(out.take_delta(final=True))
    return deltas, out


def test_stop_string_cuts_the_text_and_never_leaks(tokenizer) -> None:
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    assert len(ids) > 5  # several tokens, so the stop spans token boundaries
    deltas, out = stream(tokenizer, ("how are",))
    assert out.stopped and out.text == "hello world, "
    assert "".join(deltas) == "hello world, "
    assert not any("how" in d for d in deltas)
    # Only the tokens wholly before the stop string count as the reply.
    reply = ids[: out.num_reply_tokens()]
    assert tokenizer.decode(reply) == "hello world, "[: len(tokenizer.decode(reply))]


def test_text_that_may_start_a_stop_is_held_then_released(tokenizer) -> None:
    deltas, out = stream(tokenizer, ("you!",))
    assert not out.stopped and "".join(deltas) == TEXT
    # "you" could have begun "you!": it was held back until " today" proved otherwise.
    i = next(i for i, d in enumerate(deltas) if "you" in d)
    assert "today" in "".join(deltas[i:]) and not deltas[i].endswith("you")


def test_earliest_of_several_stops_wins(tokenizer) -> None:
    _, out = stream(tokenizer, ("today", "world"))
    assert out.text == "hello "
