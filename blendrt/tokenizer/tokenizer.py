"""Tokenizers of blend members, from local Hugging Face folders, equal to `transformers` 5.

`encode`/`decode` give what ``AutoTokenizer.from_pretrained(folder)`` gives, without importing
transformers or running code from the folder. ``tokenizer.json`` runs in `tokenizers`, adjusted
as transformers adjusts it (a declared ``LlamaTokenizer`` gets a Metaspace pre-tokenizer,
``GPT2Tokenizer`` a plain ByteLevel one; config added tokens join the vocabulary).
``tokenizer.model`` runs in `sentencepiece` the way transformers' conversion of it does: text
is split at added tokens and each chunk encoded alone. ``LlamaTokenizer`` drops the model's
normalizer, ranks BPE merges by piece id and puts "▁" before a chunk not starting with a space
(the first chunk only unless ``legacy``); with no class, the model's normalizer is kept. Decoding
turns "▁" into spaces, joins each run of byte pieces (a run that is not UTF-8 gives one U+FFFD
per byte) and strips one leading space.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as spm_pb2
from tokenizers import AddedToken, decoders, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

_FILES = ("tokenizer.json", "tokenizer.model")
_NAMED = tuple(f"{k}_token" for k in ("bos", "eos", "unk", "sep", "pad", "cls", "mask"))
_GENERIC = frozenset({"", "PreTrainedTokenizer", "PreTrainedTokenizerFast", "TokenizersBackend"})
_CLASS_OF_MODEL_TYPE = MappingProxyType(dict.fromkeys(("gpt2", "gptj", "codegen"), "GPT2Tokenizer"))
_DEFAULTS = MappingProxyType(  # unk, bos, eos of the class's __init__ when the config names none
    {"LlamaTokenizer": ("<unk>", "<s>", "</s>"), "GPT2Tokenizer": ("<|endoftext|>",) * 3}
)
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    return data if isinstance(data, dict) else {}


def _content(value: object) -> str | None:
    value = value.get("content") if isinstance(value, dict) else value
    return value if isinstance(value, str) else None


def _ints(value: object) -> list[int]:
    return [v for v in (value if isinstance(value, list) else [value]) if type(v) is int]


def _unk_bos_eos(tokens: Sequence[str | None]) -> dict[str, str | None]:
    return dict(zip(("unk_token", "bos_token", "eos_token"), tokens, strict=False))


class _Settings:
    """What the folder's JSON files say, read the way transformers reads them."""

    def __init__(self, folder: Path) -> None:
        self.cfg = cfg = _read_json(folder / "tokenizer_config.json")
        model, gen = (
            _read_json(folder / "config.json"),
            _read_json(folder / "generation_config.json"),
        )
        self.ids = {k: v for k, v in {**model, **gen}.items() if k.endswith("_token_id")}
        self.eos_ids = _ints(gen.get("eos_token_id")) + _ints(model.get("eos_token_id"))
        name = str(cfg.get("tokenizer_class") or model.get("tokenizer_class") or "")
        name = name.removesuffix("Fast") or _CLASS_OF_MODEL_TYPE.get(
            str(model.get("model_type")), ""
        )
        if name not in _GENERIC and name not in _DEFAULTS:
            warnings.warn(f"{folder}: {name} runs as a generic fast tokenizer", stacklevel=3)
        self.cls = name if name in _DEFAULTS else ""
        self.named = {k: _content(v) for k, v in cfg.items() if k in _NAMED}
        extra = cfg.get("extra_special_tokens") or cfg.get("additional_special_tokens") or []
        if "added_tokens_decoder" not in cfg:  # then transformers lets special_tokens_map.json win
            smap = _read_json(folder / "special_tokens_map.json")
            self.named |= {k: _content(v) for k, v in smap.items() if k in _NAMED}
            extra = smap.get("additional_special_tokens") or extra
        self.extra = [_content(v) for v in (extra.values() if isinstance(extra, dict) else extra)]
        template = cfg.get("chat_template")
        if isinstance(template, list):  # named templates: the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        if (folder / "chat_template.jinja").is_file():  # transformers prefers the file
            template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
        self.chat_template = template if isinstance(template, str) else None

    def added_tokens(self, defaults: dict[str, str | None]) -> list[AddedToken]:
        """Tokens transformers adds: config entries by id, then named, then extra specials."""
        entries = (self.cfg.get("added_tokens_decoder") or {}).items()
        decoder = sorted((int(i), e) for i, e in entries if isinstance(e, dict))
        out = [AddedToken(**{k: v for k, v in e.items() if k != "__type"}) for _, e in decoder]
        for content in [*{**defaults, **self.named}.values(), *self.extra]:
            if content is not None and content not in {t.content for t in out}:
                out.append(AddedToken(content, special=True, normalized=False))
        return out


