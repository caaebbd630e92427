"""Tokenizer loading, encode/decode parity with transformers.AutoTokenizer, continuation."""

from __future__ import annotations

import json
import random
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blendrt.tokenizer.tokenizer import Tokenizer, load_tokenizer

TRICKY = (
    "",
    " ",
    "   ",
    "Hello world",
    " Hello world",
    "Hello world ",
    "  Hello   world  ",
    "\n",
    "\n\nHello\n",
    "\tTab\there\r\n",
    " \t \n x",
    "Café naïve résumé Ærøskøbing",
    "日本語のテキスト 中文文本也在这里。",
    "😀👍🏽👨‍👩‍👧🇫🇷❤️",
    "€100 and 12345678 and 3.14159",
    "</s>",
    "<s>Hello</s>",
    "a</s>b",
    "x <s>  y </s> ",
    "<|im_start|>user\nHi<|im_end|>\n",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
    "<|endoftext|>The end<|endoftext|>",
    "<tool>call</tool>",
    "<unk><pad>",
    "USER: hi ASSISTANT:",
    "▁already▁marked",
    "\u3000full width \uff46\uff55\uff4c\uff4c \ufb01",
    "<0x41>\ufffd",
)
# Characters and specials hypothesis builds strings from.
ALPHABET = (*"ab cH\n\t<>/|_é日😀\u200d€1▁", "</s>", "<s>", "<|im_end|>", "<tool>", "  ")


@pytest.fixture(scope="session")
def hf_cache() -> dict:
    return {}


def reference(folder: Path, cache: dict):
    """transformers.AutoTokenizer for `folder`, loaded once."""
    if folder not in cache:
        from transformers import AutoTokenizer
        from transformers.utils import logging

        logging.set_verbosity_error()
        cache[folder] = AutoTokenizer.from_pretrained(str(folder))
    return cache[folder]


@pytest.fixture
def pair(tokenizer_dir: Path, hf_cache: dict) -> tuple[Tokenizer, object]:
    key = ("blendrt", tokenizer_dir)
    if key not in hf_cache:
        hf_cache[key] = load_tokenizer(tokenizer_dir)
    return hf_cache[key], reference(tokenizer_dir, hf_cache)


def assert_parity(tok: Tokenizer, hf: object, texts: Sequence[str], rng: random.Random) -> None:
    bad = []
    for text in texts:
        for specials in (True, False):
            want = hf(text, add_special_tokens=specials).input_ids
            if tok.encode(text, add_special_tokens=specials) != want:
                bad.append(("encode", text, specials))
            for skip in (True, False):
                if tok.decode(want, skip_special_tokens=skip) != hf.decode(
                    want, skip_special_tokens=skip
                ):
                    bad.append(("decode", want, skip))
    for _ in range(300):  # arbitrary ids: byte pieces out of order, specials anywhere
        ids = [rng.randrange(len(hf)) for _ in range(rng.randint(0, 10))]
        for skip in (True, False):
            if tok.decode(ids, skip_special_tokens=skip) != hf.decode(
                ids, skip_special_tokens=skip
            ):
                bad.append(("decode", ids, skip))
    assert bad == [], bad[:5]


def test_parity_with_transformers(pair: tuple[Tokenizer, object]) -> None:
    tok, hf = pair
    assert_parity(tok, hf, TRICKY, random.Random(0))
    assert tok.vocab_size == len(hf)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "bos_token"):
        assert getattr(tok, name) == getattr(hf, name), name
    # add_bos/eos_token tell what encode really adds (transformers' attribute may not, Llama 3)
    full, plain = hf("x").input_ids, hf("x", add_special_tokens=False).input_ids
    k = full.index(plain[0])
    assert tok.add_bos_token == (full[:k] == [hf.bos_token_id])
    assert tok.add_eos_token == (full[k + len(plain) :] == [hf.eos_token_id])
    # all_special_ids: exactly the ids decode(skip_special_tokens=True) drops
    dropped = {
        i for i in range(len(hf)) if hf.decode([i], skip_special_tokens=True) != hf.decode([i])
    }
    assert tok.all_special_ids == dropped
    assert {hf.bos_token_id, hf.eos_token_id, hf.unk_token_id, hf.pad_token_id} - {None} <= dropped


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.lists(st.sampled_from(ALPHABET), max_size=14).map("".join))
def test_random_text_parity(pair: tuple[Tokenizer, object], text: str) -> None:
    tok, hf = pair
    assert tok.encode(text) == hf(text).input_ids
    assert (
        tok.encode(text, add_special_tokens=False) == hf(text, add_special_tokens=False).input_ids
    )


