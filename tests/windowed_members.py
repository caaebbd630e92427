"""Three tiny random members whose context windows differ (192, 256 and 384 tokens), for
conversations that outgrow them. Imported by tests as `windowed_members`."""

from __future__ import annotations

from pathlib import Path

from checkpoints import make_checkpoint

from blendrt import Member

#: {name: (transformers config class, context window, chat format, config overrides)}
SPECS = {
    "ann": ("GPTJConfig", 256, "pygmalion", {}),
    "vic": ("LlamaConfig", 384, "vicuna", {"num_key_value_heads": 2}),
    "max": ("LlamaConfig", 192, "chatml", {"num_hidden_layers": 3}),
}
WINDOWS = {name: spec[1] for name, spec in SPECS.items()}
SYSTEM = "Ann is a cheerful baker who loves bread and long walks."
USER_LINES = [
    "hello there, how are you today?",
    "what do you like to bake?",
    "tell me about your favourite bread",
    "do you like long walks by the sea?",
    "why is that?",
    "what did you do yesterday?",
]


def make_windowed_members(root: Path) -> list[Member]:
    members = []
    for i, (name, (kind, context, fmt, overrides)) in enumerate(SPECS.items()):
        make_checkpoint(root / name, kind, seed=40 + i, context=context, **overrides)
        members.append(Member(name, root / name, chat_format=fmt))
    return members


def user_line(turn: int) -> str:
    return f"{USER_LINES[turn % len(USER_LINES)]} ({turn})"
