"""A key/value cache that writes into buffers allocated once, instead of concatenating a growing cache
at every new token (transformers' ``DynamicLayer``)."""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer


def make_preallocated_cache(num_layers: int, capacity: int):
    """A transformers ``Cache`` whose layers write into buffers of ``capacity`` positions.

    transformers' ``DynamicLayer`` concatenates the whole cache with each new token (quadratic copying);
    these layers allocate ``(B, heads, capacity, head_dim)`` once and hand out views of the filled part.
    Dropping finished rows (``batch_select_indices``) and all-padding columns (``crop_left``) are
    supported.
    """
    class PreallocatedLayer(DynamicLayer):
        def __init__(self) -> None:
            super().__init__()
            self.length = 0

        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            self.dtype, self.device = key_states.dtype, key_states.device
            B, H, _, D = key_states.shape
            self.key_buffer = key_states.new_empty((B, H, capacity, D))  # (B, nh, capacity, hs)
            self.value_buffer = value_states.new_empty((B, H, capacity, value_states.shape[-1]))
            self.length = 0
            self.is_initialized = True

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            T = key_states.shape[-2]
            end = self.length + T
            if end > self.key_buffer.shape[-2]:
                raise RuntimeError(f"KV cache overflow: {end} > capacity {self.key_buffer.shape[-2]}")
            self.key_buffer[:, :, self.length : end] = key_states
            self.value_buffer[:, :, self.length : end] = value_states
            self.length = end
            self.keys = self.key_buffer[:, :, :end]  # (B, nh, past+T, hs) view
            self.values = self.value_buffer[:, :, :end]
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length if self.is_initialized else 0

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            if self.is_initialized:
                self.key_buffer = self.key_buffer[indices]
                self.value_buffer = self.value_buffer[indices]
                self.keys = self.key_buffer[:, :, : self.length]
                self.values = self.value_buffer[:, :, : self.length]

        def crop_left(self, n: int) -> None:
            """Forget the first ``n`` positions (all padding); a view, no copy."""
            if self.is_initialized and n > 0:
                self.key_buffer = self.key_buffer[:, :, n:]
                self.value_buffer = self.value_buffer[:, :, n:]
                self.length -= n
                self.keys = self.key_buffer[:, :, : self.length]
                self.values = self.value_buffer[:, :, : self.length]

    return Cache(layers=[PreallocatedLayer() for _ in range(num_layers)])


