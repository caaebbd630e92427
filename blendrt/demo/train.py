"""Trains the demo blend from scratch on CPU: two tiny GPT-J members (own byte-level BPE
tokenizers, pygmalion format) and a tiny Llama member (sentencepiece BPE, vicuna format),
on the chatterbot-corpus English dialogues; about 13 minutes on 2 cores.

    pip install chatterbot-corpus pyyaml transformers
    python -m blendrt.demo.train [--out DIR] [--seed N] [--steps-scale X] [--members a,b]

Each member folder gets config.json, float16 model.safetensors, generation_config.json, its
tokenizer files and a README.md model card; the output folder gets blend.json.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from blendrt.demo import DEMO_DIR
from blendrt.demo.data import (
    PROMPTS,
    Conversation,
    Renderer,
    load_conversations,
    persona,
    session,
    to_messages,
    tokenizer_texts,
)
from blendrt.demo.evaluate import corpus_loss, greedy_reply, model_card
from blendrt.demo.training import Stepper
from blendrt.tokenizer.formats import get_chat_format
from blendrt.tokenizer.tokenizer import load_tokenizer


@dataclass(frozen=True)
class Spec:
    name: str
    arch: str  # "gptj" | "llama"
    chat_format: str
    persona_name: str
    style: str
    likes: str
    vocab: int
    model: dict[str, Any]
    lr: float
    steps: int
    seed: int
    chat_options: dict[str, Any] = field(default_factory=dict)


MEMBERS = (
    Spec(
        "ann",
        "gptj",
        "pygmalion",
        "Ann",
        "a friendly chat bot",
        "music, books and a good chat",
        1024,
        dict(n_embd=192, n_layer=4, n_head=6, rotary_dim=16),
        3e-3,
        900,
        1,
        {"bot_name": "Ann"},
    ),
    Spec(
        "bob",
        "gptj",
        "pygmalion",
        "Bob",
        "a curious little robot",
        "robots, computers and binary numbers",
        768,
        dict(n_embd=160, n_layer=4, n_head=4, rotary_dim=20),
        3e-3,
        1000,
        2,
        {"bot_name": "Bob"},
    ),
    Spec(
        "vic",
        "llama",
        "vicuna",
        "Vic",
        "an artificial intelligence assistant",
        "science, history and helpful answers",
        1024,
        dict(
            hidden_size=192,
            intermediate_size=512,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
        ),
        3e-3,
        1000,
        3,
    ),
)
BATCH, MAX_LEN, CONTEXT = 6, 384, 1024


def train_bpe(folder: Path, spec: Spec, convs: list[Conversation]) -> None:
    """A GPT-2 style byte-level BPE tokenizer, saved as tokenizer.json + config."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab,
        special_tokens=["<|endoftext|>", "<|padding|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = ["<START>\n", *tokenizer_texts(convs, ("You", spec.persona_name), "\n")]
    tok.train_from_iterator(lines, trainer)
    PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|padding|>",
        model_max_length=CONTEXT,
    ).save_pretrained(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"  # transformers 4 and 5 know this name
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def train_sentencepiece(folder: Path, spec: Spec, convs: list[Conversation]) -> None:
    """A Llama-style sentencepiece BPE tokenizer (byte fallback), saved as tokenizer.model."""
    import sentencepiece as spm

    from blendrt.tokenizer.builtin_formats import Vicuna

    model = io.BytesIO()
    lines = [Vicuna.DEFAULT_SYSTEM] * 100 + [*tokenizer_texts(convs, ("USER", "ASSISTANT"))]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=spec.vocab,
        byte_fallback=True,
        split_digits=True,
        character_coverage=0.9995,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        allow_whitespace_only_pieces=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        max_sentence_length=1 << 16,
        minloglevel=2,
    )
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    config = {
        "tokenizer_class": "LlamaTokenizer",
        **special,
        "pad_token": None,
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": CONTEXT,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def build_model(spec: Spec, tok: Any) -> torch.nn.Module:
    import transformers

    ids = dict(
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    if spec.arch == "gptj":
        config = transformers.GPTJConfig(
            vocab_size=tok.vocab_size, n_positions=CONTEXT, **spec.model, **ids
        )
        return transformers.GPTJForCausalLM(config)
    config = transformers.LlamaConfig(
        vocab_size=tok.vocab_size,
        max_position_embeddings=CONTEXT,
        rms_norm_eps=1e-5,
        **spec.model,
        **ids,
    )
    return transformers.LlamaForCausalLM(config)


def batch_loss(model: torch.nn.Module, batch: list[tuple[list[int], list[int]]]) -> torch.Tensor:
    """Mean cross-entropy over the target tokens of right-padded sequences."""
    width = max(len(ids) for ids, _ in batch)
    ids = torch.tensor([i + [0] * (width - len(i)) for i, _ in batch])
    mask = torch.tensor([t + [0] * (width - len(t)) for _, t in batch], dtype=torch.float32)
    logits = model(input_ids=ids).logits[:, :-1].float()
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none"
    )
    return (nll * mask[:, 1:].reshape(-1)).sum() / mask[:, 1:].sum()


def train(
    model: torch.nn.Module,
    spec: Spec,
    render: Renderer,
    convs: list[Conversation],
    steps: int,
    seed: int,
) -> float:
    rng = random.Random(seed)
    stepper = Stepper(
        model,
        steps,
        lr=spec.lr,
        betas=(0.9, 0.95),
        weight_decay=0.1,
        ema_weight=0.02,
        label=f"{spec.name} ",
    )
    model.train()
    batches: list = []
    for _ in range(steps):
        if not batches:  # batches of similar lengths: little padding
            pool = sorted(
                (render(session(rng, convs), MAX_LEN) for _ in range(BATCH * 8)),
                key=lambda item: len(item[0]),
            )
            batches = [pool[i : i + BATCH] for i in range(0, len(pool), BATCH)]
            rng.shuffle(batches)
        stepper.step(batch_loss(model, batches.pop()))
    return float(stepper.ema)


def make_member(spec: Spec, folder: Path, convs: list[Conversation], args: Any) -> dict:
    seed = args.seed * 100 + spec.seed
    torch.manual_seed(seed)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (train_bpe if spec.arch == "gptj" else train_sentencepiece)(folder, spec, convs)
    tok = load_tokenizer(folder)
    fmt = get_chat_format(tok, spec.chat_format, **spec.chat_options)
    model = build_model(spec, tok)
    data = convs + persona(spec.persona_name, spec.style, spec.likes) * 4
    steps = max(1, round(spec.steps * args.steps_scale))
    start = time.perf_counter()
    train_loss = train(model, spec, Renderer(fmt), data, steps, seed)
    seconds = time.perf_counter() - start
    model = model.to(torch.float16).float()  # what is saved is what is evaluated
    loss = corpus_loss(model, Renderer(fmt), convs, batch_loss, MAX_LEN)
    samples = [(p, greedy_reply(model, fmt, to_messages([p]))[0]) for p in PROMPTS]
    model.to(torch.float16).save_pretrained(folder)
    # The sampling these tiny members read best with; `blendrt chat` and `serve` apply it
    # where a turn sets none (--generation-config auto).
    gen = model.generation_config
    gen.max_new_tokens, gen.do_sample = 64, True
    gen.temperature, gen.top_p, gen.repetition_penalty = 0.7, 0.9, 1.1
    model.generation_config.save_pretrained(folder)
    info = dict(
        architecture=type(model).__name__,
        params=sum(p.numel() for p in model.parameters()),
        tokenizer=tok.kind,
        vocab=tok.vocab_size,
        seed=args.seed,
        steps=steps,
        batch=BATCH,
        seconds=seconds,
        train_loss=train_loss,
        corpus_loss=loss,
        samples=samples,
    )
    (folder / "README.md").write_text(model_card(spec, info))
    print(
        f"{spec.name}: {info['params'] / 1e6:.2f}M params, {seconds:.0f}s, train loss "
        f"{train_loss:.3f}, corpus loss {loss:.3f}"
    )
    for p, r in samples:
        print(f"    You: {p}\n    {spec.persona_name}: {r}")
    return info


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEMO_DIR / "members")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiplies the steps")
    parser.add_argument("--members", default=",".join(s.name for s in MEMBERS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    convs = load_conversations()
    chosen = [s for s in MEMBERS if s.name in args.members.split(",")]
    total = time.perf_counter()
    for spec in chosen:
        make_member(spec, args.out / spec.name, convs, args)
    blend = [
        {
            "name": s.name,
            "folder": s.name,
            "chat_format": s.chat_format,
            "chat_options": s.chat_options,
        }
        for s in MEMBERS
    ]
    (args.out / "blend.json").write_text(json.dumps(blend, indent=2) + "\n")
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"done in {time.perf_counter() - total:.0f}s; {args.out}: {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