def _never_prepend(node: Any) -> Any:
    """A tokenizer.json subtree that puts no "▁" or space in front of the text."""
    if isinstance(node, list):
        return [
            _never_prepend(n)
            for n in node
            if not (isinstance(n, dict) and n.get("type") == "Prepend")
        ]
    if not isinstance(node, dict):
        return node
    node = {k: _never_prepend(v) for k, v in node.items()}
    if node.get("type") == "Metaspace":
        node["prepend_scheme"] = "never"
    if node.get("type") in ("Metaspace", "ByteLevel") and "add_prefix_space" in node:
        node["add_prefix_space"] = False
    return node


class _HFBackend:
    """A tokenizer.json pipeline, set up the way transformers sets it up for the class."""

    def __init__(self, file: Path, s: _Settings) -> None:
        text = file.read_text(encoding="utf-8")
        try:
            tok = HFTokenizer.from_str(text)
        except Exception as e:
            raise ValueError(f"{file} is not a valid tokenizer.json: {e}") from e
        if s.cls == "LlamaTokenizer" and '"ByteLevel"' not in text:
            prefix = s.cfg.get("add_prefix_space", True) is not False
            scheme = ("always" if s.cfg.get("legacy", False) else "first") if prefix else "never"
            tok.normalizer = None
            tok.pre_tokenizer = pre_tokenizers.Metaspace("▁", prepend_scheme=scheme, split=False)
            steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
            tok.decoder = decoders.Sequence(steps + [decoders.Strip(" ", 1, 0)] * prefix)
        elif s.cls == "GPT2Tokenizer":
            tok.normalizer = None
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(bool(s.cfg.get("add_prefix_space", False)))
            tok.decoder = decoders.ByteLevel()
        self.named = {**_unk_bos_eos(_DEFAULTS.get(s.cls, ())), **s.named}
        present = {t.content for t in tok.get_added_tokens_decoder().values()}
        for t in s.added_tokens(_unk_bos_eos(_DEFAULTS.get(s.cls, ()))):
            if t.content not in present:
                (tok.add_special_tokens if t.special else tok.add_tokens)([t])
        tok.encode_special_tokens = bool(s.cfg.get("split_special_tokens", False))
        # (With a tokenizer.json, transformers ignores the config's add_bos/eos_token.)
        spec = json.loads(tok.to_str())
        self.tok, self.cont = tok, HFTokenizer.from_str(json.dumps(_never_prepend(spec)))
        self.cleanup = spec["model"].get("type") != "BPE"  # transformers skips it for BPE
        self.special_ids = frozenset(
            i for i, t in tok.get_added_tokens_decoder().items() if t.special
        )
        vocab = tok.get_vocab(with_added_tokens=True)
        fallback = '"ByteFallback"' in json.dumps(spec.get("decoder"))
        self.byte_ids = frozenset(
            i for p, i in vocab.items() if fallback and _BYTE_PIECE.fullmatch(p)
        )
        self.size = max(vocab.values(), default=-1) + 1

    def encode(self, text: str, specials: bool, cont: bool) -> list[int]:
        return (self.cont if cont else self.tok).encode(text, add_special_tokens=specials).ids

    def decode(self, ids: Sequence[int], skip: bool) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip)

    def token_to_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.tok.id_to_token(token_id)


