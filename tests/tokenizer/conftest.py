"""Tokenizer folders built at test time, in the layouts that blendrt members ship with.

Every folder is trained here on inline text (nothing is downloaded) and saved the way Hugging
Face tools save them, so that `transformers.AutoTokenizer` can load each one as the reference:

* ``bytelevel_dir``  GPT-2/GPT-J style byte-level BPE ``tokenizer.json`` (``<|endoftext|>`` as
  bos/eos/unk, a pad token, extra special tokens and one non-special added token);
* ``gptj_dir``       the same files declaring ``tokenizer_class: GPT2Tokenizer`` as GPT-J does;
* ``llama3_dir``     Llama-3 style ``tokenizer.json``: regex split + byte-level BPE, special tokens
  ``<|begin_of_text|>``, ``<|eot_id|>``, ``<|im_start|>``... and a BOS-adding post-processor;
* ``spm_bpe_dir``    sentencepiece BPE ``tokenizer.model`` with byte fallback (Llama-2 style,
  ``LlamaTokenizer``, ``legacy: false``, a ``<pad>`` added after the vocabulary, a chat template);
* ``spm_bpe_legacy_dir`` the same model declared ``legacy: true`` (as stories260K is);
* ``spm_unigram_dir`` sentencepiece unigram (NFKC normalization, no byte fallback, no class);
* ``llama2_json_dir`` the BPE model as a Llama-2 style ``tokenizer.json`` (Prepend + Replace
  normalizer, no pre-tokenizer) declared ``LlamaTokenizerFast``, which transformers rebuilds;
* ``prepend_json_dir`` the same ``tokenizer.json`` declared ``PreTrainedTokenizerFast``, so it
  runs as written (a Prepend normalizer puts "▁" before every chunk).

``all_tokenizer_dirs`` maps those names to paths; ``tokenizer_dir`` is parametrized over them.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest

_CORPUS = """\
The quick brown fox jumps over the lazy dog. The dog sleeps in the sun.
Hello world! Hello there, how are you today? I am fine, thank you.
USER: What is the capital of France? ASSISTANT: The capital of France is Paris.
SYSTEM: You are a helpful assistant. Answer briefly and politely.
Numbers like 12345, 3.14159 and 2024-06-01 appear in text; so do prices: $19.99.
Café, naïve, résumé, façade, jalapeño, Zürich, São Paulo, Ærøskøbing.
Привет, как дела? Всё хорошо. שלום עולם. مرحبا بالعالم.
日本語のテキストです。中文文本也在这里。한국어 문장도 있습니다.
Emoji: 😀 😃 👍 👍🏽 👨‍👩‍👧 🇫🇷 ❤️ and the euro sign € and ellipsis …
def main():\n    return 42\n\tindented with a tab\n
    four leading spaces, then   three   spaces   between   words.
Once upon a time there was a little girl who loved to play in the park with her friends.
She saw a big red ball and she wanted to play with it. Her mom said yes.
They played all day long and were very happy. The end.
"""

# One token of each kind a chat format meets: Llama-3 headers and ChatML markers.
LLAMA3_SPECIALS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|im_start|>",
    "<|im_end|>",
)
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] + ' ' + eos_token }}{% endif %}{% endfor %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def corpus_lines() -> list[str]:
    """The training text, one sentence a line, repeated so merges have counts to rank."""
    return [line for line in _CORPUS.splitlines() if line] * 3


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False), encoding="utf-8")


def build_bytelevel_dir(dst: Path, *, llama3: bool = False) -> Path:
    """Train a byte-level BPE with `tokenizers` and save it with `save_pretrained`."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(LLAMA3_SPECIALS) if llama3 else ["<|endoftext|>", "<|pad|>"]
    tok = Tokenizer(models.BPE())
    if llama3:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_lines(), trainer=trainer)
    if llama3:
        bos = tok.token_to_id("<|begin_of_text|>")
        tok.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A",
            pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
            special_tokens=[("<|begin_of_text|>", bos)],
        )
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>"
        )
        fast.chat_template = CHATML_TEMPLATE
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token="<|endoftext|>",
            eos_token="<|endoftext|>",
            unk_token="<|endoftext|>",
            pad_token="<|pad|>",
            additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        )
        fast.add_tokens(["<tool>"])  # an added token that is not special
    fast.save_pretrained(str(dst))
    if llama3:
        gen = {"bos_token_id": 0, "eos_token_id": [1, 4]}  # <|end_of_text|>, <|eot_id|>
        _write_json(dst / "generation_config.json", gen)
    return dst


