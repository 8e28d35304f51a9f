"""Sessions hand whole batches to the hot-key service, which counts the keys of the requests
the detector's sampling picks: the same requests a per-request countdown would pick."""

from __future__ import annotations

import random

from hotkeys.rules import HotKeySettings
from router.commands import CommandTable
from router.hot import HotKeyService


class Server:
    """What the service needs of the proxy to count keys."""

    table = CommandTable.default()

    def hot_routes_changed(self) -> None:  # pragma: no cover - no key turns hot here
        pass


def service(sample_every: int) -> HotKeyService:
    return HotKeyService(HotKeySettings(enabled=True, sample_every=sample_every), Server())


def batches(requests: list[list[bytes]], seed: int = 1) -> list[list[list[bytes]]]:
    rnd = random.Random(seed)
    out, i = [], 0
    while i < len(requests):
        size = rnd.randint(1, 20)
        out.append(requests[i:i + size])
        i += size
    return out


def test_without_sampling_every_key_of_every_request_is_counted():
    hot = service(1)
    hot.sample([[b"GET", b"a"], [b"SET", b"b", b"1"], [b"MGET", b"c", b"d"], [b"PING"],
                [b"OBJECT", b"ENCODING", b"e"]])
    assert hot.detector._total == 5  # a, b, c, d, e; PING names no key


def test_a_batch_is_sampled_exactly_as_request_by_request():
    requests = [[b"GET", b"key:%d" % i] for i in range(20_000)]
    one_by_one, batched = service(8), service(8)
    batched.detector._gaps = list(one_by_one.detector._gaps)  # the same draws for both
    batched.detector.countdown = one_by_one.detector.countdown
    for args in requests:
        one_by_one.detector.observe(args[1])
    for batch in batches(requests):
        batched.sample(batch)
    assert batched.detector._total == one_by_one.detector._total
    assert batched.detector.sketch.counters == one_by_one.detector.sketch.counters


def test_about_one_request_in_n_is_counted():
    hot = service(8)
    for batch in batches([[b"GET", b"k:%d" % i] for i in range(80_000)], seed=2):
        hot.sample(batch)
    assert 9_000 <= hot.detector._total <= 11_000


def test_malformed_requests_count_nothing_and_raise_nothing():
    hot = service(1)
    hot.sample([[b"GET"], [b"EVAL", b"return 1", b"notanumber"], [b"NOSUCHCOMMAND", b"k"]])
    assert hot.detector._total == 0


def test_requests_with_nested_arrays_count_nothing_and_raise_nothing():
    hot = service(1)
    hot.sample([[[b"GET"], b"k"], [b"GET", [b"x"]], [b"MSET", [b"a"], b"1"], []])
    assert hot.detector._total == 0
