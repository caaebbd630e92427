"""ModelRunner: one member's model over its views of the shared pool.

Per step it turns the core's batch metadata (numpy) into device tensors, builds the explicit
ForwardContext, runs one forward for the member's whole mixed batch, and returns logits.
"""

from __future__ import annotations

import numpy as np
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

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(self.device, non_blocking=True)

    def attention_metadata(self, batch: BatchMetadata) -> AttentionMetadata:
        """The batch's block tables, slots and lengths on the device, and their host copies."""
        return AttentionMetadata(
            slot_mapping=self._to_device(batch.slot_mapping),
            block_tables=self._to_device(batch.block_tables),
            cu_seqlens_q=self._to_device(batch.cu_seqlens_q),
            context_lens=self._to_device(batch.context_lens),
            max_query_len=batch.max_query_len,
            max_context_len=batch.max_context_len,
            cu_seqlens_q_host=tuple(batch.cu_seqlens_q.tolist()),
            context_lens_host=tuple(batch.context_lens.tolist()),
        )

    @torch.inference_mode()
    def forward(self, batch: BatchMetadata, *, all_logits: bool = False) -> torch.Tensor:
        """Float32 logits at each sequence's last new token [B, V], or at every new token
        [T, V] with all_logits."""
        self.model.ensure_positions(batch.max_context_len)
        ctx = ForwardContext(
            positions=self._to_device(batch.positions).long(),
            attn=self.attention_metadata(batch),
            kv=self.kv,
            backend=self.backend,
        )
        hidden = self.model(self._to_device(batch.input_ids).long(), ctx)  # [T, hidden]
        if not all_logits:
            hidden = hidden[self._to_device(batch.logits_indices).long()]
        return self.model.compute_logits(hidden).float()
