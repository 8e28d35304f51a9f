"""Which mitigation a hot key gets, per key pattern (sans-I/O).

- ``cache`` (the default): reads served from the proxy's near cache for a short TTL;
- ``replicate``: copies of a hot read key on other nodes, reads spread over the owner and
  the copies; a write drops the copies first (reads go back to the owner at once), and they
  are made again at the next window if the key is still hot;
- ``split``: a counter (a string used with the INCR family, or a hash used with HINCRBY /
  HINCRBYFLOAT) spread over sub-keys on several nodes (opt-in: a read of the sum is not
  atomic; an increment replies the total as this proxy last saw each part);
- ``none``: detected and reported only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fnmatch import translate

MITIGATIONS = ("cache", "replicate", "split", "none")


@dataclass(frozen=True)
class HotKeySettings:
    enabled: bool = False
    threshold: float = 0.001  # share of the window's operations
    floor_ops: float = 10.0  # and at least this many ops/s
    window_ms: int = 1000
    #: Count 1 request in N (estimates scaled by N). The proxy pays the sketch's ~0.6 µs on
    #: 1 request in 8 by default; keys far over the threshold (the ones that load a node)
    #: are still found within a window or two. 1 gives the most exact detection.
    sample_every: int = 8
    topk: int = 128
    cool_windows: int = 3
    cache_ttl_ms: int = 100
    cache_max_entries: int = 10_000
    cache_max_bytes: int = 64 * 1024 * 1024
    mitigation: str = "cache"  # for keys no rule matches
    split: int = 4  # sub-keys of a split counter
    copies: int = 2  # copies of a replicated key
    rules: tuple[dict, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.mitigation not in MITIGATIONS:
            raise ValueError(f"hotkeys.mitigation must be one of {', '.join(MITIGATIONS)}")
        for rule in self.rules:
            unknown = set(rule) - {"pattern", "mitigation", "split", "copies"}
            if "pattern" not in rule or unknown:
                raise ValueError("each [[hotkeys.rules]] needs a pattern and may set "
                                 "mitigation, split and copies")
            if rule.get("mitigation", self.mitigation) not in MITIGATIONS:
                raise ValueError(f"hotkeys rule {rule['pattern']!r}: mitigation must be one of "
                                 f"{', '.join(MITIGATIONS)}")


@dataclass(frozen=True)
class Mitigation:
    kind: str
    split: int = 4
    copies: int = 2


class HotKeyRules:
    """First matching pattern wins; otherwise the default mitigation."""

    def __init__(self, settings: HotKeySettings) -> None:
        self.default = Mitigation(settings.mitigation, settings.split, settings.copies)
        self._rules = [(re.compile(translate(r["pattern"]).encode()),
                        Mitigation(r.get("mitigation", settings.mitigation),
                                   int(r.get("split", settings.split)),
                                   int(r.get("copies", settings.copies))))
                       for r in settings.rules]

    def all(self) -> list[Mitigation]:
        return [self.default, *(m for _, m in self._rules)]

    def for_key(self, key: bytes) -> Mitigation:
        for regex, mitigation in self._rules:
            if regex.match(key):
                return mitigation
        return self.default
