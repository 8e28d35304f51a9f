"""Hot-key detection: the count-min sketch, the top-k table and the detector's window rules.

No sockets and no sleeping: the detector's clock is a variable the tests move.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotkeys.detector import HotKeyDetector, HotKeyEvent
from hotkeys.sketch import MAX_COUNT, CountMinSketch
from hotkeys.topk import TopK

# -- helpers -----------------------------------------------------------------------------------

keys = st.binary(min_size=0, max_size=12)
streams = st.lists(st.tuples(keys, st.integers(min_value=1, max_value=50)), max_size=200)
shapes = st.sampled_from([(2048, 4), (64, 4), (16, 3), (1000, 4), (100, 7), (1, 1), (8, 2)])


class Clock:
    """The detector's injected clock: tests move ``now`` by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def plain_estimates(sketch: CountMinSketch, stream: list[tuple[bytes, int]]) -> dict[bytes, int]:
    """What a count-min sketch of the same shape *without* conservative update would say."""
    cells: Counter[int] = Counter()
    for key, count in stream:
        for i in sketch.indices(key):
            cells[i] += count
    return {key: min(cells[i] for i in sketch.indices(key)) for key, _ in stream}


def run_window(det: HotKeyDetector, clock: Clock, counts: dict[bytes, int],
               background: int = 0) -> list[HotKeyEvent]:
    """One window of traffic, shuffled: ``counts[key]`` requests per key, plus ``background``
    distinct cold keys seen once each; then the window closes."""
    stream = [key for key, n in counts.items() for _ in range(n)]
    stream += [b"bg:%d" % i for i in range(background)]
    random.Random(len(stream)).shuffle(stream)
    for key in stream:
        det.observe(key)
    clock.now += det.window
    return det.tick()


def detector(clock: Clock, **kwargs) -> HotKeyDetector:
    """A detector with a 1% threshold and no floor, so small tests stay small."""
    options = {"threshold_fraction": 0.01, "floor_ops": 0.0, "clock": clock, "cool_windows": 3}
    options.update(kwargs)
    return HotKeyDetector(**options)


# -- the sketch --------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(shapes, streams)
def test_estimate_is_never_below_the_true_count(shape, stream):
    sketch = CountMinSketch(*shape)
    truth: Counter[bytes] = Counter()
    for key, count in stream:
        sketch.add(key, count)
        truth[key] += count
    for key, count in truth.items():
        assert sketch.estimate(key) >= count


@settings(max_examples=60, deadline=None)
@given(shapes, streams)
def test_add_returns_the_estimate_after_the_update(shape, stream):
    sketch = CountMinSketch(*shape)
    for key, count in stream:
        assert sketch.add(key, count) == sketch.estimate(key)


@settings(max_examples=60, deadline=None)
@given(shapes, streams)
def test_conservative_update_raises_each_cell_only_to_the_new_minimum(shape, stream):
    sketch = CountMinSketch(*shape)
    model = [0] * (sketch.width * sketch.depth)
    for key, count in stream:
        cells = sketch.indices(key)
        new = min(model[i] for i in cells) + count
        for i in cells:
            model[i] = max(model[i], new)
        sketch.add(key, count)
    assert list(sketch.counters) == model


@settings(max_examples=60, deadline=None)
@given(shapes, streams)
def test_conservative_update_never_over_counts_more_than_plain_update(shape, stream):
    sketch = CountMinSketch(*shape)
    for key, count in stream:
        sketch.add(key, count)
    for key, plain in plain_estimates(sketch, stream).items():
        assert sketch.estimate(key) <= plain


@settings(max_examples=30, deadline=None)
@given(shapes, keys)
def test_each_row_indexes_a_cell_of_its_own_row(shape, key):
    sketch = CountMinSketch(*shape)
    cells = sketch.indices(key)
    assert len(cells) == sketch.depth
    for row, cell in enumerate(cells):
        assert row * sketch.width <= cell < (row + 1) * sketch.width


@pytest.mark.parametrize("width", [64, 2048])
def test_error_stays_within_epsilon_n_with_probability_one_minus_delta(width):
    rnd = random.Random(20240605)
    # A skewed stream: a few heavy keys over a long tail, 100,000 requests.
    stream = [b"k%d" % min(int(rnd.paretovariate(0.7)), 30_000) for _ in range(100_000)]
    sketch = CountMinSketch(width, 4)
    truth = Counter(stream)
    for key in stream:
        sketch.add(key)
    bound = sketch.epsilon * len(stream)
    misses = sum(sketch.estimate(key) - n > bound for key, n in truth.items())
    assert misses / len(truth) <= sketch.delta


