"""ModelRunner: one member's model over its views of the shared pool.

Per step it turns the core's batch metadata (numpy) into device tensors, builds the explicit
ForwardContext, runs one forward for the member's whole mixed batch, and returns logits.
"""

from __future__ import annotations

import torch
from torch import nn

from blendrt.cache.manager import BatchMetadata
from blendrt.cache.pool import MemberKV
from blendrt.models.layers import ForwardContext
from blendrt.ops.attention import AttentionBackend, AttentionMetadata


class ModelRunner:
    def __init__(self, model: nn.Module, kv: MemberKV, backend: AttentionBackend) -> None:
        self.model = model
        self.kv = kv
        self.backend = backend
        self.device = next(model.parameters()).device

    def _to_device(self, array: object) -> torch.Tensor:
        return torch.from_numpy(array).to(self.device, non_blocking=True)

    @torch.inference_mode()
    def forward(self, batch: BatchMetadata, *, all_logits: bool = False) -> torch.Tensor:
        """Float32 logits at each sequence's last new token [B, V], or at every new token
        [T, V] with all_logits."""
        self.model.rotary.ensure(batch.max_context_len)
        ctx = ForwardContext(
            positions=self._to_device(batch.positions).long(),
            attn=AttentionMetadata.from_batch(batch, self.device),
            kv=self.kv,
            backend=self.backend,
        )
        hidden = self.model(self._to_device(batch.input_ids).long(), ctx)  # [T, hidden]
        if not all_logits:
            hidden = hidden[self._to_device(batch.logits_indices).long()]
        return self.model.compute_logits(hidden).float()
