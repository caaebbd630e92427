"""Chat formats: append-only ids over every tokenizer kind, exact texts, jinja templates
checked against transformers' apply_chat_template, the sandbox, and bad input."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import folder_with_template
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jinja2.exceptions import SecurityError

from blendrt.tokenizer.chat_format import ChatFormat, NotAppendOnly
from blendrt.tokenizer.formats import CHAT_FORMATS, get_chat_format

BUILTINS = ["pygmalion", "vicuna", "llama-2-chat", "chatml"]

CHATML_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}\n"
    "{%- for message in messages %}{%- if message.role != 'system' %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}\n"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)
TEMPLATES = {"template-chatml": CHATML_TEMPLATE, "template-llama3": LLAMA3_TEMPLATE}
FORMATS = [*BUILTINS, *TEMPLATES, "template-folder"]  # folder: the folder's own, where it has one

CONVERSATION = [
    {"role": "system", "content": "You are Ærø, a helpful bot."},
    {"role": "user", "content": "Hello there, how are you today?"},
    {"role": "assistant", "content": "I am fine, thank you. 😀"},
    {"role": "user", "content": "    four leading spaces"},
    {"role": "assistant", "content": " "},
    {"role": "user", "content": "Привет, как дела? 日本語のテキスト"},
    {"role": "assistant", "content": "The capital of France is Paris.\n"},
    {"role": "user", "content": ""},
]


class FakeTokenizer:
    """Bytes are ids 0-255, special tokens follow: enough of `Tokenizer` for format logic."""

    def __init__(self, *, add_bos: bool = False, chat_template: str | None = None) -> None:
        names = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"]
        self.specials = {name: 256 + i for i, name in enumerate(names)}
        self.path, self.kind, self.vocab_size = "fake", "fake", 256 + len(names)
        self.bos_token, self.eos_token, self.bos_token_id, self.eos_token_id = (
            "<s>",
            "</s>",
            256,
            257,
        )
        self.pad_token_id = self.unk_token_id = None
        self.add_bos_token, self.add_eos_token, self.chat_template = add_bos, False, chat_template
        self.all_special_ids = frozenset(self.specials.values())
        self.calls = 0

    def encode_continuation(self, text: str) -> list[int]:
        self.calls += 1
        pieces = re.split("(" + "|".join(map(re.escape, self.specials)) + ")", text)
        return [
            t for p in pieces for t in ([self.specials[p]] if p in self.specials else p.encode())
        ]

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        bos = [self.bos_token_id] if add_special_tokens and self.add_bos_token else []
        return bos + self.encode_continuation(text)

    def decode(self, ids: list[int], *, skip_special_tokens: bool = False) -> str:
        names = {v: k.encode() for k, v in self.specials.items()}
        return b"".join(names.get(t, bytes([t % 256])) for t in ids).decode()

    def token_to_id(self, token: str) -> int | None:
        return self.specials.get(token)

    def id_to_token(self, token_id: int) -> str | None:
        return next((k for k, v in self.specials.items() if v == token_id), None)


def make_format(tok, name: str, **options) -> ChatFormat:
    if name == "template-folder":
        if not tok.chat_template:
            pytest.skip("this tokenizer folder has no chat template")
        return get_chat_format(tok, **options)
    if name in TEMPLATES:
        return get_chat_format(tok, None, template=TEMPLATES[name], **options)
    return get_chat_format(tok, name, **options)


@pytest.fixture(scope="session")
def _loaded() -> dict:
    return {}


def _load(folder: Path, loaded: dict):
    from blendrt.tokenizer.tokenizer import load_tokenizer

    if folder not in loaded:
        loaded[folder] = load_tokenizer(folder)
    return loaded[folder]


@pytest.fixture
def tok(tokenizer_dir: Path, _loaded: dict):
    """Each real tokenizer kind from conftest, loaded once per session."""
    return _load(tokenizer_dir, _loaded)


def head_ids(fmt: ChatFormat, messages: list[dict]) -> list[int]:
    """The ids messages add, as segments: render(messages, False) less a template's
    trailing whitespace (which, in a whole text, joins whatever follows it)."""
    return [t for seg in fmt.segments(messages) for t in seg.ids]


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("system", [True, False], ids=["system", "nosystem"])
def test_append_only(tok, name: str, system: bool) -> None:
    fmt = make_format(tok, name, member="m")
    conv = CONVERSATION if system else CONVERSATION[1:]
    for k in range(1, len(conv)):
        before, after = head_ids(fmt, conv[:k]), fmt.render(conv[: k + 1])
        assert after[: len(before)] == before, f"{name}: message {k} rewrote earlier ids"
        prompt = fmt.render(conv[:k])
        assert prompt[: len(before)] == before
        if conv[k]["role"] == "assistant":  # generation prompt is a prefix of history + reply
            with_reply = fmt.render(conv[: k + 1], add_generation_prompt=False)
            assert with_reply[: len(prompt)] == prompt
    whole = fmt.render(conv, add_generation_prompt=False)
    assert whole[: len(head_ids(fmt, conv))] == head_ids(fmt, conv)
    if not name.startswith("template"):  # built-in formats end on their segments
        assert whole == head_ids(fmt, conv)


@pytest.mark.parametrize("name", FORMATS)
def test_reply_ids_are_used_verbatim(tok, name: str) -> None:
    fmt = make_format(tok, name, member="m")
    ids = tok.encode_continuation(" Fine, thanks! Ça va?")
    for k, message in enumerate(CONVERSATION):
        if message["role"] != "assistant":
            continue
        history = CONVERSATION[:k]
        reply = {**message, "member": "m", "token_ids": ids}
        closing = fmt.reply_suffix_ids([*history, reply])
        expected = fmt.render(history) + ids + closing
        assert head_ids(fmt, [*history, reply]) == expected
        assert fmt.render(history) == head_ids(fmt, history) + fmt.generation_prompt_ids(history)
        # Another member's ids are not this member's: the content is tokenized instead.
        other = {**reply, "member": "other", "token_ids": [7, 7, 7]}
        plain = fmt.render([*history, message], add_generation_prompt=False)
        assert fmt.render([*history, other], add_generation_prompt=False) == plain


FIXTURES_OK = [HealthCheck.function_scoped_fixture]  # the fixtures used are session-scoped


@settings(max_examples=30, deadline=None, suppress_health_check=FIXTURES_OK)
@given(
    turns=st.lists(st.tuples(st.booleans(), st.text(max_size=12)), min_size=1, max_size=6),
    system=st.none() | st.text(max_size=8),
)
def test_append_only_random(spm_bpe_legacy_dir: Path, _loaded: dict, turns, system) -> None:
    """Random texts and role orders (legacy sentencepiece: the most boundary-sensitive)."""
    tok = _load(spm_bpe_legacy_dir, _loaded)
    conv = [{"role": "system", "content": system}] if system is not None else []
    conv += [{"role": ("user", "assistant")[a], "content": text} for a, text in turns]
    for name in FORMATS[:-1]:
        if ("random", name) not in _loaded:
            _loaded["random", name] = make_format(tok, name, member="m")
        fmt = _loaded["random", name]
        full = fmt.render(conv, add_generation_prompt=False)
        for k in range(1, len(conv)):
            head = head_ids(fmt, conv[:k])
            assert full[: len(head)] == head
            if conv[k]["role"] == "assistant":
                reply = {**conv[k], "member": "m", "token_ids": [5, 6]}
                closing = fmt.reply_suffix_ids([*conv[:k], reply])
                expected = [*fmt.render(conv[:k]), 5, 6, *closing]
                assert head_ids(fmt, [*conv[:k], reply]) == expected


# ---- exact texts with a byte-level BPE tokenizer (decode is exact there)

SHORT = [
    {"role": "system", "content": "Be nice."},
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "How are you?"},
]
E = "<|endoftext|>"  # bytelevel_dir's bos, eos and unk
EXPECTED = {
    "vicuna": f"Be nice. USER: Hi! ASSISTANT: Hello.{E}USER: How are you? ASSISTANT:",
    "llama-2-chat": f"{E}[INST] <<SYS>>\nBe nice.\n<</SYS>>\n\nHi! [/INST] Hello. {E}"
    f"{E}[INST] How are you? [/INST]",
    "chatml": "<|im_start|>system\nBe nice.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
    "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nHow are you?<|im_end|>\n"
    "<|im_start|>assistant\n",
    "pygmalion": "Bot's Persona: Be nice.\n<START>\nYou: Hi!\nBot: Hello.\nYou: How are you?\nBot:",
}


@pytest.fixture
def bytelevel(bytelevel_dir: Path, _loaded: dict):
    return _load(bytelevel_dir, _loaded)


@pytest.mark.parametrize("name", BUILTINS)
def test_exact_text(bytelevel, name: str) -> None:
    fmt = get_chat_format(bytelevel, name)
    ids = fmt.render(SHORT)
    assert bytelevel.decode(ids) == EXPECTED[name]
    specials = {"vicuna": [E], "llama-2-chat": [E] * 3, "chatml": ["<|im_start|>"] * 5}
    for token in specials.get(name, []):  # markers are special ids, not spelled-out text
        assert bytelevel.token_to_id(token) in ids
    count = ids.count(bytelevel.token_to_id(E))
    assert count == {"vicuna": 1, "llama-2-chat": 3}.get(name, 0)


def test_exact_text_without_system(bytelevel) -> None:
    vicuna = get_chat_format(bytelevel, "vicuna")
    text = bytelevel.decode(vicuna.render(SHORT[1:2]))
    assert text == f"{vicuna.DEFAULT_SYSTEM} USER: Hi! ASSISTANT:"
    assert vicuna.DEFAULT_SYSTEM.startswith("A chat between a curious user and an artificial")
    pyg = get_chat_format(bytelevel, "pygmalion", bot_name="Aria")
    assert bytelevel.decode(pyg.render(SHORT[1:3], add_generation_prompt=False)) == (
        "<START>\nYou: Hi!\nAria: Hello.\n"
    )
    assert pyg.stop_strings == ["\nYou:"]
    llama = get_chat_format(bytelevel, "llama-2-chat")
    assert bytelevel.decode(llama.render(SHORT[1:2])) == f"{E}[INST] Hi! [/INST]"


def test_stops_and_reply_suffix(bytelevel, llama3_dir: Path) -> None:
    from blendrt.tokenizer.tokenizer import load_tokenizer

    eos = bytelevel.eos_token_id
    reply = [*SHORT[:3]]
    vicuna = get_chat_format(bytelevel, "vicuna")
    assert vicuna.stop_token_ids == {eos} and "USER:" in vicuna.stop_strings
    assert vicuna.reply_suffix_ids(reply) == [eos]
    chatml = get_chat_format(bytelevel, "chatml")
    end = bytelevel.token_to_id("<|im_end|>")
    assert end in chatml.stop_token_ids and "<|im_end|>" in chatml.stop_strings
    assert bytelevel.decode(chatml.reply_suffix_ids(reply)) == "<|im_end|>\n"
    assert bytelevel.decode(get_chat_format(bytelevel, "pygmalion").reply_suffix_ids(reply)) == "\n"
    llama3 = load_tokenizer(llama3_dir)
    fmt = get_chat_format(llama3, template=LLAMA3_TEMPLATE)
    assert llama3.token_to_id("<|eot_id|>") in fmt.stop_token_ids
    assert fmt.stop_strings == ["<|eot_id|>"]
    assert get_chat_format(llama3).stop_strings == ["<|im_end|>"]  # the folder's ChatML template
    with pytest.raises(ValueError, match="assistant"):
        vicuna.reply_suffix_ids(SHORT)


def test_vicuna_user_after_eos_matches_whole_text(spm_bpe_dir: Path, spm_bpe_legacy_dir: Path):
    """After </s>, 'USER:' is tokenized as the folder's tokenizer does inside a whole text
    (with the dummy-prefix space only when legacy)."""
    from transformers import AutoTokenizer

    from blendrt.tokenizer.tokenizer import load_tokenizer

    for folder in (spm_bpe_dir, spm_bpe_legacy_dir):
        tok, hf = load_tokenizer(folder), AutoTokenizer.from_pretrained(str(folder))
        segment = get_chat_format(tok, "vicuna").segments(SHORT)[3]
        whole = hf.encode("</s>USER: How are you?", add_special_tokens=False)
        assert list(segment.content) == whole[1:]


# ---- jinja templates: transformers as the reference, the sandbox


@pytest.mark.parametrize("template", list(TEMPLATES))
@pytest.mark.parametrize("kind", ["bytelevel_dir", "llama3_dir"])
def test_template_matches_transformers(request, tmp_path: Path, kind: str, template: str) -> None:
    from transformers import AutoTokenizer

    from blendrt.tokenizer.tokenizer import load_tokenizer

    folder = folder_with_template(
        request.getfixturevalue(kind), tmp_path / "t", TEMPLATES[template]
    )
    tok, hf = load_tokenizer(folder), AutoTokenizer.from_pretrained(str(folder))
    assert tok.chat_template == TEMPLATES[template]
    fmt = get_chat_format(tok)
    for k in range(1, len(CONVERSATION) + 1):
        conv, gen = CONVERSATION[:k], k % 2 == 0
        ref = hf.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)
        assert fmt.render_text(conv, gen) == ref
        ids = fmt.render(conv, add_generation_prompt=gen)
        assert tok.decode(ids) == ref  # BOS only where the template writes it
        assert ids.count(tok.bos_token_id) == ref.count(tok.bos_token)
        if kind == "llama3_dir":  # splits at specials and newlines: segments tokenize as a whole
            want = hf.apply_chat_template(conv, tokenize=True, add_generation_prompt=gen)
            assert ids == list(getattr(want, "input_ids", want))


@pytest.mark.parametrize("kind", ["spm_bpe_dir", "spm_bpe_legacy_dir", "llama3_dir"])
def test_folder_template_ids_match_transformers(request, kind: str) -> None:
    """Segments start at special tokens or spaces here, so the ids equal transformers'
    tokenization of the whole text (legacy or not), one BOS included."""
    from transformers import AutoTokenizer

    from blendrt.tokenizer.tokenizer import load_tokenizer

    folder = request.getfixturevalue(kind)
    tok, hf = load_tokenizer(folder), AutoTokenizer.from_pretrained(str(folder))
    fmt = get_chat_format(tok)
    conv = [SHORT[1], SHORT[2], SHORT[3], {"role": "assistant", "content": "Fine, thank you."}]
    for k in range(1, len(conv) + 1):
        want = hf.apply_chat_template(conv[:k], tokenize=True, add_generation_prompt=False)
        ids = fmt.render(conv[:k], add_generation_prompt=False)
        assert ids == list(getattr(want, "input_ids", want))


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__.os.system('touch {marker}') }}",
        "{{ self._TemplateReference__context.cycler.__init__.__globals__.os }}",
        "{% set ns = namespace(_hidden=1) %}{{ messages[0].content }}",
        "{{ messages.append({'role': 'user', 'content': 'injected'}) }}",
    ],
)
def test_malicious_template_is_refused(tmp_path: Path, template: str) -> None:
    marker = tmp_path / "pwned"
    tok = FakeTokenizer(chat_template=template.replace("{marker}", str(marker)))
    with pytest.raises(SecurityError):
        get_chat_format(tok).render(SHORT)
    assert not marker.exists()


def test_template_not_append_only_renders_whole() -> None:
    """A template that rewrites earlier text still renders (the whole text, tokenized at
    once; the member's prefix cache misses from the rewrite on); segments are refused."""
    reverse = "{% for m in messages|reverse %}{{ m.content }}\n{% endfor %}"
    fmt = get_chat_format(FakeTokenizer(chat_template=reverse))
    assert fmt.tokenizer.decode(fmt.render(SHORT[1:3])) == "Hello.\nHi!\n"
    assert fmt.num_whole_renders == 1
    with pytest.raises(NotAppendOnly, match="not append-only: message 1"):
        fmt.segments(SHORT[1:3])
    moving = "{% if add_generation_prompt %}>{% endif %}{{ messages[0].content }}"
    fmt = get_chat_format(FakeTokenizer(chat_template=moving))
    assert fmt.tokenizer.decode(fmt.render(SHORT[1:2])) == ">Hi!"
    with pytest.raises(NotAppendOnly, match="not append-only: the generation prompt"):
        fmt.generation_prompt_ids(SHORT[1:2])
    refusing = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(ValueError, match="the chat template refused the conversation: roles"):
        get_chat_format(FakeTokenizer(chat_template=refusing)).render(SHORT[1:2])


def test_template_globals_and_fallbacks() -> None:
    tmpl = (
        "{{ bos_token }}{{ strftime_now('%Y') | length }}{{ {'a': 'é'} | tojson }}"
        "{% if flag %}!{% endif %}{% for m in messages %}"
        "{% generation %}[{{ m.role }}]{% endgeneration %}{{ m.content | upper }}{{ eos_token }}"
        "{% endfor %}"
    )
    tok = FakeTokenizer(add_bos=True, chat_template=tmpl)
    fmt = get_chat_format(tok, template_kwargs={"flag": True})
    ids = fmt.render(SHORT[1:3], add_generation_prompt=False)
    assert tok.decode(ids) == '<s>4{"a": "é"}![user]HI!</s>[assistant]HELLO.</s>'
    assert ids.count(tok.bos_token_id) == 1  # the template wrote BOS: not added twice
    # The template changes the content (upper): token_ids cannot stand for it, the text is used.
    reply = {**SHORT[2], "member": None, "token_ids": [1, 2, 3]}
    assert fmt.render([SHORT[1], reply], add_generation_prompt=False) == ids
    # As apply_chat_template(tokenize=True): no BOS unless the template writes one.
    plain = get_chat_format(FakeTokenizer(add_bos=True), template="{{ messages[0].content }}")
    assert plain.render(SHORT[1:2]) == [*b"Hi!"]


# ---- bad input, names, performance


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        ([], "messages is empty"),
        ("hello", "must be a list"),
        ([{"role": "robot", "content": "x"}], "message 0: unknown role 'robot'"),
        ([{"role": "user", "content": None}], "message 0: content must be a str"),
        ([{"role": "user", "content": "a"}, "b"], "message 1: expected a dict"),
        ([*SHORT[1:3], {"role": "system", "content": "s"}], "message 2: a system message may"),
        ([SHORT[1], {**SHORT[2], "token_ids": "1 2"}], "message 1: token_ids must be a list"),
        ([SHORT[1], {**SHORT[2], "token_ids": [1, -2]}], "message 1: token_ids must be a list"),
        ([{**SHORT[1], "token_ids": [1]}], "message 0: only assistant messages may carry"),
    ],
)
@pytest.mark.parametrize("name", FORMATS[:-1])  # all but the folder template (none here)
def test_bad_messages(name: str, messages, problem: str) -> None:
    fmt = make_format(FakeTokenizer(), name)
    with pytest.raises(ValueError, match=re.escape(problem)):
        fmt.render(messages)


def test_format_names() -> None:
    assert set(BUILTINS) <= set(CHAT_FORMATS)
    with pytest.raises(ValueError, match=r"unknown chat format 'alpaca'.*vicuna"):
        get_chat_format(FakeTokenizer(), "alpaca")
    with pytest.raises(ValueError, match=r"no chat_template.*pygmalion, vicuna, llama-2-chat"):
        get_chat_format(FakeTokenizer())
    with pytest.raises(TypeError):
        get_chat_format(FakeTokenizer(), "chatml", bot_name="x")


@pytest.mark.parametrize("name", BUILTINS)
def test_tokenization_is_linear_and_cached(name: str) -> None:
    tok = FakeTokenizer()
    fmt = get_chat_format(tok, name)
    conv = [{"role": ("user", "assistant")[i % 2], "content": f"message {i}"} for i in range(50)]
    fmt.render(conv)
    assert tok.calls <= 3 * len(conv) + 2  # each segment part tokenized once
    before = tok.calls
    fmt.render([*conv, {"role": "user", "content": "one more"}])
    assert tok.calls - before <= 3  # the earlier segments come from the cache
