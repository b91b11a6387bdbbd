"""A least-recently-used cache of tile predictions, bounded in bytes (panning back is instant)."""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np


class TileCache:
    """LRU cache of tile predictions, bounded in bytes."""

    def __init__(self, max_bytes: int = 256 * 2**20):
        self.max_bytes = int(max_bytes)
        self._d: OrderedDict = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key):
        with self._lock:
            v = self._d.get(key)
            if v is None:
                self.misses += 1
                return None
            self._d.move_to_end(key)
            self.hits += 1
            return v

    def put(self, key, value: np.ndarray) -> None:
        with self._lock:
            if key in self._d:
                self._bytes -= self._d.pop(key).nbytes
            self._d[key] = value
            self._bytes += value.nbytes
            while self._bytes > self.max_bytes and len(self._d) > 1:
                _, old = self._d.popitem(last=False)
                self._bytes -= old.nbytes

    def __contains__(self, key) -> bool:
        """Whether ``key`` is cached (counts neither a hit nor a miss, keeps the LRU order)."""
        with self._lock:
            return key in self._d

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._d)

    def clear(self) -> None:
        with self._lock:
            self._d.clear()
            self._bytes = 0
