"""Pages a sliding window frees in a long conversation, and what the prefix cache still serves.

The same random Mistral-shaped member twice, with its sliding window and without (the
window set past the context, so every page is kept), each holding one long conversation
(no truncation needed: context 8192). Per run: peak pages in use,
pages released while it ran, the share of prompt tokens served from the prefix cache, and
how many leading replies of the two are identical (greedy: equal until the history
outgrows the window, where the window changes what the model sees).

    python benchmarks/bench_window.py [--turns 40] [--window 128]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from family_parity import make_family_checkpoint

from blendrt import Blend, EngineConfig, Member

LINES = ("tell me a story about the sea", "and then what happened?", "why?", "go on")


def converse(folder: Path, turns: int) -> dict:
    config = EngineConfig(device="cpu", num_pages=4096)
    with Blend([Member("m", folder, chat_format="chatml")], seed=0, config=config) as blend:
        messages, replies = [{"role": "system", "content": "A storyteller."}], []
        sampling = {"max_tokens": 48, "temperature": 0, "ignore_eos": True}
        for turn in range(turns):
            messages.append({"role": "user", "content": f"{LINES[turn % 4]} ({turn})"})
            reply = blend.chat(messages, member="m", sampling=sampling)
            replies.append(reply.text)
            messages.append({"role": "assistant", "content": reply.text})
        stats = blend.stats()
    member = stats["members"]["m"]
    return {
        "tokens_per_page": member["tokens_per_page"],
        "last_prompt_tokens": reply.usage.prompt_tokens,
        "peak_pages_in_use": stats["pool"]["peak_pages_in_use"],
        "released_pages": member["released_pages"],
        "prefix_hit_rate": member["prefix_hit_rate"],
        "replies": replies,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=40)
    parser.add_argument("--window", type=int, default=128)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-window-"))
    shape = dict(
        hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=8192,
    )  # fmt: skip
    runs = {}
    for name, window in (("windowed", args.window), ("full", None)):
        make_family_checkpoint(
            root / name, "MistralConfig", "MistralForCausalLM", seed=0, sliding_window=window,
            **shape,
        )  # fmt: skip
        runs[name] = converse(root / name, args.turns)
    w, f = runs["windowed"], runs["full"]
    same = 0
    for a, b in zip(w["replies"], f["replies"], strict=True):
        if a != b:
            break
        same += 1
    report = {k: {x: y for x, y in v.items() if x != "replies"} for k, v in runs.items()}
    report["identical_leading_replies"] = same
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
