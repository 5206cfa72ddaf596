"""A KV cache that writes each new token in place instead of copying the whole cache.

transformers' `DynamicCache` grows by `torch.cat`, so every decode step copies every layer's
keys and values: the cost of a step grows with the context, and on a CPU running int8 weights
those copies were a fifth of the step (at batch 16 in the server, 4 of a step's 30 ms). Here
each layer holds a buffer with room for the tokens still to come and hands the model views of
its filled part.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """A `DynamicLayer` whose keys/values (B, H, T, D) are views of buffers of `capacity` tokens.

    It supports what `generate_tokens` and `BatchDecoder` use: `update`, `batch_repeat_interleave`,
    `select` and `stack`. A buffer that fills up is reallocated twice as large, so a wrong capacity
    costs speed, never correctness.
    """

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self._allocate(key_states[:, :, :0], value_states[:, :, :0], self.capacity)
        end = self._length + key_states.shape[-2]
        if end > self.capacity:
            self._allocate(self.keys, self.values, max(end, 2 * self.capacity))
        self._keys[:, :, self._length:end] = key_states
        self._values[:, :, self._length:end] = value_states
        self._length = end
        self._expose()
        return self.keys, self.values

    def select(self, index: torch.Tensor, start: int = 0) -> None:
        """Keep the rows `index` and drop the first `start` tokens; the room after stays.

        One copy, of the rows and tokens kept.
        """
        self._keys, self._values = self._keys[index, :, start:], self._values[index, :, start:]
        self.capacity, self._length = self.capacity - start, self._length - start
        self._expose()

    def stack(self, other: PreallocatedLayer, room: int) -> None:
        """Put `other`'s rows under these, the shorter side left-padded with zeros, in a buffer with
        room for `room` more tokens: one copy of each side."""
        length = max(self._length, other._length)
        batch, heads, _, dim = self._keys.shape
        keys = self._keys.new_zeros(batch + other._keys.size(0), heads, length + room, dim)
        values = torch.zeros_like(keys)
        for rows, layer in ((slice(0, batch), self), (slice(batch, None), other)):
            keys[rows, :, length - layer._length:length] = layer.keys
            values[rows, :, length - layer._length:length] = layer.values
        self._keys, self._values, self.capacity, self._length = keys, values, length + room, length
        self._expose()

    def _allocate(self, keys: torch.Tensor, values: torch.Tensor, capacity: int) -> None:
        batch, heads, length, dim = keys.shape
        self._keys = keys.new_empty(batch, heads, capacity, dim)
        self._values = values.new_empty(batch, heads, capacity, dim)
        self._keys[:, :, :length] = keys
        self._values[:, :, :length] = values
        self.capacity, self._length = capacity, length
        self._expose()

    def _expose(self) -> None:
        self.keys = self._keys[:, :, :self._length]
        self.values = self._values[:, :, :self._length]

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            self._keys = self._keys.repeat_interleave(repeats, dim=0)
            self._values = self._values.repeat_interleave(repeats, dim=0)
            self._expose()


def preallocated_cache(n_layer: int, capacity: int) -> Cache:
    """A cache for `n_layer` layers with room for `capacity` tokens (context + new tokens)."""
    return Cache(layers=[PreallocatedLayer(capacity) for _ in range(n_layer)])
