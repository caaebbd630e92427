"""A tokenizer.model run in `sentencepiece` the way transformers' conversion of it does.

Text is split at added tokens and each chunk encoded alone. ``LlamaTokenizer`` drops the model's
normalizer, ranks BPE merges by piece id and puts "▁" before a chunk not starting with a space
(the first chunk only unless ``legacy``); with no class, the model's normalizer is kept. Decoding
turns "▁" into spaces, joins each run of byte pieces (a run that is not UTF-8 gives one U+FFFD
per byte) and strips one leading space.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as spm_pb2
from tokenizers import AddedToken

from blendrt.tokenizer.settings import _BYTE_PIECE, _DEFAULTS, _Settings, _unk_bos_eos


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
        # {id: byte} of byte-fallback pieces, {id: text} of the others ("▁" as " ")
        self.byte_of = {i: int(self.pieces[i][3:5], 16) for i in self.byte_ids}
        self.text_of = {
            i: p.replace("▁", " ") for i, p in self.pieces.items() if i not in self.byte_ids
        }
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
        byte_of, text_of, special = self.byte_of, self.text_of, self.special_ids
        for i in ids:
            if skip and i in special:
                continue
            byte = byte_of.get(i)
            if byte is not None:
                run.append(byte)
                continue
            text = text_of.get(i)
            if text is None:
                continue
            if run:
                out.append(_utf8_or_replacement(run))
                run.clear()
            out.append(text)
        if run:
            out.append(_utf8_or_replacement(run))
        text = "".join(out)
        return text[1:] if self.prefix and text.startswith(" ") else text

    def token_to_id(self, token: str) -> int | None:
        i = self.added.get(token, self.sp.piece_to_id(token))
        return i if self.pieces.get(i) == token else None

    def id_to_token(self, token_id: int) -> str | None:
        return self.pieces.get(token_id)


def _utf8_or_replacement(run: bytearray) -> str:
    """A run of byte pieces: its UTF-8 text, else one U+FFFD per byte (as transformers)."""
    try:
        return run.decode("utf-8")
    except UnicodeDecodeError:
        return "\ufffd" * len(run)
