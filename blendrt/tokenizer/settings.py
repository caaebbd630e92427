"""What a Hugging Face folder's JSON files say about its tokenizer, read as transformers reads them.

`_Settings` gathers tokenizer_config.json, special_tokens_map.json, config.json,
generation_config.json and chat_template.jinja: the tokenizer class, the named and extra special
tokens, the added tokens, the EOS ids and the chat template. The helpers and constants here are
shared by the `tokenizers` and `sentencepiece` backends.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from tokenizers import AddedToken

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
