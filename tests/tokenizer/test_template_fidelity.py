"""Real models' chat templates (tests/tokenizer/templates/) render to exactly the ids of
transformers' apply_chat_template(..., tokenize=True) over the same tokenizer folder: no
BOS of blendrt's own, special-token boundaries tokenized as in a whole text, a template's
refusal (raise_exception) a ValueError, and a template that is not append-only (the system
prompt moved into the last user turn) rendered whole rather than refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import folder_with_template

from blendrt.tokenizer.chat_format import NotAppendOnly
from blendrt.tokenizer.formats import get_chat_format
from blendrt.tokenizer.tokenizer import load_tokenizer

TEMPLATES = Path(__file__).parent / "templates"
#: {template: tokenizer folders (conftest fixtures) it is checked over}
CASES = {
    "llama-2-chat": ["spm_bpe_dir", "spm_bpe_legacy_dir", "llama2_json_dir"],
    "llama-3.1": ["llama3_dir"],
    "mistral-v0.1": ["spm_bpe_legacy_dir", "spm_bpe_dir"],
    "mistral-v0.3-nemo": ["spm_bpe_legacy_dir"],
    "zephyr": ["spm_bpe_dir", "spm_bpe_legacy_dir"],
    "qwen2.5": ["bytelevel_dir", "llama3_dir", "spm_bpe_dir"],  # ChatML, also on a Llama tokenizer
    "vicuna": ["spm_bpe_dir", "spm_bpe_legacy_dir"],
    "qwen3": ["bytelevel_dir", "llama3_dir"],
    "gemma-2": ["spm_bpe_dir", "spm_bpe_legacy_dir", "llama2_json_dir"],
    "gemma-3": ["spm_bpe_dir", "spm_bpe_legacy_dir", "llama2_json_dir"],
    "phi-3": ["spm_bpe_dir", "spm_bpe_legacy_dir", "llama2_json_dir"],
}
TURNS = [
    {"role": "user", "content": "Hello there, how are you today?"},
    {"role": "assistant", "content": "I am fine, thank you. And you?"},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": " The capital of France is Paris.\n"},
    {"role": "user", "content": "Merci! Numbers 12345 and 3.14159 😀"},
]
SYSTEM = {"role": "system", "content": "You are Ærø, a helpful bot."}


def _reference(hf, conv: list[dict], gen: bool) -> list[int] | Exception:
    try:
        out = hf.apply_chat_template(conv, tokenize=True, add_generation_prompt=gen)
    except Exception as e:  # the template refused (raise_exception) or failed
        return e
    return list(getattr(out, "input_ids", out))


@pytest.mark.parametrize(
    ("template", "kind"), [(t, k) for t, kinds in CASES.items() for k in kinds]
)
def test_renders_as_apply_chat_template(request, tmp_path: Path, template: str, kind: str):
    from transformers import AutoTokenizer

    text = (TEMPLATES / f"{template}.jinja").read_text(encoding="utf-8")
    folder = folder_with_template(request.getfixturevalue(kind), tmp_path / "t", text)
    tok, hf = load_tokenizer(folder), AutoTokenizer.from_pretrained(str(folder))
    fmt = get_chat_format(tok)
    checked = refused = 0
    for system in (False, True):
        conv = [SYSTEM, *TURNS] if system else TURNS
        for k in range(1, len(conv) + 1):
            gen = conv[k - 1]["role"] != "assistant"
            want = _reference(hf, conv[:k], gen)
            if isinstance(want, Exception):
                with pytest.raises(ValueError, match="chat template"):
                    fmt.render(conv[:k], add_generation_prompt=gen)
                refused += 1
                continue
            got = fmt.render(conv[:k], add_generation_prompt=gen)
            assert got == want, (template, kind, system, k, tok.decode(got), tok.decode(want))
            checked += 1
    assert checked >= 5
    if template in ("mistral-v0.1", "gemma-2"):
        assert refused == 6  # no system role: every history with one is refused


def test_a_template_moving_the_system_prompt_renders_whole(request, tmp_path: Path) -> None:
    text = (TEMPLATES / "mistral-v0.3-nemo.jinja").read_text(encoding="utf-8")
    folder = folder_with_template(
        request.getfixturevalue("spm_bpe_legacy_dir"), tmp_path / "t", text
    )
    fmt = get_chat_format(load_tokenizer(folder))
    conv = [SYSTEM, *TURNS]
    fmt.render(conv[:2])  # one user turn: the system prompt sits in it, as it will stay
    assert fmt.num_whole_renders == 0
    fmt.render(conv[:4])  # the system prompt moved to the new last user turn
    assert fmt.num_whole_renders == 1
    with pytest.raises(NotAppendOnly):
        fmt.segments(conv[:4])


QWEN3_THINKING = [
    {"role": "user", "content": "Hello there, how are you today?"},
    {
        "role": "assistant",
        "content": "<think>\nThe user greets me.\n</think>\n\nI am fine, thanks.",
    },
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "<think>\nEasy.\n</think>\n\nThe capital is Paris."},
    {"role": "user", "content": "Merci! Numbers 12345 and 3.14159 😀"},
    {"role": "assistant", "content": "De rien!", "reasoning_content": "A polite reply."},
]


@pytest.mark.parametrize("kind", ["bytelevel_dir", "llama3_dir"])
@pytest.mark.parametrize("kwargs", [{}, {"enable_thinking": False}, {"enable_thinking": True}])
def test_qwen3_thinking_renders_as_apply_chat_template(
    request, tmp_path: Path, kind: str, kwargs: dict
) -> None:
    """Qwen3 keeps a reply's reasoning (or an empty <think></think>) only on the assistant
    turns after the last user query: earlier replies lose it once a user turn follows, so
    those histories render whole; enable_thinking=False writes an empty think block into the
    generation prompt. Template keyword arguments reach the template as in transformers."""
    from transformers import AutoTokenizer

    text = (TEMPLATES / "qwen3.jinja").read_text(encoding="utf-8")
    folder = folder_with_template(request.getfixturevalue(kind), tmp_path / "t", text)
    tok, hf = load_tokenizer(folder), AutoTokenizer.from_pretrained(str(folder))
    fmt = get_chat_format(tok, template_kwargs=kwargs)
    checked = 0
    for turns in (TURNS, QWEN3_THINKING):
        for system in (False, True):
            conv = [SYSTEM, *turns] if system else turns
            for k in range(1, len(conv) + 1):
                gen = conv[k - 1]["role"] != "assistant"
                out = hf.apply_chat_template(
                    conv[:k], tokenize=True, add_generation_prompt=gen, **kwargs
                )
                want = list(getattr(out, "input_ids", out))
                got = fmt.render(conv[:k], add_generation_prompt=gen)
                assert got == want, (kwargs, system, k, tok.decode(got), tok.decode(want))
                checked += 1
    assert checked == 24
    assert fmt.num_whole_renders > 0  # a reply followed by a user turn loses its think block
    opening = tok.decode(fmt.generation_prompt_ids(TURNS[:1]))  # from the user turn's "\n" on
    think = kwargs.get("enable_thinking") is False
    assert opening == "\n<|im_start|>assistant\n" + ("<think>\n\n</think>\n\n" if think else "")


def test_gemma3_folds_the_system_prompt_and_stays_append_only(request, tmp_path: Path) -> None:
    """Gemma 3 has no system turn: the system prompt opens the first user turn, which it
    never leaves, so histories with one still render message by message."""
    text = (TEMPLATES / "gemma-3.jinja").read_text(encoding="utf-8")
    folder = folder_with_template(request.getfixturevalue("spm_bpe_dir"), tmp_path / "t", text)
    tok = load_tokenizer(folder)
    fmt = get_chat_format(tok)
    conv = [SYSTEM, *TURNS]
    segments = fmt.segments(conv)
    assert segments[0].ids == tuple(tok.encode("<s>", add_special_tokens=False))  # BOS alone
    first = tok.decode(list(segments[1].ids))
    assert first.startswith("<start_of_turn>user\nYou are Ærø, a helpful bot.\n\nHello there")
    for k in range(1, len(conv) + 1):
        fmt.render(conv[:k], add_generation_prompt=conv[k - 1]["role"] != "assistant")
    assert fmt.num_whole_renders == 0
    assert fmt.stop_strings == ["<end_of_turn>"]


@pytest.mark.parametrize("kind", CASES["phi-3"])
def test_phi3_trailing_eos_stays_append_only(request, tmp_path: Path, kind: str) -> None:
    """Phi-3 ends a history with EOS when add_generation_prompt is false and drops it once
    a message or the generation prompt follows: that EOS ends the conversation, it is not
    part of the last message, so histories still render message by message and the probe
    reply's closing <|end|> is the stop string."""
    from transformers import AutoTokenizer

    text = (TEMPLATES / "phi-3.jinja").read_text(encoding="utf-8")
    folder = folder_with_template(request.getfixturevalue(kind), tmp_path / "t", text)
    tok, hf = load_tokenizer(folder), AutoTokenizer.from_pretrained(str(folder))
    fmt = get_chat_format(tok)
    assert fmt.stop_strings == ["<|end|>"]
    conv = [SYSTEM, *TURNS, {"role": "assistant", "content": "De rien!"}]
    for k in range(1, len(conv) + 1):
        for gen in (False, True):
            want = _reference(hf, conv[:k], gen)
            assert fmt.render(conv[:k], add_generation_prompt=gen) == want, (k, gen)
    assert fmt.num_whole_renders == 0
    segments = fmt.segments(conv)
    opening = fmt.generation_prompt_ids(conv[:-1])
    suffix = fmt.reply_suffix_ids(conv)
    assert tok.decode(suffix) == "<|end|>"
    assert segments[-1].opening == tuple(opening)
    assert segments[-1].closing == tuple(suffix)
    whole = fmt.render(conv, add_generation_prompt=False)
    ids = [t for s in segments for t in s.ids]
    assert whole[: len(ids)] == ids
    assert tok.decode(whole[len(ids) :]).strip() == tok.eos_token  # the conversation's end
    assert fmt.num_whole_renders == 0
