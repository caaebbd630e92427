"""IncrementalDetokenizer: deltas add up to decode(), no broken characters, bounded windows."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blendrt.tokenizer.detokenizer import IncrementalDetokenizer
from blendrt.tokenizer.tokenizer import Tokenizer, load_tokenizer

TEXTS = (
    "Hello world! How are you?",
    "  leading and   inner   spaces \n\n\ttabs\t",
    "Café naïve résumé Ærøskøbing",
    "日本語のテキスト 中文文本也在这里。",
    "😀👍🏽👨‍👩‍👧🇫🇷❤️ €100",
    "a</s>b <s> c<|im_end|>\n<|im_start|>assistant\n<|eot_id|>x",
    "<|endoftext|>The end.<tool>",
)


@pytest.fixture(scope="session")
def _cache() -> dict:
    return {}


@pytest.fixture
def tok(tokenizer_dir: Path, _cache: dict) -> Tokenizer:
    if tokenizer_dir not in _cache:
        _cache[tokenizer_dir] = load_tokenizer(tokenizer_dir)
    return _cache[tokenizer_dir]


def stream(tok: Tokenizer, ids: Sequence[int], skip: bool) -> list[str]:
    """The deltas of one stream, checked against the full decode as they come."""
    det = IncrementalDetokenizer(tok, skip_special_tokens=skip)
    full = tok.decode(ids, skip_special_tokens=skip)
    deltas = [det.add(i) for i in ids]
    deltas.append(det.flush())
    assert "".join(deltas) == full == det.text, (ids, deltas, full)
    pos = 0
    for delta in deltas:  # a U+FFFD only where the full text has one
        assert full[pos : pos + len(delta)] == delta
        pos += len(delta)
    return deltas


def assert_no_broken_chars(deltas: list[str], full: str) -> None:
    assert "\ufffd" not in full and not any("\ufffd" in d for d in deltas)


@pytest.mark.parametrize("skip", [True, False])
def test_encodings_stream_exactly(tok: Tokenizer, skip: bool) -> None:
    for text in TEXTS:
        ids = tok.encode(text)
        deltas = stream(tok, ids, skip)
        assert_no_broken_chars(deltas, tok.decode(ids, skip_special_tokens=skip))
        assert sum(1 for d in deltas if d) >= min(3, len(ids) // 4)  # text comes as it goes


def id_pool(tok: Tokenizer) -> list[int]:
    """Ids worth mixing: byte pieces, specials, pieces of multi-byte text, anything."""
    pool = sorted(tok._byte_ids)[:: max(1, len(tok._byte_ids) // 64)] + sorted(tok.all_special_ids)
    for text in TEXTS:
        pool += tok.encode(text, add_special_tokens=False)
    return pool


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data(), skip=st.booleans())
def test_random_ids_stream_exactly(tok: Tokenizer, data: st.DataObject, skip: bool) -> None:
    any_id = st.integers(0, tok.vocab_size - 1)
    ids = data.draw(st.lists(st.one_of(st.sampled_from(id_pool(tok)), any_id), max_size=20))
    stream(tok, ids, skip)


def test_byte_fallback_runs(spm_bpe_dir: Path) -> None:
    tok = load_tokenizer(spm_bpe_dir)
    e2, x82, xac, x80 = (tok.token_to_id(f"<0x{h}>") for h in ("E2", "82", "AC", "80"))
    hello, world = tok.encode("Hello world", add_special_tokens=False)[:2]
    det = IncrementalDetokenizer(tok)
    assert det.add(hello) == "Hello"  # first token: its leading "▁" is stripped
    assert [det.add(i) for i in (e2, x82, xac)] == ["", "", ""]  # a run waits for its end
    assert det.add(world) == "€" + tok.decode([hello, world])[len("Hello") :]
    # A stray byte after a complete "€" spoils the whole run, as transformers decodes it.
    assert tok.decode([e2, x82, xac, x80]) == "\ufffd" * 4
    deltas = stream(tok, [hello, e2, x82, xac, x80, world], skip=True)
    assert "€" not in "".join(deltas)
    # A skipped special token inside a run is invisible; a kept one ends the run.
    assert "".join(stream(tok, [e2, 2, x82, xac], skip=True)) == "€"
    assert "".join(stream(tok, [e2, 2, x82, xac], skip=False)) == "\ufffd</s>\ufffd\ufffd"


def test_byte_level_partial_characters(bytelevel_dir: Path) -> None:
    tok = load_tokenizer(bytelevel_dir)
    ids = tok.encode("ok 🦀𝄞 हि x", add_special_tokens=False)  # characters unseen in training
    assert sum("\ufffd" in tok.decode([i]) for i in ids) >= 6  # split over byte tokens
    deltas = stream(tok, ids, skip=True)
    assert_no_broken_chars(deltas, tok.decode(ids))
    assert "🦀𝄞" in "".join(deltas[:-2])  # complete characters come out before the flush


def test_windows_stay_small(spm_bpe_dir: Path, bytelevel_dir: Path) -> None:
    for folder in (spm_bpe_dir, bytelevel_dir):
        tok = load_tokenizer(folder)
        longest = 0
        raw = tok._decode_raw

        def spy(ids: Sequence[int], skip: bool, raw=raw) -> str:
            nonlocal longest
            longest = max(longest, len(ids))
            return raw(ids, skip)

        tok._decode_raw = spy  # type: ignore[method-assign]
        ids = tok.encode("The quick brown fox jumps over the lazy dog. 😀 Café! " * 60)
        deltas = stream(tok, ids, skip=True)
        assert len(ids) > 600 and longest <= len(ids)  # stream() decodes everything once
        longest = 0
        det = IncrementalDetokenizer(tok)
        assert "".join([det.add(i) for i in ids] + [det.flush()]) == "".join(deltas)
        assert longest <= 12, longest  # each step decodes a few recent ids, not the whole text


def test_clean_up_spaces(spm_unigram_dir: Path, tmp_path: Path) -> None:
    """Unigram models may ask for transformers' clean-up (" ." -> "."); streams must agree."""
    shutil.copy(spm_unigram_dir / "tokenizer.model", tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"clean_up_tokenization_spaces": True})
    )
    tok = load_tokenizer(tmp_path)
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    pieces = [
        tok.token_to_id(p) for p in ("▁", ".", "▁.", ",", "▁'", "'", "s", "m", "n", "t", "▁a")
    ]
    pieces = [p for p in pieces if p is not None]
    assert len(pieces) >= 6
    ids = [pieces[(7 * k * k + 3 * k) % len(pieces)] for k in range(400)]
    assert tok.decode(ids) == hf.decode(ids) != hf.decode(ids, clean_up_tokenization_spaces=False)
    for n in range(0, 400, 37):
        stream(tok, ids[:n], skip=True)
