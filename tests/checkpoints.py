"""Tiny random checkpoints written by transformers' save_pretrained, for parity tests.

Imported by tests as `checkpoints` (pyproject puts tests/ on the test path)."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

VOCAB = 320

#: {case name: (transformers config class name, kwargs)}; weights are drawn with a large
#: std so that attention patterns and every term of the forward pass move the logits.
CASES: dict[str, tuple[str, dict]] = {
    "llama-gqa": ("LlamaConfig", dict(num_key_value_heads=2)),
    "llama-mha-tied": ("LlamaConfig", dict(num_key_value_heads=4, tie_word_embeddings=True)),
    "llama-linear-rope": (
        "LlamaConfig",
        dict(num_key_value_heads=2, rope_scaling={"rope_type": "linear", "factor": 2.0}),
    ),
    "llama3-rope": (
        "LlamaConfig",
        dict(
            num_key_value_heads=1,
            rope_theta=500000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        ),
    ),
    "llama-bias-headdim": (
        "LlamaConfig",
        dict(num_key_value_heads=2, attention_bias=True, mlp_bias=True, head_dim=24),
    ),
    "mistral": ("MistralConfig", dict(num_key_value_heads=2, sliding_window=None)),
    "gptj": ("GPTJConfig", dict(rotary_dim=8)),
}


def hf_config(kind: str, context: int = 128, **overrides: object) -> object:
    cls = getattr(transformers, kind)
    if kind == "GPTJConfig":
        base = dict(
            vocab_size=VOCAB,
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_positions=context,
            rotary_dim=8,
            bos_token_id=1,
            eos_token_id=2,
            tie_word_embeddings=False,
        )
    else:
        base = dict(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=context,
            bos_token_id=1,
            eos_token_id=2,
            tie_word_embeddings=False,
        )
    base.update(overrides)
    return cls(**base)


def save_tiny_tokenizer(folder: Path) -> None:
    """A small byte-level BPE tokenizer, so the folder is a complete HF model folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(["hello world, how are you today?"] * 4, trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.save_pretrained(folder)


def randomize(model: torch.nn.Module) -> torch.nn.Module:
    """Weights drawn with a large std (norm scales near 1), so that attention patterns and
    every term of the forward pass move the logits."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or "ln" in name:
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            else:
                param.copy_(torch.randn_like(param) * 0.3)
    return model


def make_checkpoint(folder: Path, kind: str, seed: int = 0, **overrides: object) -> object:
    """Writes a random model to `folder` (safetensors + tokenizer); returns the HF model."""
    torch.manual_seed(seed)
    config = hf_config(kind, **overrides)
    arch = {
        "LlamaConfig": "LlamaForCausalLM",
        "MistralConfig": "MistralForCausalLM",
        "GPTJConfig": "GPTJForCausalLM",
    }[kind]
    model = randomize(getattr(transformers, arch)(config).eval())
    model.save_pretrained(folder, safe_serialization=True)
    save_tiny_tokenizer(folder)
    return model