def _load_proto(file: Path) -> spm_pb2.ModelProto:
    proto = spm_pb2.ModelProto()
    try:
        proto.ParseFromString(file.read_bytes())
        spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    except Exception as e:
        raise ValueError(f"{file} is not a valid sentencepiece model: {e}") from e
    return proto


def _encoder(
    proto: spm_pb2.ModelProto, llama: bool
) -> tuple[spm.SentencePieceNormalizer | None, spm.SentencePieceProcessor]:
    """The model's own (NFKC...) normalizer, which LlamaTokenizer drops, and a processor for
    text normalized and given its "▁" beforehand, with pieces ranked as transformers ranks them."""
    normalizer, norm, unigram = None, proto.normalizer_spec, proto.trainer_spec.model_type == 1
    if not llama:
        spec = spm_pb2.NormalizerSpec()
        spec.CopyFrom(norm)
        spec.add_dummy_prefix = spec.escape_whitespaces = spec.remove_extra_whitespaces = False
        normalizer = spm.SentencePieceNormalizer(normalizer_spec=spec)
    proto = spm_pb2.ModelProto.FromString(proto.SerializeToString())
    proto.normalizer_spec.name, proto.normalizer_spec.precompiled_charsmap = "identity", b""
    proto.normalizer_spec.add_dummy_prefix = proto.normalizer_spec.remove_extra_whitespaces = False
    for i, piece in enumerate(proto.pieces):
        if llama:
            piece.score = -float(i)  # LlamaTokenizer ranks BPE merges by piece id, not score
        elif piece.type == 3 and unigram:
            piece.type = 4  # a converted Unigram finds control pieces left in the text
    return normalizer, spm.SentencePieceProcessor(model_proto=proto.SerializeToString())


def _splitter(
    tokens: list[AddedToken], ids: dict[str, int]
) -> tuple[re.Pattern[str] | None, list[int]]:
    """A regex finding added tokens, longest first, and the id of each of its capture groups."""
    tokens = sorted(tokens, key=lambda k: -len(k.content))
    alternatives = [
        "\\s*" * k.lstrip
        + "(?<!\\w)" * k.single_word
        + f"({re.escape(k.content)})"
        + "(?!\\w)" * k.single_word
        + "\\s*" * k.rstrip
        for k in tokens
    ]
    return (re.compile("|".join(alternatives)) if tokens else None), [
        ids[k.content] for k in tokens
    ]


