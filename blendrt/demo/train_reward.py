"""Trains the demo reward model from scratch on CPU: a tiny `GPT2ForSequenceClassification`
(label 1 = "good reply") that scores a candidate reply in its conversation, for reward-model
best-of-N; about 40 s on 2 cores.

    pip install chatterbot-corpus pyyaml transformers
    python -m blendrt.demo.train_reward [--out DIR] [--seed N] [--steps N]

The data (real chatterbot-corpus replies against off-topic, short, echoed and mangled ones),
the input format (`REWARD_FORMAT`, `reward_text`, `MAX_TOKENS`, re-exported here) and the
held-out split are `blendrt.demo.reward_data`'s.

The folder gets config.json, float16 model.safetensors, the byte-level BPE tokenizer
(tokenizer.json, tokenizer_config.json with truncation_side "left" and model_max_length 256)
and a README.md model card with the held-out accuracy.
"""

from __future__ import annotations

import argparse
import random
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from blendrt.demo import DEMO_DIR, MEMBERS_DIR
from blendrt.demo.data import (
    Conversation,
    load_conversations,
)
from blendrt.demo.reward_card import model_card
from blendrt.demo.reward_data import (
    MAX_TOKENS,
    NEGATIVE_KINDS,
    REWARD_FORMAT,
    copy_tokenizer,
    encode,
    examples,
    is_held_out,
    pad,
    reward_text,
    train_tokenizer,
)
from blendrt.demo.training import Stepper

__all__ = ["MAX_TOKENS", "REWARD_FORMAT", "is_held_out", "main", "reward_text"]

#: Default model, training and data sizes.
MODEL = dict(n_embd=96, n_layer=2, n_head=4)
STEPS, BATCH, LR, DROPOUT = 700, 32, 3e-3, 0.0
#: The loss: cross-entropy plus PAIR_WEIGHT x the pairwise (Bradley-Terry) loss of the
#: reward logit(good) - logit(bad) of the real reply over the bad one.
PAIR_WEIGHT = 1.0
#: Token embeddings initialized from this demo member's (its tokenizer reused, its input
#: embeddings reduced to n_embd dimensions by PCA): word meanings learnt by next-token
#: prediction on the same corpus, which the reward model could not learn in seconds. None:
#: a tokenizer of its own and a random init.
EMBED_FROM: str | None = "ann"


def member_embeddings(member: str, dim: int) -> torch.Tensor:
    """A member's input embeddings (vocab x its width), centred and reduced to their `dim`
    principal components, scaled to GPT-2's init std (0.02) x 2."""
    from safetensors.torch import load_file

    w = load_file(MEMBERS_DIR / member / "model.safetensors")["transformer.wte.weight"].double()
    w = w - w.mean(0)
    u, sv, _ = torch.linalg.svd(w, full_matrices=False)
    e = u[:, :dim] * sv[:dim]
    return (e * (0.04 / e.std())).float()


@torch.no_grad()
def good_probs(model: torch.nn.Module, ids: Sequence[list[int]], pad_id: int) -> list[float]:
    """Label 1's probability of each input (batches of similar lengths)."""
    model.eval()
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = [0.0] * len(ids)
    for s in range(0, len(order), 128):
        chunk = order[s : s + 128]
        logits = model(**pad([ids[i] for i in chunk], pad_id)).logits.float()
        for i, p in zip(chunk, logits.softmax(-1)[:, 1].tolist(), strict=True):
            out[i] = p
    return out


def evaluate(
    model: torch.nn.Module, tok: Any, data: list[tuple[str, int, str]]
) -> dict[str, float]:
    """Accuracy (threshold 0.5) overall and per kind, and the pairwise accuracy: how often the
    real reply scores above the bad one on the same prefix."""
    probs = good_probs(model, encode(tok, [t for t, _, _ in data]), tok.pad_token_id)
    right = [(p > 0.5) == (label == 1) for p, (_, label, _) in zip(probs, data, strict=True)]
    res = {"accuracy": sum(right) / len(right), "n": len(data)}
    for kind in ("real", *NEGATIVE_KINDS):
        r = [ok for ok, (_, _, k) in zip(right, data, strict=True) if k == kind]
        res[f"accuracy_{kind}"] = sum(r) / max(1, len(r))
    pairs = [(probs[i] > probs[i + 1], data[i + 1][2]) for i in range(0, len(data), 2)]
    res["pairwise"] = sum(ok for ok, _ in pairs) / len(pairs)
    for kind in NEGATIVE_KINDS:
        p = [ok for ok, k in pairs if k == kind]
        res[f"pairwise_{kind}"] = sum(p) / max(1, len(p))
    return res


