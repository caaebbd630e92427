"""The bundled demo blend (blendrt/demo/members): each member loads in blendrt and matches
transformers, tokenizes like transformers, answers simple prompts in English, and the folders
stay small enough to ship in the wheel."""

from __future__ import annotations

import re

import pytest
import torch
from scoring import score

from blendrt.demo import DEMO_DIR, MEMBERS_DIR, demo_members

transformers = pytest.importorskip("transformers")

from blendrt.demo.data import PROMPTS, corpus_dir, load_conversations, persona  # noqa: E402
from blendrt.demo.evaluate import greedy_reply  # noqa: E402
from blendrt.demo.train import MEMBERS  # noqa: E402
from blendrt.models import load_model  # noqa: E402
from blendrt.tokenizer.formats import get_chat_format  # noqa: E402

MAX_BYTES = 15_000_000
#: The corpus's 400 most frequent words (most of what the members say, checked even when
#: chatterbot-corpus is not installed).
FALLBACK_WORDS = """
the i you is a what of to are in and do not it which that have me am as my how can your was
who like on i'm for be tell about an by or with feel s did no but computer get don't software
all when joke first at has does from think so much country than one he if very any know why
make only could better human name should more been good many we will die favorite right read
said feeling known city up really robots robot other well emotion most hal yes there that's say
just it's time world stock makes hard yet ever used try two would never chat computers eat mad
market sense programmed too money emotions work lot can't capable sad gossip way body this now
myself people number them doing hi his take express were experience some type into things
artificial python isn't immortal quite sure made they kind use where called hear love state
anger science hardware us best want always question every system feelings common book then
great sometimes angry hate dream going gossips american history wrote new baseball play may
language written being run far same everything sorry you're put color man something life soccer
nice war cross study movie film certainly earth character systems cannot its bot operating
maybe might anything high invented john mean hello thank what's often ask happy understand
worry electricity power probably need united president game u won sound once long move given
lie own program business matter talk food real such few out i've little shame fear states
check star had etc female sun york guns o cricket year basketball played sea her largest field
mind even though data between making brain form over free count red bots heard yourself because
true live control find interested self times device numbers large talking apple anybody anyone
i'll complex smith lost able learn jealous done piece sadness pain drink energy him jordan each
per group story frank moon famous wavelength chemistry venus end continent king ai building sort
construct sapient through built personal laugh robotics enough born conversation incapable
chatterbox person programming idea linux os unix another go metal fan series help internet using
young instructions thing calculations super context circuit unit depends humans morning see
wish working complicated bad c means yesterday th bird actually mood low difficult haven't fun
show fine day
"""
WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
CONVERSATION = [
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hi! How are you?", "member": "someone-else"},
    {"role": "user", "content": "I am fine. Do you like music?"},
    {"role": "assistant", "content": "Yes, I love it.", "member": "another"},
    {"role": "user", "content": "Tell me a joke"},
]


def _format(member: dict, tokenizer: object) -> object:
    return get_chat_format(tokenizer, member["chat_format"], **member["chat_options"])


@pytest.fixture(scope="module")
def members() -> list[dict]:
    found = demo_members()
    assert [m["name"] for m in found], "blend.json lists no members"
    return found


@pytest.fixture(scope="module")
def loaded(members: list[dict]) -> dict[str, tuple]:
    """{name: (blendrt LoadedModel, transformers model, chat format)}."""
    torch.manual_seed(0)
    out = {}
    for m in members:
        model = load_model(m["path"])
        hf = transformers.AutoModelForCausalLM.from_pretrained(m["path"], dtype=torch.float32)
        out[m["name"]] = (model, hf.eval(), _format(m, model.tokenizer))
    return out


def test_blend_json_lists_the_member_folders(members: list[dict]) -> None:
    assert {m["chat_format"] for m in members} == {"pygmalion", "vicuna"}
    for m in members:
        folder = MEMBERS_DIR / m["name"]
        assert str(folder.resolve()) == m["path"]
        for name in ("config.json", "model.safetensors", "generation_config.json", "README.md"):
            assert (folder / name).is_file(), f"{m['name']}: {name} missing"
    assert MEMBERS_DIR.parent == DEMO_DIR