class _SPBackend:
    """A sentencepiece model run the way transformers' conversion of it encodes and decodes."""

    def __init__(self, file: Path, s: _Settings) -> None:
        proto = _load_proto(file)
        t, norm, llama = proto.trainer_spec, proto.normalizer_spec, s.cls == "LlamaTokenizer"
        self.llama, self.legacy = llama, bool(s.cfg.get("legacy", not llama))
        self.prefix = (
            s.cfg.get("add_prefix_space", True) is not False if llama else norm.add_dummy_prefix
        )
        self.strip_spaces = not llama and norm.remove_extra_whitespaces
        self.fallback, self.cleanup = llama or t.byte_fallback, not llama and t.model_type != 2
        self.normalizer, self.sp = _encoder(proto, llama)
        self.pieces = {i: p.piece for i, p in enumerate(proto.pieces)}
        own = [(t.unk_id, t.unk_piece), (t.bos_id, t.bos_piece), (t.eos_id, t.eos_piece)]
        defaults = _unk_bos_eos(
            _DEFAULTS["LlamaTokenizer"] if llama else [p if i >= 0 else None for i, p in own]
        )
        self.named = {**defaults, **s.named}
        # Control pieces are special added tokens, user-defined ones (Llama) plain added tokens.
        unique: dict[str, AddedToken] = {}
        for token in s.added_tokens(defaults) + [
            AddedToken(p.piece, special=p.type == 3)
            for p in proto.pieces
            if p.type == 3 or (llama and p.type == 4)
        ]:
            unique.setdefault(token.content, token)
        self.added: dict[str, int] = {}
        for token in unique.values():  # a piece keeps its id, a new token takes the next free one
            i = self.sp.piece_to_id(token.content)
            i = i if self.pieces.get(i) == token.content else len(self.pieces)
            self.added[token.content], self.pieces[i] = i, token.content
        self.special_ids = frozenset(self.added[k.content] for k in unique.values() if k.special)
        self.byte_ids = frozenset(
            i for i, p in self.pieces.items() if self.fallback and _BYTE_PIECE.fullmatch(p)
        )
        self.size = max(self.pieces) + 1
        split = bool(s.cfg.get("split_special_tokens", False))
        self.splitter, self.group_ids = _splitter(
            [k for k in unique.values() if not (split and k.special)], self.added
        )
        # transformers' post-processor: add_bos_token / add_eos_token, False when not given
        bos, eos = (
            self.named.get(k) if s.cfg.get(f"add_{k}") else None for k in ("bos_token", "eos_token")
        )
        self.bos, self.eos = ([self.added[k]] if k else [] for k in (bos, eos))

    def _chunk(self, text: str, first: bool, cont: bool) -> list[int]:
        """Ids of text between added tokens; `first`: it starts the whole text."""
        prefix = self.prefix and not cont and (first or self.legacy)
        if self.normalizer is not None:  # model normalizer, then spaces trimmed as HF does
            text, offsets = self.normalizer.normalize(text, with_offsets=True)
            lead = len(text) - len(text.lstrip(" ")) if self.strip_spaces else 0
            if self.strip_spaces:
                text = re.sub(" {2,}", " ", text if cont else text.strip(" "))
            # Metaspace "first" needs the text's first character to be the original first one.
            prefix = prefix and (self.legacy or (text != "" and offsets[lead] == 0))
        text = text.replace(" ", "▁")
        if prefix and text and ((self.legacy and not self.llama) or not text.startswith("▁")):
            text = "▁" + text  # Metaspace; the legacy conversion puts "▁" before a "▁" too
        return self.sp.encode(text)

    def encode(self, text: str, specials: bool, cont: bool) -> list[int]:
        ids: list[int] = []
        pos = 0
        for m in self.splitter.finditer(text) if self.splitter else ():
            if m.start() > pos:
                ids += self._chunk(text[pos : m.start()], pos == 0, cont)
            ids.append(self.group_ids[(m.lastindex or 1) - 1])
            pos = m.end()
        if pos < len(text):
            ids += self._chunk(text[pos:], pos == 0, cont)
        return [*self.bos, *ids, *self.eos] if specials else ids

    def decode(self, ids: Sequence[int], skip: bool) -> str:
        out: list[str] = []
        run = bytearray()
        tokens = [self.pieces.get(i) for i in ids if not (skip and i in self.special_ids)]
        for tok in [t for t in tokens if t is not None] + [""]:
            if self.fallback and _BYTE_PIECE.fullmatch(tok):
                run.append(int(tok[3:5], 16))
                continue
            if run:  # a run of byte pieces: its UTF-8 text, else one U+FFFD per byte
                try:
                    out.append(run.decode("utf-8"))
                except UnicodeDecodeError:
                    out.append("\ufffd" * len(run))
                run.clear()
            out.append(tok.replace("▁", " "))
        text = "".join(out)
        return text[1:] if self.prefix and text.startswith(" ") else text

    def token_to_id(self, token: str) -> int | None:
        i = self.added.get(token, self.sp.piece_to_id(token))
        return i if self.pieces.get(i) == token else None

    def id_to_token(self, token_id: int) -> str | None:
        return self.pieces.get(token_id)


