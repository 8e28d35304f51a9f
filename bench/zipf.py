"""Zipf-distributed key ranks, the skewed load real caches see (s = 0.99 over 1M keys).

Rank 0 is the hottest key; P(rank k) = (k + 1)^-s / H(n, s). Sampling inverts a
precomputed cumulative table: numpy's ``searchsorted`` when numpy is installed, else
``bisect`` on a list (slower, same distribution). Later issues (hot keys, rebalancing)
import this module to generate the same load.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Iterator

try:
    import numpy as np
except ImportError:  # pragma: no cover - depends on the environment
    np = None

DEFAULT_KEYS = 1_000_000
DEFAULT_S = 0.99


def key_name(rank: int) -> bytes:
    """The key for a rank: redis-benchmark's spelling (``key:`` and 12 digits)."""
    return b"key:%012d" % rank


class ZipfSampler:
    """Draws ranks 0..n-1 with P(k) proportional to (k + 1)^-s.

    The cumulative table is built once (about 0.1 s with numpy, 0.5 s without, for 1M
    keys); a forked worker inherits it instead of rebuilding it.
    """

    def __init__(self, n: int = DEFAULT_KEYS, s: float = DEFAULT_S, seed: int | None = None,
                 use_numpy: bool | None = None) -> None:
        if n < 1:
            raise ValueError("n must be at least 1")
        self.n = n
        self.s = s
        self.use_numpy = (np is not None) if use_numpy is None else use_numpy
        if self.use_numpy and np is None:
            raise RuntimeError("numpy is not installed")
        if self.use_numpy:
            weights = np.arange(1, n + 1, dtype=np.float64) ** -s
            cdf = np.cumsum(weights)
            self.harmonic = float(cdf[-1])
            self._cdf = cdf / cdf[-1]
            self._rng = np.random.default_rng(seed)
        else:
            weights = [(k + 1) ** -s for k in range(n)]
            cdf = list(itertools.accumulate(weights))
            self.harmonic = cdf[-1]
            self._cdf = [c / self.harmonic for c in cdf]
            self._random = random.Random(seed)

    def reseed(self, seed: int | None) -> None:
        """A fresh stream (each forked worker reseeds, or all would draw the same keys)."""
        if self.use_numpy:
            self._rng = np.random.default_rng(seed)
        else:
            self._random = random.Random(seed)

    def probability(self, rank: int) -> float:
        """The theoretical share of draws that rank ``rank`` gets."""
        return (rank + 1) ** -self.s / self.harmonic

    def top_share(self, count: int) -> float:
        """The theoretical share of the ``count`` hottest keys together."""
        if count <= 0:
            return 0.0
        return float(self._cdf[min(count, self.n) - 1])

    def sample(self, count: int) -> list[int]:
        """``count`` ranks drawn independently."""
        if self.use_numpy:
            u = self._rng.random(count)
            ranks = np.searchsorted(self._cdf, u, side="right")
            return np.minimum(ranks, self.n - 1).tolist()
        cdf, last, rnd = self._cdf, self.n - 1, self._random.random
        return [min(bisect.bisect_right(cdf, rnd()), last) for _ in range(count)]

    def stream(self, chunk: int = 65536) -> Iterator[int]:
        """An endless iterator of ranks, drawn ``chunk`` at a time."""
        while True:
            yield from self.sample(chunk)