@settings(max_examples=40, deadline=None)
@given(shapes, streams)
def test_halving_halves_every_counter_and_every_estimate(shape, stream):
    sketch = CountMinSketch(*shape)
    for key, count in stream:
        sketch.add(key, count)
    before = list(sketch.counters)
    estimates = {key: sketch.estimate(key) for key, _ in stream}
    sketch.halve()
    assert list(sketch.counters) == [c // 2 for c in before]
    for key, estimate in estimates.items():
        assert sketch.estimate(key) == estimate // 2


def test_counters_saturate_instead_of_wrapping():
    sketch = CountMinSketch(16, 2)
    sketch.add(b"k", MAX_COUNT - 1)
    assert sketch.add(b"k", 5) == MAX_COUNT
    assert sketch.add(b"k") == MAX_COUNT


def test_default_sketch_is_4_by_2048_32_bit_counters_in_32_kib():
    sketch = CountMinSketch()
    assert (sketch.width, sketch.depth, sketch.counters.itemsize) == (2048, 4, 4)
    assert sketch.nbytes == 32 * 1024


# -- the top-k table ---------------------------------------------------------------------------

@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=1, max_value=10),
       st.lists(st.integers(min_value=0, max_value=10**6), unique=True, max_size=40),
       st.randoms())
def test_topk_keeps_the_largest_estimates_offered(capacity, estimates, rnd):
    table = TopK(capacity)
    offers = [(b"k%d" % e, e) for e in estimates]
    rnd.shuffle(offers)
    for key, estimate in offers:
        table.offer(key, estimate)
    largest = sorted(estimates, reverse=True)[:capacity]
    assert [e for _, e in table.items()] == largest


def test_topk_turns_away_a_newcomer_no_larger_than_its_smallest_entry():
    table = TopK(2)
    table.offer(b"a", 10)
    table.offer(b"b", 20)
    assert not table.offer(b"c", 10).admitted
    assert table.offer(b"d", 11) == (True, b"a", 10)
    assert set(table) == {b"b", b"d"}


def test_topk_eviction_sees_counts_incremented_in_place():
    table = TopK(2)
    table.offer(b"a", 10)
    table.offer(b"b", 20)
    table.counts[b"a"] += 15
    assert table.offer(b"c", 21) == (True, b"b", 20)
    assert set(table) == {b"a", b"c"}


def test_topk_keeps_the_count_of_a_key_offered_again():
    table = TopK(2)
    table.offer(b"a", 10)
    table.counts[b"a"] += 5
    assert table.offer(b"a", 11).admitted
    assert table.counts[b"a"] == 15


# -- the detector ------------------------------------------------------------------------------

def test_a_key_that_suddenly_takes_a_large_share_is_hot_after_one_window():
    clock = Clock()
    det = detector(clock)
    for _ in range(3):
        run_window(det, clock, {}, background=5000)
    events = run_window(det, clock, {b"hot": 150}, background=5000)  # 3% against 1%
    assert [(e.key, e.hot) for e in events] == [(b"hot", True)]
    assert det.observe(b"hot")


def test_a_key_that_becomes_hot_is_flagged_within_two_windows():
    clock = Clock()
    det = detector(clock)
    for _ in range(3):
        run_window(det, clock, {}, background=5000)
    flagged_after = None
    for window in (1, 2):
        run_window(det, clock, {b"warm": 75}, background=5000)  # 1.5% against 1%
        if det.is_hot(b"warm"):
            flagged_after = window
            break
    assert flagged_after is not None


def test_a_key_just_over_the_threshold_is_flagged_within_two_windows():
    # its decayed count still lags under the threshold after two windows (0.9x): it is
    # promoted on its own requests since it was admitted at 3/4 of the threshold
    clock = Clock()
    det = detector(clock)
    for _ in range(3):  # enough requests per window that 1.2x stands out from the noise
        run_window(det, clock, {}, background=50_000)
    run_window(det, clock, {b"warm": 600}, background=50_000)  # 1.2% against 1%
    assert not det.is_hot(b"warm")
    run_window(det, clock, {b"warm": 600}, background=50_000)
    assert det.is_hot(b"warm")


@pytest.mark.parametrize("count,background,windows", [
    (25, 5000, 8),  # 0.5% against 1%
    (450, 50_000, 10),  # 0.9%, just under: enough requests that the noise is small
])
def test_a_steady_key_under_the_threshold_is_never_hot(count, background, windows):
    clock = Clock()
    det = detector(clock)
    for _ in range(windows):
        run_window(det, clock, {b"cool": count}, background=background)
    assert not det.is_hot(b"cool")
    assert det.hot_keys() == []


def test_a_hot_key_hovering_around_the_threshold_does_not_flap():
    clock = Clock()
    det = detector(clock)
    events = []
    for window in range(12):
        share = 130 if window % 2 == 0 else 70  # 1.3% and 0.7% of 10,000
        events += run_window(det, clock, {b"hover": share}, background=10_000 - share)
    assert [(e.key, e.hot) for e in events] == [(b"hover", True)]