class Tokenizer:
    """One member's tokenizer; build it with `load_tokenizer`."""

    def __init__(self, path: Path, backend: _HFBackend | _SPBackend, s: _Settings) -> None:
        self.path = str(path)
        self.kind = "sentencepiece" if isinstance(backend, _SPBackend) else "tokenizers"
        self._backend = backend
        self.vocab_size: int = backend.size
        self.all_special_ids: frozenset[int] = backend.special_ids  # what skip_special_tokens drops
        self._byte_ids: frozenset[int] = backend.byte_ids  # byte-fallback pieces: <0xE2>...
        self._cleanup = backend.cleanup and bool(s.cfg.get("clean_up_tokenization_spaces", False))
        self.chat_template: str | None = s.chat_template
        self.bos_token, self.bos_token_id = self._special(s, "bos")
        self.eos_token, self.eos_token_id = self._special(s, "eos")
        self.pad_token_id, self.unk_token_id = (
            self._special(s, "pad")[1],
            self._special(s, "unk")[1],
        )
        eos_ids = [i for i in [self.eos_token_id, *s.eos_ids] if i is not None]
        self.eos_token_ids = frozenset(i for i in eos_ids if 0 <= i < self.vocab_size)
        # What encode really puts around the text, whichever post-processor does it.
        full, plain = self.encode("a"), self.encode("a", add_special_tokens=False)
        k = next((k for k in range(len(full)) if full[k : k + len(plain)] == plain), 0)
        self.add_bos_token = self.bos_token_id is not None and self.bos_token_id in full[:k]
        self.add_eos_token = (
            self.eos_token_id is not None and self.eos_token_id in full[k + len(plain) :]
        )

    def _special(self, s: _Settings, key: str) -> tuple[str | None, int | None]:
        token = self._backend.named.get(f"{key}_token")
        tid = self.token_to_id(token) if token is not None else None
        if tid is None:  # no such token string: the id from generation_config / config.json
            tid = next(iter(_ints(s.ids.get(f"{key}_token_id"))), None)
            token = self.id_to_token(tid) if tid is not None else None
        return token, (tid if token is not None else None)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Ids of `text`, as ``AutoTokenizer.from_pretrained(folder)(text).input_ids``."""
        return self._backend.encode(text, add_special_tokens, False)

    def encode_continuation(self, text: str) -> list[int]:
        """Ids of `text` that directly follows other text: no BOS/EOS, no dummy-prefix "▁"."""
        return self._backend.encode(text, False, True)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        """Text of `ids`, as ``AutoTokenizer.from_pretrained(folder).decode(ids)``."""
        text = self._backend.decode(ids, skip_special_tokens)
        return clean_up_tokenization(text) if self._cleanup else text

    def _decode_raw(self, ids: Sequence[int], skip_special_tokens: bool) -> str:
        """`decode` before transformers' clean-up (for the incremental detokenizer)."""
        return self._backend.decode(ids, skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._backend.id_to_token(token_id)

    def __repr__(self) -> str:
        return f"Tokenizer(path={self.path!r}, kind={self.kind!r}, vocab_size={self.vocab_size})"


def clean_up_tokenization(text: str) -> str:
    """transformers' `clean_up_tokenization`: no space before punctuation and contractions."""
    for old in (" .", " ?", " !", " ,", " ' ", " n't", " 'm", " 's", " 've", " 're"):
        text = text.replace(old, "'" if old == " ' " else old[1:])
    return text


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """The tokenizer of a Hugging Face folder: tokenizer.json if present, else tokenizer.model."""
    folder = Path(path)
    found = [folder / name for name in _FILES if (folder / name).is_file()]
    if not found:
        raise FileNotFoundError(f"no tokenizer in {folder}: looked for {' and '.join(_FILES)}")
    settings = _Settings(folder)
    backend = (_HFBackend if found[0].name == "tokenizer.json" else _SPBackend)(found[0], settings)
    return Tokenizer(folder, backend, settings)
