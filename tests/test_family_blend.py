"""One member of every supported family in one blend, sharing one pool: a 20-turn
conversation where each member replies twice from the whole history, reusing its own
prefix cache on its second turn; sliding-window members release pages as they go; nothing
leaks."""

from __future__ import annotations

from pathlib import Path

import pytest
from family_parity import make_family_checkpoint

from blendrt import Blend, EngineConfig, Member

SMALL = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4)
CONTEXT = dict(max_position_embeddings=4096)  # the whole chat fits: no truncation
#: {member: (config class, model class, config)}: one per family, windows well below the
#: conversation's length so the windowed members release pages.
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", SMALL | CONTEXT | dict(num_key_value_heads=2)),
    "mistral": ("MistralConfig", "MistralForCausalLM",
                SMALL | CONTEXT | dict(num_key_value_heads=2, sliding_window=48)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM",
              SMALL | CONTEXT | dict(num_key_value_heads=2, tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM",
              SMALL | CONTEXT | dict(num_key_value_heads=1, head_dim=24)),
    "phi3": ("Phi3Config", "Phi3ForCausalLM",
             SMALL | CONTEXT | dict(num_key_value_heads=4, sliding_window=64, pad_token_id=0)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM",
               SMALL | CONTEXT | dict(num_key_value_heads=2, head_dim=32, sliding_window=40)),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM",
               SMALL | CONTEXT | dict(num_key_value_heads=2, head_dim=32, sliding_window=40,
                                      sliding_window_pattern=2)),
    "gptj": ("GPTJConfig", "GPTJForCausalLM",
             dict(n_embd=64, n_layer=2, n_head=4, n_positions=4096, rotary_dim=8)),
    "pythia": ("GPTNeoXConfig", "GPTNeoXForCausalLM", SMALL | CONTEXT | dict(rotary_pct=0.25)),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel",
             dict(n_embd=64, n_layer=2, n_head=4, n_positions=4096)),
}  # fmt: skip
TURNS = 20
LINES = ("hello there, how are you today?", "what do you like to do?", "tell me more", "why?")


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> list[Member]:
    root = tmp_path_factory.mktemp("families")
    out = []
    for i, (name, (config_class, model_class, config)) in enumerate(FAMILIES.items()):
        make_family_checkpoint(root / name, config_class, model_class, seed=i, **config)
        out.append(Member(name, Path(root / name), chat_format="chatml"))
    return out


def test_twenty_turns_over_every_family(members) -> None:
    names = list(FAMILIES)
    with Blend(members, seed=0, config=EngineConfig(device="cpu", num_pages=2048)) as blend:
        messages = [{"role": "system", "content": "A friendly chat."}]
        usage: dict[str, list] = {name: [] for name in names}
        for turn in range(TURNS):
            messages.append({"role": "user", "content": f"{LINES[turn % 4]} ({turn})"})
            member = names[turn % len(names)]
            reply = blend.chat(messages, member=member, sampling={"max_tokens": 16, "seed": turn})
            assert reply.member == member and reply.usage.completion_tokens >= 1
            assert reply.usage.truncated_messages == 0
            usage[member].append(reply.usage)
            messages.append({"role": "assistant", "content": reply.text, "member": member})
        stats = blend.stats()
        blend.engine.managers[names[0]].check_invariants()
    per_member = stats["members"]
    for name, (first, second) in usage.items():
        # the second turn reuses at least the whole first prompt (other members' replies
        # since then are new to it; a window member still finds the pages it needs)
        assert second.cached_prompt_tokens >= first.prompt_tokens - 1, name
        assert per_member[name]["prefix_hit_tokens"] >= first.prompt_tokens - 1
    windowed = {n for n, m in per_member.items() if m["window"]}
    assert windowed == {"mistral", "phi3"}  # the Gemmas mix in global layers: no release
    for name in windowed:
        assert per_member[name]["released_pages"] > 0, name
    assert stats["pool"]["pages_in_use"] == 0  # nothing leaks
    print(
        {
            n: (m["released_pages"], [u.cached_prompt_tokens for u in usage[n]])
            for n, m in per_member.items()
        }
    )
