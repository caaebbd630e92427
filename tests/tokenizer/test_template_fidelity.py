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
    if template == "mistral-v0.1":
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