def train_spm(*, model_type: str, **options: object) -> bytes:
    """Train a small sentencepiece model in memory and return its serialized proto."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines()),
        model_writer=buf,
        model_type=model_type,
        hard_vocab_limit=False,
        minloglevel=2,
        **options,
    )
    return buf.getvalue()


def spm_bpe_model() -> bytes:
    """Llama-2 style: BPE, byte fallback, digits split, no normalization, whitespace kept.

    As in Llama 2, pieces made only of "▁" keep their early ids but get a score of -1e9, so
    ranking merges by score (sentencepiece) and by id (transformers) disagree on space runs.
    """
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(_train_spm_bpe())
    for piece in proto.pieces:
        if len(piece.piece) > 1 and set(piece.piece) == {"\u2581"}:
            piece.score = -1e9
    return proto.SerializeToString()


def _train_spm_bpe() -> bytes:
    return train_spm(
        model_type="bpe",
        vocab_size=600,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        character_coverage=0.98,
        user_defined_symbols=["<tool>"],
    )


def spm_unigram_model() -> bytes:
    """sentencepiece defaults: unigram, NFKC, extra whitespace removed, no byte fallback."""
    return train_spm(model_type="unigram", vocab_size=300, character_coverage=0.995)


def write_spm_dir(dst: Path, model: bytes, config: dict[str, object] | None) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "tokenizer.model").write_bytes(model)
    if config is not None:
        _write_json(dst / "tokenizer_config.json", config)
    return dst


def llama_tokenizer_config(*, legacy: bool, vocab_size: int) -> dict[str, object]:
    return {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": legacy,
        "added_tokens_decoder": {
            str(vocab_size): {
                "content": "<pad>",
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
        },
        "chat_template": LLAMA2_CHAT_TEMPLATE,
    }


@pytest.fixture(scope="session")
def _spm_bpe_bytes() -> bytes:
    return spm_bpe_model()


@pytest.fixture(scope="session")
def bytelevel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bytelevel_dir(tmp_path_factory.mktemp("bytelevel"))


@pytest.fixture(scope="session")
def gptj_dir(bytelevel_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("gptj")
    shutil.copytree(bytelevel_dir, dst, dirs_exist_ok=True)
    cfg = json.loads((dst / "tokenizer_config.json").read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = "GPT2Tokenizer"
    _write_json(dst / "tokenizer_config.json", cfg)
    return dst


@pytest.fixture(scope="session")
def llama3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bytelevel_dir(tmp_path_factory.mktemp("llama3"), llama3=True)


def _spm_vocab_size(model: bytes) -> int:
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(model)
    return len(proto.pieces)


@pytest.fixture(scope="session")
def spm_bpe_dir(_spm_bpe_bytes: bytes, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = llama_tokenizer_config(legacy=False, vocab_size=_spm_vocab_size(_spm_bpe_bytes))
    return write_spm_dir(tmp_path_factory.mktemp("spm_bpe"), _spm_bpe_bytes, cfg)


@pytest.fixture(scope="session")
def spm_bpe_legacy_dir(_spm_bpe_bytes: bytes, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = llama_tokenizer_config(legacy=True, vocab_size=_spm_vocab_size(_spm_bpe_bytes))
    return write_spm_dir(tmp_path_factory.mktemp("spm_bpe_legacy"), _spm_bpe_bytes, cfg)


@pytest.fixture(scope="session")
def spm_unigram_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True}
    return write_spm_dir(tmp_path_factory.mktemp("spm_unigram"), spm_unigram_model(), cfg)


def build_llama2_json_dir(spm_dir: Path, dst: Path, *, tokenizer_class: str) -> Path:
    """Convert a sentencepiece folder with transformers, then rewrite it the Llama-2 way."""
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(spm_dir)).save_pretrained(str(dst))
    spec = json.loads((dst / "tokenizer.json").read_text(encoding="utf-8"))
    spec["normalizer"] = {
        "type": "Sequence",
        "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
        ],
    }
    spec["pre_tokenizer"] = None
    _write_json(dst / "tokenizer.json", spec)
    cfg = json.loads((dst / "tokenizer_config.json").read_text(encoding="utf-8"))
    cfg.update(tokenizer_class=tokenizer_class, legacy=False, add_bos_token=True)
    _write_json(dst / "tokenizer_config.json", cfg)
    return dst


@pytest.fixture(scope="session")
def llama2_json_dir(spm_bpe_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("llama2_json")
    return build_llama2_json_dir(spm_bpe_dir, dst, tokenizer_class="LlamaTokenizerFast")


@pytest.fixture(scope="session")
def prepend_json_dir(spm_bpe_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("prepend_json")
    return build_llama2_json_dir(spm_bpe_dir, dst, tokenizer_class="PreTrainedTokenizerFast")


TOKENIZER_DIR_NAMES = (
    "bytelevel_dir",
    "gptj_dir",
    "llama3_dir",
    "spm_bpe_dir",
    "spm_bpe_legacy_dir",
    "spm_unigram_dir",
    "llama2_json_dir",
    "prepend_json_dir",
)


@pytest.fixture(scope="session")
def all_tokenizer_dirs(request: pytest.FixtureRequest) -> dict[str, Path]:
    return {name: request.getfixturevalue(name) for name in TOKENIZER_DIR_NAMES}


@pytest.fixture(params=TOKENIZER_DIR_NAMES)
def tokenizer_dir(request: pytest.FixtureRequest) -> Path:
    """Each self-contained tokenizer folder in turn."""
    return request.getfixturevalue(request.param)


def folder_with_template(src: Path, dst: Path, template: str) -> Path:
    """A copy of the tokenizer folder src whose chat template is `template`."""
    shutil.copytree(src, dst)
    config_path = dst / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["chat_template"] = template
    config_path.write_text(json.dumps(config), encoding="utf-8")
    (dst / "chat_template.jinja").unlink(missing_ok=True)
    return dst