def shared_variants(shared: Path, dst: Path) -> list[Path]:
    """The shared sentencepiece models in the layouts transformers treats differently."""
    layouts = {
        "llama2": (
            "llama2-tokenizer",
            {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True},
        ),
        "llama2-legacy": (
            "llama2-tokenizer",
            {"tokenizer_class": "LlamaTokenizer", "legacy": True},
        ),
        "llama2-bare": ("llama2-tokenizer", None),
        "unigram-bare": ("spm-unigram", None),
        "unigram-first": ("spm-unigram", {"legacy": False, "add_eos_token": True}),
    }
    out = [shared / "stories260K"]
    for name, (src, cfg) in layouts.items():
        (dst / name).mkdir()
        shutil.copy(shared / src / "tokenizer.model", dst / name)
        if cfg is not None:
            (dst / name / "tokenizer_config.json").write_text(json.dumps(cfg))
        out.append(dst / name)
    return out


def test_shared_models_parity(shared_models: Path, tmp_path: Path, hf_cache: dict) -> None:
    text = (shared_models / "stories260K" / "expected_greedy_t0_n200.txt").read_text()
    rng = random.Random(1)
    slices = [
        text[i : i + rng.randint(1, 60)] for i in (rng.randrange(len(text)) for _ in range(40))
    ]
    for folder in shared_variants(shared_models, tmp_path):
        tok, hf = load_tokenizer(folder), reference(folder, hf_cache)
        assert tok.kind == "sentencepiece"
        assert_parity(tok, hf, [*TRICKY, *slices], rng)
    stories = load_tokenizer(shared_models / "stories260K")
    assert (stories.bos_token_id, stories.eos_token_id, stories.add_bos_token) == (1, 2, True)
    first = stories.decode(
        [1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298], skip_special_tokens=True
    )
    assert len(first) > 10 and text.startswith(first)


LLAMA = MappingProxyType({"tokenizer_class": "LlamaTokenizer"})