def test_logprobs_match_transformers(loaded: dict[str, tuple]) -> None:
    for name, (model, hf, fmt) in loaded.items():
        ids = fmt.render(CONVERSATION)
        got = score(model, ids)
        with torch.no_grad():
            want = torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), dim=-1)
        assert got.shape == want.shape
        err = (got - want).abs().max().item()
        assert err < 1e-4, f"{name}: log-probs differ from transformers by {err}"


def test_tokenizers_match_transformers(members: list[dict], loaded: dict[str, tuple]) -> None:
    texts = [
        "Hello",
        "<START>\nYou: How are you?\nAnn: I am fine, thanks.\n",
        " USER: Do you like music? ASSISTANT: Yes!</s>USER: Tell me a joke ASSISTANT:",
        "naïve café 😀  two  spaces\n\nand 1234 digits",
    ]
    for m in members:
        model, _, fmt = loaded[m["name"]]
        ref = transformers.AutoTokenizer.from_pretrained(m["path"])
        texts_m = [*texts, model.tokenizer.decode(fmt.render(CONVERSATION))]
        for text in texts_m:
            ids = ref(text).input_ids
            assert model.tokenizer.encode(text) == ids, f"{m['name']}: {text!r}"
            assert model.tokenizer.decode(ids) == ref.decode(ids)


def _persona_words() -> set[str]:
    return {
        w
        for spec in MEMBERS
        for conv in persona(spec.persona_name, spec.style, spec.likes)
        for text in conv
        for w in WORD.findall(text.lower())
    }


def _corpus_words() -> set[str] | None:
    try:
        corpus_dir()
        convs = load_conversations(skip=())
    except ImportError:  # chatterbot-corpus (or pyyaml) is not installed
        return None
    return {w for conv in convs for text in conv for w in WORD.findall(text.lower())}


@pytest.fixture(scope="module")
def replies(loaded: dict[str, tuple]) -> dict[str, list[tuple[str, str, list[int]]]]:
    """{member: [(prompt, greedy reply, its ids)]}, generated with transformers."""
    return {
        name: [(p, *greedy_reply(hf, fmt, [{"role": "user", "content": p}])) for p in PROMPTS]
        for name, (_, hf, fmt) in loaded.items()
    }


def _english(replies: dict, vocab: set[str]) -> None:
    """>= 80% of each member's reply words are known words, and no reply is mostly unknown."""
    vocab = vocab | _persona_words()
    for name, answers in replies.items():
        words = []
        for prompt, text, _ in answers:
            said = WORD.findall(text.lower())
            assert said, f"{name}: no words in the reply to {prompt!r}: {text!r}"
            known = sum(w in vocab for w in said) / len(said)
            assert known >= 0.5, f"{name}: {prompt!r} -> {text!r} is not English"
            words += said
        known = sum(w in vocab for w in words) / len(words)
        assert known >= 0.8, f"{name}: only {known:.0%} of the reply words are known: {answers}"


def test_greedy_replies_are_english(replies: dict) -> None:
    """Known words: the corpus vocabulary (or, without chatterbot-corpus, the stored list)."""
    _english(replies, _corpus_words() or set(FALLBACK_WORDS.split()))


def test_greedy_replies_use_common_words(replies: dict) -> None:
    _english(replies, set(FALLBACK_WORDS.split()))


def test_members_answer_differently(replies: dict) -> None:
    answers = {name: tuple(text for _, text, _ in r) for name, r in replies.items()}
    assert len(set(answers.values())) == len(answers), f"members answer alike: {answers}"


def test_blendrt_picks_the_same_greedy_tokens(loaded: dict[str, tuple], replies: dict) -> None:
    for name, (model, _, fmt) in loaded.items():
        for prompt, _, ids in replies[name]:
            prompt_ids = fmt.render([{"role": "user", "content": prompt}])
            lp = score(model, prompt_ids + ids)[len(prompt_ids) - 1 : -1]
            top2 = lp.topk(2, dim=-1).values
            sure = (top2[:, 0] - top2[:, 1]) > 1e-3  # a near-tie may go either way
            assert torch.equal(lp.argmax(-1)[sure], torch.tensor(ids)[sure]), (name, prompt)


def test_member_folders_are_small() -> None:
    size = sum(f.stat().st_size for f in MEMBERS_DIR.rglob("*") if f.is_file())
    assert size <= MAX_BYTES, f"demo members take {size / 1e6:.1f} MB (limit 15 MB)"
