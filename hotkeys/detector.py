"""Hot-key detection: which keys take a large share of recent traffic, decided once per window.

The proxy calls ``observe(key)`` on every request (about 0.55 µs on CPython 3.11) and
``tick()`` from a timer task about once per window. Everything else happens in ``tick``:
window rollover, promotion and cooling decisions, and the events mitigation code reacts to.
No I/O and no clock reads on the request path; the clock is injected so tests drive time.

Two counters per key, never both
--------------------------------
An untracked key is counted in the count-min sketch. When its estimate crosses the threshold
it enters the top-k table with that estimate, and from then on it is counted *exactly* in the
table and no longer in the sketch. That is cheaper (a dict update instead of a sketch update,
for the keys that make up a large share of traffic); it keeps the heaviest keys out of the
sketch's cells, where they would inflate the estimates of the keys sharing them; and it lets
promotion rest on exact counts. A key leaving the table hands its count back to the sketch.

Definition of "hot"
-------------------
Every window (``window`` seconds, 1 s by default) all counts are halved: sketch counters,
table counts and ``T``, the number of requests counted. So every count is exponentially
decayed, ``sum_j count_j / 2**j`` over the current window (j = 0) and the ones before; a
steady rate ``r`` ops/s reads ``2 * r * window``: counts are recent rates, weighted with a
half-life of one window. The *threshold* is::

    threshold = max(threshold_fraction * T, 2 * floor_ops * window / sample_every)

that is, in rates: a key's recent rate must exceed both ``threshold_fraction`` of the recent
total rate and ``floor_ops`` ops/s (the floor keeps a quiet proxy from calling its every key
hot, and lets keys cool when traffic stops). Let ``n`` be a tracked key's table count. At
each window's end, before the halving:

- a tracked key, not hot, becomes hot when ``n > threshold`` *and* its own requests since
  it entered the table (exact, decayed alike) number at least ``PROMOTION_MIN_HITS`` and
  beat ``threshold_fraction`` of all requests since then by ``PROMOTION_Z`` Poisson standard
  deviations (``SAMPLED_PROMOTION_Z`` when sampling). The sketch only nominates: a key
  admitted on an over-count (its cells shared with heavier keys; a "shadow" sharing all four
  with hot keys, about one key in a million here) is not promoted on that over-count, and
  noise must be above the threshold share, not merely at it, to promote a key that
  hysteresis would then keep;
- a tracked key still under the threshold is promoted all the same when its requests since
  admission beat the threshold share by ``FAST_PROMOTION_Z`` deviations: its decayed count
  lags a rise in its rate (see below), its own recent requests do not;
- a hot key with ``2 * n <= threshold`` at ``cool_windows`` consecutive window ends stops
  being hot and leaves the table; one window end over half resets that count (no flapping);
- a tracked key, not hot, with ``2 * n <= threshold`` leaves the table.

Keys enter the table from ``observe``, the moment their sketch estimate is over
``ADMISSION_FRACTION`` (3/4) of the threshold (in the current, partial window: same ratio,
same scale). Going by decayed counts alone, a key whose share jumps to ``p`` at a window
start would be flagged at the end of window ``k`` once ``p * (1 - 2**-k) >
threshold_fraction``: after two windows only if ``p > 4/3 * threshold_fraction``. Admitted
earlier and judged on its requests since, a key at 1.2x the threshold is flagged after two
windows when a window holds enough requests for 1.2x to stand out from the noise (at 500,000
requests a window, as bench/hotkeys_accuracy.py measures; sampling stretches that).

A key also leaves the table (and stops being hot) when the table is full and a key with a
larger estimate arrives: only the largest ``topk`` keys can be tracked. Its cooling event is
delivered by the next ``tick``.

Sampling
--------
With ``sample_every=N`` each request is counted with probability ``1/N`` (geometric gaps,
so no periodic request pattern aliases with the sampling); counts stay in sampled units and
rates are scaled by ``N``. An unsampled request costs a counter decrement and a dict lookup.
Fewer counted requests mean more noise: keys near the threshold are told apart less well.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from hotkeys.sketch import CountMinSketch
from hotkeys.topk import TopK

# How far a candidate's own (sampled) requests since admission must beat the threshold
# share to be promoted: at least this many, and this many standard deviations over it.
PROMOTION_MIN_HITS = 10
PROMOTION_Z = 0.5
# Sampled, a decayed count is noisier too (and that test has no margin of its own): the
# since-admission test holds back the extra false positives.
SAMPLED_PROMOTION_Z = 1.0
# Keys are tracked exactly from this fraction of the threshold share on, and a tracked key
# still under the threshold (its decayed count lags: it only just rose) is promoted anyway
# when its requests since admission beat the threshold share by FAST_PROMOTION_Z deviations.
ADMISSION_FRACTION = 0.75
FAST_PROMOTION_Z = 2.0

# Past this many missed windows every 32-bit counter has been halved to zero.
_MAX_HALVINGS = 33


@dataclass(frozen=True, slots=True)
class HotKey:
    """A key currently hot: its recent rate (as of the last window end) and since when."""

    key: bytes
    ops_per_sec: float
    since: float


@dataclass(frozen=True, slots=True)
class HotKeyEvent:
    """A transition: ``hot`` True when ``key`` became hot at ``at``, False when it cooled."""

    key: bytes
    hot: bool
    ops_per_sec: float
    at: float


#: Sampling gaps drawn in advance and used in turn (a period of about GAPS * sample_every
#: requests, far longer than any request pattern that could alias with it).
GAPS = 4096


@dataclass(slots=True)
class _HotState:
    since: float
    count: int  # at the last window end, before halving
    cool: int = 0


class HotKeyDetector:
    """Per-worker hot-key detector: sketch + top-k + hysteresis, driven by an injected clock."""

    def __init__(self, threshold_fraction: float = 0.001, floor_ops: float = 10.0,
                 window: float = 1.0, sample_every: int = 1, topk: int = 128,
                 cool_windows: int = 3, clock: Callable[[], float] = time.monotonic,
                 width: int = 2048, depth: int = 4, seed: int | None = None) -> None:
        if not 0.0 < threshold_fraction < 1.0:
            raise ValueError("threshold_fraction must be in (0, 1)")
        if floor_ops < 0 or window <= 0 or sample_every < 1 or cool_windows < 1:
            raise ValueError("need floor_ops >= 0, window > 0, sample_every >= 1, cool_windows >= 1")
        self.threshold_fraction = threshold_fraction
        self.floor_ops = floor_ops
        self.window = window
        self.sample_every = sample_every
        self.cool_windows = cool_windows
        self.sketch = CountMinSketch(width, depth)
        self._add = self.sketch.add
        self._topk = TopK(topk)
        self._counts = self._topk.counts
        self._hot: dict[bytes, _HotState] = {}
        # Candidates not hot yet: [count at admission, T at admission], decayed with them.
        self._admitted: dict[bytes, list[int]] = {}
        self._total = 0
        self._closed_total = 0
        self._phi = threshold_fraction
        self._admit_phi = threshold_fraction * ADMISSION_FRACTION
        self._promotion_z = PROMOTION_Z if sample_every == 1 else SAMPLED_PROMOTION_Z
        self._floor_count = 2.0 * floor_ops * window / sample_every
        self._to_rate = sample_every / (2.0 * window)
        self._clock = clock
        self._window_start = clock()
        self._pending: list[HotKeyEvent] = []
        self._subscribers: list[Callable[[HotKeyEvent], None]] = []
        #: Requests left until the next sampled one, counted down by ``observe`` (or, a batch
        #: at a time, by ``picks``). Always 1 without sampling.
        self.countdown = 1
        if sample_every > 1:
            draw = random.Random(seed).random
            log_keep = math.log1p(-1.0 / sample_every)
            # geometric gaps with mean ``sample_every``, drawn once: a draw per sample cost
            # more than the sketch update it leads to
            self._gaps = [1 + int(math.log(1.0 - draw()) / log_keep) for _ in range(GAPS)]
            self._gap_index = 0
            self.countdown = self._gaps[0]
            self.observe = self._observe_sampled  # type: ignore[method-assign]

    # -- the request path -------------------------------------------------------------------

    def picks(self, n: int) -> range | list[int]:
        """Which of the next ``n`` requests the sampling counts (their indices, for the caller
        to ``count``): a batch of requests steps the countdown once, not once per request.
        The same requests as ``observe`` one at a time would pick."""
        left = self.countdown
        if left > n:
            self.countdown = left - n
            return ()  # type: ignore[return-value]
        if self.sample_every == 1:
            return range(n)
        gaps, index = self._gaps, self._gap_index
        picked = []
        i = left - 1
        while i < n:
            picked.append(i)
            index = (index + 1) % GAPS
            i += gaps[index]
        self._gap_index = index
        self.countdown = i - n + 1
        return picked

    def observe(self, key: bytes) -> bool:
        """Count one request for ``key``; True when ``key`` is hot (as of the last tick)."""
        total = self._total = self._total + 1
        counts = self._counts
        n = counts.get(key)
        if n is not None:
            counts[key] = n + 1
            return key in self._hot
        est = self._add(key)
        if est > self._floor_count and est > self._admit_phi * total:
            self._admit(key, est)
        return False

    #: ``observe`` without sampling, whatever ``observe`` is: for callers sampling themselves.
    count = observe

    def _observe_sampled(self, key: bytes) -> bool:
        left = self.countdown
        if left > 1:
            self.countdown = left - 1
            return key in self._hot
        index = self._gap_index = (self._gap_index + 1) % GAPS
        self.countdown = self._gaps[index]
        return HotKeyDetector.observe(self, key)

    def _admit(self, key: bytes, estimate: int) -> None:
        offer = self._topk.offer(key, estimate)
        if not offer.admitted:
            return
        self._admitted[key] = [estimate, self._total]
        evicted = offer.evicted
        if evicted is None:
            return
        self._admitted.pop(evicted, None)
        self._hand_back(evicted, offer.evicted_count)
        state = self._hot.pop(evicted, None)
        if state is not None:
            # Pushed out by a bigger key: it cannot be tracked any more, so it is not hot.
            self._pending.append(HotKeyEvent(evicted, False,
                                             offer.evicted_count * self._to_rate, self._clock()))

    def _hand_back(self, key: bytes, count: int) -> None:
        # The sketch stopped counting ``key`` when it entered the table: bring it up to date.
        missing = count - self.sketch.estimate(key)
        if missing > 0:
            self._add(key, missing)

    # -- the timer path ---------------------------------------------------------------------

    def tick(self, now: float | None = None) -> list[HotKeyEvent]:
        """Close the window if it has ended; returns (and tells subscribers) the transitions.

        Call it at least once per window; a late call closes the window then (its counts
        cover the longer span) and treats every further whole window missed as empty.
        """
        if now is None:
            now = self._clock()
        events, self._pending = self._pending, []
        elapsed = now - self._window_start
        if elapsed >= self.window:
            for _ in range(min(int(elapsed // self.window), _MAX_HALVINGS + self.cool_windows)):
                self._close_window(now, events)
            self._window_start = now
        for event in events:
            for callback in list(self._subscribers):
                callback(event)
        return events

    def _close_window(self, now: float, events: list[HotKeyEvent]) -> None:
        self._closed_total = self._total
        threshold = max(self._phi * self._total, self._floor_count)
        topk, hot, admitted, to_rate = self._topk, self._hot, self._admitted, self._to_rate
        for key, n in topk.items():
            state = hot.get(key)
            if state is None:
                at, since = admitted[key]
                risen = n > self._floor_count and self._kept_up(n, at, since, FAST_PROMOTION_Z)
                if (n > threshold or risen) and self._kept_up(n, at, since, self._promotion_z):
                    del admitted[key]
                    hot[key] = _HotState(now, n)
                    events.append(HotKeyEvent(key, True, n * to_rate, now))
                elif 2 * n <= threshold:
                    del admitted[key]
                    self._hand_back(key, n)
                    topk.discard(key)
                continue
            state.count = n
            if 2 * n > threshold:
                state.cool = 0
                continue
            state.cool += 1
            if state.cool >= self.cool_windows:
                del hot[key]
                self._hand_back(key, n)
                topk.discard(key)
                events.append(HotKeyEvent(key, False, n * to_rate, now))
        self.sketch.halve()
        topk.halve()
        for entry in admitted.values():
            entry[0] >>= 1
            entry[1] >>= 1
        self._total >>= 1

    def _kept_up(self, n: int, at_admission: int, total_at_admission: int, z: float) -> bool:
        # The candidate's own requests since admission, counted exactly, against what a key
        # exactly at the threshold share would have had: at least PROMOTION_MIN_HITS (fewer,
        # and a few lucky requests would decide) and ``z`` standard deviations (Poisson) more
        # than that expectation.
        hits = n - at_admission
        expected = self._phi * (self._total - total_at_admission)
        return hits >= PROMOTION_MIN_HITS and hits > expected + z * math.sqrt(expected)

    def subscribe(self, callback: Callable[[HotKeyEvent], None]) -> Callable[[], None]:
        """Call ``callback`` for every transition, from inside ``tick``; returns an unsubscribe.

        Callbacks run on the proxy's timer task: keep them short (e.g. ``send_nowait`` on a
        memory channel). An exception propagates out of ``tick`` after the detector's own
        state is updated.
        """
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    # -- reading ----------------------------------------------------------------------------

    def is_hot(self, key: bytes) -> bool:
        """Whether ``key`` is hot, without counting a request."""
        return key in self._hot

    def hot_keys(self) -> list[HotKey]:
        """The hot keys, busiest first; rates as of the last window end."""
        to_rate = self._to_rate
        keys = [HotKey(k, s.count * to_rate, s.since) for k, s in self._hot.items()]
        keys.sort(key=lambda h: h.ops_per_sec, reverse=True)
        return keys

    def rate(self, key: bytes) -> float:
        """``key``'s recent rate in ops/s as counted now (table, else sketch): any key."""
        n = self._counts.get(key)
        if n is None:
            n = self.sketch.estimate(key)
        return n * self._to_rate

    @property
    def total_rate(self) -> float:
        """The recent rate of all requests in ops/s, as of the last window end."""
        return self._closed_total * self._to_rate

    @property
    def threshold_rate(self) -> float:
        """The rate, in ops/s, a key must exceed right now to be hot."""
        return max(self._phi * self._total, self._floor_count) * self._to_rate

    @property
    def candidates(self) -> list[tuple[bytes, int]]:
        """The tracked keys, largest first: ``(key, count)`` in sampled, decayed counts."""
        return self._topk.items()