@pytest.mark.parametrize(  # more tokenizer_config.json variants transformers treats differently
    ("source", "cfg"),
    [
        pytest.param("spm_bpe_dir", None, id="bpe-no-config"),
        pytest.param("spm_bpe_dir", {**LLAMA, "add_prefix_space": False}, id="bpe-no-prefix"),
        pytest.param("spm_bpe_dir", {**LLAMA, "add_eos_token": True}, id="bpe-eos"),
        pytest.param(
            "spm_unigram_dir", {"legacy": False, "add_eos_token": True}, id="unigram-first"
        ),
        pytest.param(
            "spm_unigram_dir", {"split_special_tokens": True, "pad_token": "<pad>"}, id="split"
        ),
        pytest.param("llama2_json_dir", {**LLAMA, "add_eos_token": True}, id="json-ignores-flags"),
    ],
)
def test_config_variants_parity(
    source: str, cfg: dict | None, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    shutil.copytree(request.getfixturevalue(source), tmp_path, dirs_exist_ok=True)
    (tmp_path / "tokenizer_config.json").unlink()
    if cfg is not None:
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok, hf = load_tokenizer(tmp_path), reference(tmp_path, {})
    # Known gap: with split_special_tokens a converted Unigram also finds "<unk>" in text.
    texts = [t for t in TRICKY if "<unk>" not in t or not (cfg or {}).get("split_special_tokens")]
    assert_parity(tok, hf, texts, random.Random(2))
    assert (tok.bos_token_id, tok.eos_token_id, tok.vocab_size) == (
        hf.bos_token_id,
        hf.eos_token_id,
        len(hf),
    )


CONTINUATIONS = (
    ("Hello", " world"),
    ("Hello ", "world"),
    ("USER: hi\n", "ASSISTANT: hello"),
    ("a", "</s>b"),
    ("<s>", "USER: hi"),
    ("x</s>", " y"),
    ("line\n", "  indented"),
    ("Café", " naïve 日本語 😀"),
    ("<|im_start|>user\n", "Hi<|im_end|>\n"),
    ("4", "2"),
)


def test_encode_continuation_round_trips(pair: tuple[Tokenizer, object]) -> None:
    tok, _ = pair
    specials = sorted((tok.id_to_token(i) for i in tok.all_special_ids), key=len, reverse=True)

    def visible(text: str) -> str:  # what decode(skip_special_tokens=True) can give back
        for special in specials:
            text = text.replace(special, "")
        return text

    def round_trips(text: str) -> bool:
        return tok.decode(tok.encode(text), skip_special_tokens=True) == visible(text)

    checked = 0
    for a, b in CONTINUATIONS:  # where the model can spell both (NFKC / unknowns / trimming)
        if round_trips(a) and round_trips(a + b):
            ids = tok.encode(a) + tok.encode_continuation(b)
            assert tok.decode(ids, skip_special_tokens=True) == visible(a + b), (a, b)
            checked += 1
    assert checked >= 3
    assert tok.encode_continuation("") == []


def test_continuation_has_no_dummy_prefix(pair: tuple[Tokenizer, object]) -> None:
    tok, hf = pair
    pieces = [tok.id_to_token(i) for i in tok.encode_continuation("USER:")]
    assert not pieces[0].startswith("▁"), pieces
    first = [tok.id_to_token(i) for i in tok.encode("USER:", add_special_tokens=False)]
    if tok.kind == "sentencepiece" or "▁" in "".join(first):  # Metaspace / Prepend "▁"
        assert first[0].startswith("▁"), first
        assert tok.encode_continuation("a b") == tok.encode_continuation(
            "a"
        ) + tok.encode_continuation(" b")
    else:  # byte-level: a continuation is a plain encoding
        assert tok.encode_continuation("x y") == hf("x y", add_special_tokens=False).input_ids
    for i in tok.all_special_ids:  # special-token strings still map to their ids
        assert tok.encode_continuation(tok.id_to_token(i)) == [i]


def test_llama_style_settings(spm_bpe_dir: Path, llama3_dir: Path, bytelevel_dir: Path) -> None:
    llama = load_tokenizer(spm_bpe_dir)
    assert (llama.kind, llama.bos_token, llama.eos_token) == ("sentencepiece", "<s>", "</s>")
    assert llama.pad_token_id == 600 and llama.token_to_id("<pad>") == 600
    assert llama.token_to_id("no such piece") is None and llama.token_to_id("<tool>") == 3
    assert "[INST]" in llama.chat_template
    assert llama.encode("a</s>b")[:1] == [1] and 2 in llama.encode("a</s>b")
    llama3 = load_tokenizer(llama3_dir)
    assert llama3.kind == "tokenizers" and llama3.add_bos_token and not llama3.add_eos_token
    assert llama3.eos_token == "<|eot_id|>" and llama3.eos_token_id == 4
    assert llama3.eos_token_ids == frozenset({1, 4})  # generation_config lists both
    assert "<|im_start|>" in llama3.chat_template  # from chat_template.jinja
    assert llama3.encode("<|eot_id|>", add_special_tokens=False) == [4]
    gpt = load_tokenizer(bytelevel_dir)
    assert gpt.bos_token_id == gpt.eos_token_id == gpt.unk_token_id == 0 and gpt.pad_token_id == 1
    assert not gpt.add_bos_token and gpt.chat_template is None


def test_chat_template_list_and_class_defaults(spm_bpe_dir: Path, tmp_path: Path) -> None:
    shutil.copy(spm_bpe_dir / "tokenizer.model", tmp_path)
    cfg = {
        "tokenizer_class": "LlamaTokenizerFast",
        "chat_template": [
            {"name": "tool_use", "template": "T"},
            {"name": "default", "template": "D"},
        ],
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 5]}))
    tok = load_tokenizer(tmp_path)
    assert tok.chat_template == "D"
    assert (tok.bos_token, tok.eos_token_id, tok.add_bos_token) == ("<s>", 2, False)
    assert tok.eos_token_ids == frozenset({2, 5})


def test_prefers_tokenizer_json(llama2_json_dir: Path, spm_bpe_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(llama2_json_dir, tmp_path, dirs_exist_ok=True)
    shutil.copy(spm_bpe_dir / "tokenizer.model", tmp_path)
    assert load_tokenizer(tmp_path).kind == "tokenizers"
    (tmp_path / "tokenizer.json").unlink()
    assert load_tokenizer(tmp_path).kind == "sentencepiece"


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json and tokenizer\.model") as err:
        load_tokenizer(tmp_path)
    assert str(tmp_path) in str(err.value)
    (tmp_path / "tokenizer.model").write_bytes(b"\x00not a sentencepiece model\xff" * 8)
    with pytest.raises(ValueError, match="not a valid sentencepiece model"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"not a valid tokenizer\.json"):
        load_tokenizer(tmp_path)


def test_never_runs_folder_code(bytelevel_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(bytelevel_dir, tmp_path, dirs_exist_ok=True)
    marker = tmp_path / "ran"
    (tmp_path / "tokenization_evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    cfg.update(
        tokenizer_class="EvilTokenizer",
        auto_map={"AutoTokenizer": [None, "tokenization_evil.EvilTokenizer"]},
    )
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tok = load_tokenizer(tmp_path)
    assert any("EvilTokenizer" in str(w.message) for w in caught)
    assert not marker.exists()
    assert tok.encode("Hello world") == load_tokenizer(bytelevel_dir).encode("Hello world")