def train(
    model: torch.nn.Module,
    tok: Any,
    convs: Sequence[Conversation],
    steps: int,
    seed: int,
) -> tuple[float, int]:
    """AdamW with warmup and cosine decay; batches of BATCH // 2 (real, bad) pairs of similar
    lengths. Every pass over the dialogues draws new histories and new bad replies. Returns
    the final loss (EMA) and the number of inputs seen."""
    rng = random.Random(seed)
    pad_id, seen = tok.pad_token_id, 0
    stepper = Stepper(model, steps, lr=LR, betas=(0.9, 0.98), weight_decay=0.05, ema_weight=0.05)
    model.train()
    batches: list = []
    for _ in range(steps):
        if not batches:
            data = examples(rng, convs, convs)
            ids = encode(tok, [t for t, _, _ in data])
            labels = [label for _, label, _ in data]
            pairs = list(range(0, len(ids), 2))
            rng.shuffle(pairs)
            pool = sorted(pairs, key=lambda i: len(ids[i]) + len(ids[i + 1]))
            half = BATCH // 2
            batches = [pool[i : i + half] for i in range(0, len(pool), half)]
            rng.shuffle(batches)
        chosen = [j for i in batches.pop() for j in (i, i + 1)]
        seen += len(chosen)
        logits = model(**pad([ids[j] for j in chosen], pad_id)).logits.float()
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor([labels[j] for j in chosen]))
        reward = logits[:, 1] - logits[:, 0]
        pair = -torch.nn.functional.logsigmoid(reward[0::2] - reward[1::2]).mean()
        stepper.step(loss + PAIR_WEIGHT * pair)
    return float(stepper.ema), seen


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEMO_DIR / "reward")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    import transformers

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    convs = load_conversations()
    train_convs = [c for c in convs if not is_held_out(c)]
    test_convs = [c for c in convs if is_held_out(c)]
    folder: Path = args.out
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    make_tokenizer = copy_tokenizer if EMBED_FROM else train_tokenizer
    tok = make_tokenizer(folder, EMBED_FROM or train_convs)
    # Held-out inputs: their own fixed rng, held-out dialogues only (contexts included).
    test_data = examples(random.Random(12345), test_convs, test_convs, every_kind=True)
    config = transformers.GPT2Config(
        vocab_size=len(tok),
        n_positions=MAX_TOKENS,
        num_labels=2,
        id2label={0: "bad", 1: "good"},
        label2id={"bad": 0, "good": 1},
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        resid_pdrop=DROPOUT,
        embd_pdrop=DROPOUT,
        attn_pdrop=DROPOUT,
        **MODEL,
    )
    model = transformers.GPT2ForSequenceClassification(config)
    if EMBED_FROM:
        with torch.no_grad():
            model.transformer.wte.weight.copy_(member_embeddings(EMBED_FROM, MODEL["n_embd"]))
    start = time.perf_counter()
    train_loss, seen = train(model, tok, train_convs, args.steps, args.seed)
    seconds = time.perf_counter() - start
    model = model.to(torch.float16).float()  # what is saved is what is evaluated
    ev = evaluate(model, tok, test_data)
    model.to(torch.float16).save_pretrained(folder)
    info = dict(
        params=sum(p.numel() for p in model.parameters()),
        vocab=len(tok),
        pad_token_id=tok.pad_token_id,
        seed=args.seed,
        steps=args.steps,
        seconds=seconds,
        train_loss=train_loss,
        train_examples=seen,
        model=MODEL,
        embed_from=EMBED_FROM,
        eval=ev,
    )
    (folder / "README.md").write_text(model_card(info, lr=LR, batch=BATCH, pair_weight=PAIR_WEIGHT))
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    print(
        f"reward: {info['params'] / 1e6:.2f}M params, {seconds:.0f}s, train loss "
        f"{train_loss:.3f}; held-out accuracy {ev['accuracy']:.1%}, pairwise "
        f"{ev['pairwise']:.1%}; {folder}: {size / 1e6:.2f} MB"
    )
    print("  " + ", ".join(f"{k} {v:.3f}" for k, v in ev.items() if k != "n"))
    return info


if __name__ == "__main__":
    main()
