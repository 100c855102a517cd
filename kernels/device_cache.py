"""A bounded cache of device tensors that a CUDA graph can rely on: plain Python and torch (no triton), so
``sparse_rda.step`` uses it with or without triton, as the kernels' tables do (kernels/tensor_table.py).

Least recently used entries are dropped past the bound, except those created or looked up while a CUDA graph is
being captured: the graph reads them at each replay, and a freed tensor's memory goes back to the allocator and
would be reused under the graph. Those are kept for as long as the process lives.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Hashable

import torch


def capturing() -> bool:
    """Whether the current CUDA stream is capturing a graph (False without CUDA)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


class DeviceCache:
    """key -> value made once by ``make()``; at most ``bound`` entries besides those a captured graph reads."""

    def __init__(self, bound: int):
        self.bound = bound
        self._recent: OrderedDict = OrderedDict()  # least recently used first
        self._kept: dict = {}  # entries a captured graph reads: never dropped

    def get(self, key: Hashable, make: Callable[[], Any]) -> Any:
        if key in self._kept:
            return self._kept[key]
        value = self._recent.pop(key) if key in self._recent else make()
        if capturing():
            self._kept[key] = value
        else:
            self._recent[key] = value  # (re)inserted last: the most recently used
            while len(self._recent) > self.bound:
                self._recent.popitem(last=False)
        return value

    def __contains__(self, key: Hashable) -> bool:
        return key in self._kept or key in self._recent

    def __len__(self) -> int:
        return len(self._kept) + len(self._recent)

    def kept(self) -> int:
        """How many entries are kept for good (read by captured graphs)."""
        return len(self._kept)
