"""Sequence classifiers (reward models): a causal LM's decoder with a score head.

transformers' `*ForSequenceClassification` is its causal LM's decoder with `score`, a
bias-free linear hidden -> num_labels, in place of lm_head; the checkpoint holds the
decoder's tensors under the same names and `score.weight`, and no lm_head. The sequence's
score is the head's output at its last non-pad token (`scoring_length`).

`attach_score_head` turns a family's model (built from a config with num_labels > 0) into
that classifier without touching the family's code: its `lm_head` becomes the score head
(untied from the embedding if it was tied), so `compute_logits(hidden)` returns
[B, num_labels] scores, and its weight map reads `score.weight` instead of lm_head's
tensors. The score head is never quantized (it is no decoder linear).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import nn

from blendrt.models.gpt2 import GPT2WeightMap
from blendrt.models.weights import WeightMap

SCORE = "score.weight"


def scoring_length(token_ids: Sequence[int] | np.ndarray, pad_token_id: int | None) -> int:
    """How many of `token_ids` to feed so that the last one fed is the scored token:
    transformers scores the rightmost token that is not `pad_token_id` (the whole sequence
    without one), and a causal model's output there depends on nothing after it, so
    trailing pads are dropped and the rest is fed. All pads: 1 (transformers' argmax of an
    all-zero mask picks the first token)."""
    n = len(token_ids)
    if n == 0:
        raise ValueError("cannot score an empty sequence")
    if pad_token_id is None:
        return n
    ids = np.asarray(token_ids)
    kept = np.flatnonzero(ids != pad_token_id)
    return int(kept[-1]) + 1 if kept.size else 1


class ScoreHead:
    """Mixed into a family's model class by `attach_score_head`: the weight map of the
    family's model, with lm_head's tensors replaced by the score head's."""

    lm_head: nn.Module
    _lm_head_shape: tuple[int, int, bool]  # the family's lm_head: (out, in, has a bias)

    def weight_map(self) -> WeightMap:
        # The family's map is built against a meta stand-in of its own lm_head, so every
        # target it gives lm_head (untied: its weight, GPT-J: its bias too) is recognized
        # by identity and dropped. Tied, the family ignores lm_head.weight and maps the
        # embedding, whose target stays.
        out, inp, bias = self._lm_head_shape
        head = self._modules["lm_head"]
        stand_in = nn.Linear(inp, out, bias=bias, device="meta")
        self._modules["lm_head"] = stand_in
        try:
            wm = super().weight_map()  # type: ignore[misc]
        finally:
            self._modules["lm_head"] = head
        gone = {id(p) for p in stand_in.parameters()}
        wm.targets = {n: t for n, t in wm.targets.items() if id(t.param) not in gone}
        wm.linears = {n: p for n, p in wm.linears.items() if p.module is not stand_in}
        # GPT-2's map reads every name outside lm_head under `transformer.`
        name = "transformer." + SCORE if isinstance(wm, GPT2WeightMap) else SCORE
        wm.add(name, head.weight)
        return wm


_CLASSES: dict[type, type] = {}


def _scored_class(cls: type[nn.Module]) -> type[nn.Module]:
    if cls not in _CLASSES:
        doc = f"{cls.__name__} with a score head (a sequence classifier)."
        _CLASSES[cls] = type(f"Scored{cls.__name__}", (ScoreHead, cls), {"__doc__": doc})
    return _CLASSES[cls]


def attach_score_head(model: nn.Module, num_labels: int) -> nn.Module:
    """Makes `model` (a family's model, before its weights are loaded: on meta or any
    device) a classifier in place and returns it: lm_head -> nn.Linear(hidden, num_labels,
    bias=False) on lm_head's device and dtype, the weight map reading `score.weight`."""
    if not isinstance(num_labels, int) or num_labels < 1:
        raise ValueError(f"a score head needs num_labels >= 1, got {num_labels!r}")
    if isinstance(model, ScoreHead):
        raise ValueError("the model already has a score head")
    old = model.lm_head
    weight = old.weight
    model._lm_head_shape = (old.out_features, old.in_features, old.bias is not None)
    model.__class__ = _scored_class(type(model))
    # A new module: tied or not before, the score head shares nothing with the embedding.
    model.lm_head = nn.Linear(
        old.in_features, num_labels, bias=False, device=weight.device, dtype=weight.dtype
    )
    return model


def is_scorer(model: nn.Module) -> bool:
    """Whether `attach_score_head` made this model a classifier."""
    return isinstance(model, ScoreHead)