def test_a_hot_key_cools_only_after_cool_windows_consecutive_windows_under_half():
    clock = Clock()
    det = detector(clock, cool_windows=3)
    for _ in range(4):
        run_window(det, clock, {b"k": 500}, background=5000)
    assert det.is_hot(b"k")
    under_streak = 0
    for _ in range(10):
        # Read just before the window closes: the values the rollover will judge.
        for key in [b"bg:%d" % i for i in range(5000)]:
            det.observe(key)
        under = 2 * det.rate(b"k") <= det.threshold_rate
        under_streak = under_streak + 1 if under else 0
        clock.now += det.window
        events = det.tick()
        if under_streak < det.cool_windows:
            assert det.is_hot(b"k") and events == []
        else:
            assert [(e.key, e.hot) for e in events] == [(b"k", False)]
            assert not det.is_hot(b"k")
            return
    pytest.fail("the key never cooled")


def test_hot_keys_report_the_recent_rate_with_the_busiest_first():
    clock = Clock()
    det = detector(clock, window=2.0)
    for _ in range(10):
        run_window(det, clock, {b"a": 4000, b"b": 1000}, background=5000)
    a, b = det.hot_keys()
    assert (a.key, b.key) == (b"a", b"b")
    assert a.ops_per_sec == pytest.approx(2000, rel=0.01)  # 4000 per 2-second window
    assert b.ops_per_sec == pytest.approx(500, rel=0.01)
    assert a.since == 2.0


def test_sampling_one_in_n_scales_rates_back_to_all_requests():
    clock = Clock()
    det = detector(clock, sample_every=10, seed=1)
    for _ in range(8):
        run_window(det, clock, {b"a": 5000}, background=45_000)
    (hot,) = det.hot_keys()
    assert hot.key == b"a"
    assert hot.ops_per_sec == pytest.approx(5000, rel=0.1)
    assert det.total_rate == pytest.approx(50_000, rel=0.1)


def test_the_floor_keeps_a_quiet_proxy_free_of_hot_keys():
    clock = Clock()
    det = HotKeyDetector(floor_ops=100.0, clock=clock)
    for _ in range(5):
        run_window(det, clock, {b"only": 90})  # 100% of the traffic, but 90 ops/s
    assert not det.is_hot(b"only")


def test_hot_keys_cool_when_traffic_stops_and_ticks_resume_late():
    clock = Clock()
    det = detector(clock, floor_ops=10.0)
    for _ in range(4):
        run_window(det, clock, {b"k": 500}, background=5000)
    assert det.is_hot(b"k")
    clock.now += 40 * det.window  # no traffic, no tick, for 40 windows
    events = det.tick()
    assert [(e.key, e.hot) for e in events] == [(b"k", False)]
    assert det.rate(b"k") == 0


def test_tick_before_the_window_ends_changes_nothing():
    clock = Clock()
    det = detector(clock)
    for _ in range(300):
        det.observe(b"k")
    before = det.rate(b"k")
    clock.now += det.window / 2
    assert det.tick() == []
    assert det.rate(b"k") == before == 300 / (2 * det.window)


def test_subscribers_receive_the_transitions_tick_returns():
    clock = Clock()
    det = detector(clock)
    seen: list[HotKeyEvent] = []
    unsubscribe = det.subscribe(seen.append)
    returned = run_window(det, clock, {b"k": 500}, background=5000)
    assert seen == returned and [(e.key, e.hot) for e in seen] == [(b"k", True)]
    unsubscribe()
    for _ in range(8):
        run_window(det, clock, {}, background=5000)
    assert len(seen) == 1


def test_a_hot_key_pushed_out_of_a_full_table_stops_being_hot():
    clock = Clock()
    det = detector(clock, topk=2)
    run_window(det, clock, {b"a": 300, b"b": 400}, background=5000)
    assert det.is_hot(b"a") and det.is_hot(b"b")
    for _ in range(2000):
        det.observe(b"c")
    assert not det.is_hot(b"a") and det.is_hot(b"b")
    clock.now += det.window
    events = det.tick()
    assert [(e.key, e.hot) for e in events] == [(b"a", False), (b"c", True)]


def test_a_key_admitted_on_an_over_count_is_not_promoted_without_its_own_traffic():
    clock = Clock()
    det = detector(clock)
    # What the sketch would say of a cold key sharing every cell with much hotter keys.
    det.sketch.add(b"shadow", 10_000)
    for _ in range(4):
        run_window(det, clock, {b"shadow": 1, b"hot": 500}, background=5000)
        assert not det.is_hot(b"shadow")
    assert det.is_hot(b"hot")


def test_a_key_whose_traffic_keeps_up_after_an_over_count_is_promoted():
    clock = Clock()
    det = detector(clock)
    det.sketch.add(b"k", 10_000)
    events = run_window(det, clock, {b"k": 200}, background=5000)
    assert [(e.key, e.hot) for e in events] == [(b"k", True)]


def test_a_candidate_needs_requests_of_its_own_after_admission_to_be_promoted():
    clock = Clock()
    det = detector(clock, floor_ops=100.0)  # threshold: 200 requests in a first window
    run_window(det, clock, {b"k": 205})  # over the threshold, but 4 requests since admission
    assert not det.is_hot(b"k")
    run_window(det, clock, {b"k": 300})
    assert det.is_hot(b"k")
