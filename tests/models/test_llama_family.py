"""Parity with transformers for the families the Llama decoder serves: Mistral with its sliding
window, Qwen2/2.5 (q/k/v biases, yarn, windows past max_window_layers), Qwen3 (per-head q/k
norms, explicit head_dim), Phi-3 (fused checkpoints, longrope, partial rotary, a window),
and Llama with dynamic NTK rope; float32, through the paged path (tests/family_parity.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from family_parity import check_parity, make_family_checkpoint

from blendrt import load_model

SMALL = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4)
#: {case: (config class, model class, config)}
CASES = {
    "mistral-window": (
        "MistralConfig", "MistralForCausalLM",
        SMALL | dict(num_key_value_heads=2, sliding_window=20, max_position_embeddings=256),
    ),
    "mistral-window-mha": (
        "MistralConfig", "MistralForCausalLM",
        SMALL | dict(num_key_value_heads=4, sliding_window=9, head_dim=24,
                     max_position_embeddings=256),
    ),
    "qwen2-tied": (
        "Qwen2Config", "Qwen2ForCausalLM",
        SMALL | dict(num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=256),
    ),
    "qwen2.5-yarn": (
        "Qwen2Config", "Qwen2ForCausalLM",
        SMALL | dict(num_key_value_heads=1, max_position_embeddings=256, rope_scaling={
            "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}),
    ),
    "qwen2-window-layers": (
        "Qwen2Config", "Qwen2ForCausalLM",
        SMALL | dict(num_hidden_layers=3, num_key_value_heads=2, use_sliding_window=True,
                     sliding_window=12, max_window_layers=1, max_position_embeddings=256),
    ),
    "qwen3": (
        "Qwen3Config", "Qwen3ForCausalLM",
        SMALL | dict(num_key_value_heads=2, head_dim=40, max_position_embeddings=256),
    ),
    "qwen3-tied-gqa4": (
        "Qwen3Config", "Qwen3ForCausalLM",
        SMALL | dict(num_attention_heads=8, num_key_value_heads=2, head_dim=16,
                     tie_word_embeddings=True, max_position_embeddings=256),
    ),
    "phi3-window": (
        "Phi3Config", "Phi3ForCausalLM",
        SMALL | dict(num_key_value_heads=2, sliding_window=24, max_position_embeddings=256,
                     pad_token_id=0),
    ),
    "phi3-longrope-partial": (
        "Phi3Config", "Phi3ForCausalLM",
        SMALL | dict(num_key_value_heads=4, max_position_embeddings=128, pad_token_id=0,
                     original_max_position_embeddings=32, partial_rotary_factor=0.5,
                     sliding_window=None, rope_scaling={
                         "type": "longrope", "short_factor": [1.0, 1.1, 1.3, 1.7],
                         "long_factor": [1.0, 2.0, 3.5, 6.0]}),
    ),
    "llama-dynamic": (
        "LlamaConfig", "LlamaForCausalLM",
        SMALL | dict(num_key_value_heads=2, max_position_embeddings=35,
                     rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
    ),
}  # fmt: skip


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory) -> tuple[str, Path, object]:
    config_class, model_class, config = CASES[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    hf_model = make_family_checkpoint(folder, config_class, model_class, **config)
    return request.param, folder, hf_model


def test_parity_with_transformers(case) -> None:
    name, folder, hf_model = case
    # longrope's long factors apply past its original 32 positions: score 70 tokens.
    # Dynamic NTK serves 35 x 2 = 70 positions with the base transformers uses for a
    # 70-token sequence; a shorter one (greedy from 20 tokens) gets transformers' unscaled
    # base there (blendrt/models/rope.py: a cached key's rotation never changes).
    # Longrope generates from 40 tokens, past the original 32, as transformers then does.
    greedy = 0 if name == "llama-dynamic" else 12
    prompt = 40 if "longrope" in name else 20
    worst = check_parity(folder, hf_model, num_tokens=70, greedy=greedy, greedy_prompt=prompt)
    print(f"{name}: max |delta logprob| = {worst:.2e}")


def test_windows_are_read_from_config(case) -> None:
    name, folder, _ = case
    config = load_model(folder).config
    expected = {
        "mistral-window": ((20, 20), 20),
        "mistral-window-mha": ((9, 9), 9),
        "qwen2-window-layers": ((0, 12, 12), 0),  # layer 0 global: nothing is released
        "phi3-window": ((24, 24), 24),
    }.get(name, ((), 0))
    assert (config.layer_windows, config.release_window) == expected
