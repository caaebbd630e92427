"""ModelConfig: one dataclass for every supported architecture, read from a HF config.json."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from blendrt.models.rope_config import RopeConfig

#: {HF architecture name: blendrt family (one model file each)}
ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "llama",
    "Qwen3ForCausalLM": "llama",
    "Phi3ForCausalLM": "llama",
    "Gemma2ForCausalLM": "gemma",
    "Gemma3ForCausalLM": "gemma",
    "GPTJForCausalLM": "gptj",
    "GPTNeoXForCausalLM": "gpt_neox",
    "GPT2LMHeadModel": "gpt2",
}
#: {HF sequence classifier (reward model): the causal LM of the same decoder}. A classifier
#: is its causal LM's decoder and weights with `score` (hidden -> num_labels, no bias) in
#: place of lm_head; blendrt builds it as that causal LM (ModelConfig.architecture names it)
#: with num_labels > 0 (blendrt/models/score_head.py swaps the head).
SEQUENCE_CLASSIFIERS = {
    "LlamaForSequenceClassification": "LlamaForCausalLM",
    "MistralForSequenceClassification": "MistralForCausalLM",
    "Qwen2ForSequenceClassification": "Qwen2ForCausalLM",
    "Qwen3ForSequenceClassification": "Qwen3ForCausalLM",
    "Phi3ForSequenceClassification": "Phi3ForCausalLM",
    "Gemma2ForSequenceClassification": "Gemma2ForCausalLM",
    "Gemma3TextForSequenceClassification": "Gemma3ForCausalLM",
    "GPTJForSequenceClassification": "GPTJForCausalLM",
    "GPTNeoXForSequenceClassification": "GPTNeoXForCausalLM",
    "GPT2ForSequenceClassification": "GPT2LMHeadModel",
}
#: {causal LM: its sequence classifier}
CLASSIFIER_OF = {lm: classifier for classifier, lm in SEQUENCE_CLASSIFIERS.items()}
ARCHITECTURES |= {c: ARCHITECTURES[lm] for c, lm in SEQUENCE_CLASSIFIERS.items()}
#: {config.json model_type: HF architecture}, for configs that name no architecture
MODEL_TYPES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "gptj": "GPTJForCausalLM",
    "gpt_neox": "GPTNeoXForCausalLM",
    "gpt2": "GPT2LMHeadModel",
}
#: {activation name as blendrt spells it: what transformers calls it in config.json}
ACTIVATIONS = {
    "silu": ("silu", "swish"),
    "gelu": ("gelu",),  # exact erf GELU
    "gelu_tanh": ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"),  # tanh approximation
}


#: {ModelConfig field: largest value accepted}: config.json is untrusted, and these size
#: allocations; anything beyond is refused before a byte is allocated.
LIMITS = {
    "vocab_size": 1 << 22,
    "hidden_size": 1 << 16,
    "num_layers": 1024,
    "num_heads": 1024,
    "num_kv_heads": 1024,
    "head_dim": 1024,
    "intermediate_size": 1 << 20,
    "max_position_embeddings": 1 << 24,
}
#: The most labels a classifier's score head may have (its rows are allocated like any size).
MAX_LABELS = 4096


def supported_architectures() -> str:
    """The supported architectures, for messages: the causal LMs, then the classifiers."""
    return (
        ", ".join(sorted(a for a in ARCHITECTURES if a not in SEQUENCE_CLASSIFIERS))
        + "; as scorers (num_labels > 0): "
        + ", ".join(sorted(SEQUENCE_CLASSIFIERS))
    )


@dataclass(frozen=True)
class ModelConfig:
    """One member's architecture, read from config.json by `hf_config.parse_hf_config`.

    Fields past `rope` default to Llama's choices; each family's parser sets what differs."""

    #: A key of ARCHITECTURES: the causal LM whose decoder is built. A sequence classifier's
    #: name is normalized to its causal LM's (SEQUENCE_CLASSIFIERS: same decoder, same
    #: weights, same family switches); num_labels > 0 then marks the score head.
    architecture: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_position_embeddings: int  # the serving window (declared, capped by max_model_len)
    rope: RopeConfig | None  # None: learned absolute positions (GPT-2)
    norm_eps: float
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_proj_bias: bool = False
    mlp_bias: bool = False
    hidden_act: str = "silu"  # a key of ACTIVATIONS
    qk_norm: bool = False  # RMSNorm over each head of q and k before rotary (Qwen3, Gemma3)
    layer_windows: tuple[int, ...] = ()  # {layer: sliding window, 0 = global}; () = none
    local_rope: RopeConfig | None = None  # rotary of the windowed layers, when it differs
    attn_logit_softcap: float = 0.0  # 0 = off (Gemma 2)
    final_logit_softcap: float = 0.0
    query_pre_attn_scalar: float | None = None  # softmax scale = its -1/2 (Gemma)
    parallel_residual: bool = False  # x + attn(ln(x)) + mlp(ln'(x)) (GPT-J, GPT-NeoX)
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None  # a classifier scores the last token that is not this
    #: 0: a causal LM (logits over the vocabulary); > 0: a sequence classifier (reward
    #: model) whose head `score` gives that many scores per token, read at the last non-pad
    num_labels: int = 0
    family: str = field(init=False)  # a value of ARCHITECTURES: picks the model class
    softmax_scale: float = field(init=False)
    #: Tokens back from a query that any layer can still see (0: unbounded). Pages wholly
    #: before every layer's window are released while a sequence runs.
    release_window: int = field(init=False)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"unsupported architecture {self.architecture!r}; supported: "
                + supported_architectures()
            )
        labels = self.num_labels
        if type(labels) is not int or not 0 <= labels <= MAX_LABELS:
            raise ValueError(f"num_labels must be an int in [0, {MAX_LABELS}], got {labels!r}")
        if self.architecture in SEQUENCE_CLASSIFIERS:
            if labels == 0:
                raise ValueError(
                    f"{self.architecture} is a sequence classifier: num_labels must be > 0"
                )
            object.__setattr__(self, "architecture", SEQUENCE_CLASSIFIERS[self.architecture])
        for name, high in LIMITS.items():
            value = getattr(self, name)
            if type(value) is not int or not 1 <= value <= high:
                raise ValueError(
                    f"config field {name} must be an int in [1, {high}], got {value!r}"
                )
        if self.num_kv_heads > self.num_heads:
            raise ValueError(
                f"num_kv_heads ({self.num_kv_heads}) exceeds num_heads ({self.num_heads})"
            )
        if not (math.isfinite(self.norm_eps) and 0 < self.norm_eps < 1):
            raise ValueError(f"the norm epsilon must be in (0, 1), got {self.norm_eps!r}")
        for t in (
            *self.eos_token_ids,
            *([self.bos_token_id] if self.bos_token_id is not None else []),
        ):
            if type(t) is not int or not 0 <= t < self.vocab_size:
                raise ValueError(
                    f"bos/eos token ids must be ints in [0, {self.vocab_size}), got {t!r}"
                )
        pad = self.pad_token_id
        if pad is not None and (type(pad) is not int or not 0 <= pad < self.vocab_size):
            raise ValueError(
                f"the pad token id must be an int in [0, {self.vocab_size}), got {pad!r}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of "
                f"num_kv_heads ({self.num_kv_heads})"
            )
        for rope in (self.rope, self.local_rope):
            if rope is not None and rope.rotary_dim > self.head_dim:
                raise ValueError(f"rotary_dim {rope.rotary_dim} exceeds head_dim {self.head_dim}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"hidden_act {self.hidden_act!r} is not supported: use one of "
                + ", ".join(sorted(ACTIVATIONS))
            )
        self._check_windows()
        for name in ("attn_logit_softcap", "final_logit_softcap"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        scalar = self.query_pre_attn_scalar
        if scalar is not None and not (math.isfinite(scalar) and scalar > 0):
            raise ValueError(f"query_pre_attn_scalar must be positive, got {scalar!r}")
        object.__setattr__(self, "family", ARCHITECTURES[self.architecture])
        object.__setattr__(self, "softmax_scale", (scalar or self.head_dim) ** -0.5)
        windows = self.layer_windows
        bounded = bool(windows) and all(windows)
        object.__setattr__(self, "release_window", max(windows) if bounded else 0)

    def _check_windows(self) -> None:
        if self.layer_windows and len(self.layer_windows) != self.num_layers:
            raise ValueError(
                f"{len(self.layer_windows)} layer windows for {self.num_layers} layers"
            )
        for w in self.layer_windows:
            if type(w) is not int or not 0 <= w <= LIMITS["max_position_embeddings"]:
                raise ValueError(f"a sliding window must be an int >= 0, got {w!r}")

    @property
    def is_classifier(self) -> bool:
        """A sequence classifier (reward model): compute_logits gives num_labels scores."""
        return self.num_labels > 0

    @property
    def hf_architecture(self) -> str:
        """The architecture as config.json names it (a classifier's, when num_labels > 0)."""
        return CLASSIFIER_OF[self.architecture] if self.num_labels else self.architecture

    def window(self, layer_idx: int) -> int:
        """The layer's sliding window in tokens (0: it sees the whole sequence)."""
        return self.layer_windows[layer_idx] if self.layer_windows else 0


def serving_window(declared: int, max_model_len: int | None) -> int:
    """The serving window: the declared positions, capped by max_model_len (the one place
    the cap is applied: model configs at load, the engine for members loaded without it)."""
    return min(declared, max_model_len) if max_model_len else declared
