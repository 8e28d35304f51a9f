"""twemproxy's distributions (ketama, modula) built into ringleader's Ring and Modula shapes.

The aim is zero data movement for a nutcracker user: for the same server list, every key must
map to the server nutcracker 0.5.0 sends it to. What that takes, beyond the obvious:

* **Server order.** nutcracker sorts a pool's servers by name (shorter name first, then byte
  order) while checking for duplicates, and numbers them in that order. The order decides
  modula's slots and which of two equal ketama points comes first, so both are built in that
  order here; the owner stored is still the index into the caller's ``nodes`` (config order).
* **Server name.** The name given after the weight, else ``host:port`` as written, else (port
  11211, for libmemcached's sake) just ``host``. The weight is never part of it.
* **Ketama points.** A server of weight ``w`` out of a total ``W`` among ``n`` servers gets
  ``floor(w / W * 160 / 4 * n) * 4`` points, computed in single-precision floats as the C code
  does (equal weights do not always give exactly 160). Its ``i``-th group of four points is the
  MD5 of ``"<name>-<i>"`` (cut to 272 bytes) read as four little-endian 32-bit numbers.
* **Ties.** The points are sorted with glibc's ``qsort``, a stable merge sort, so among equal
  points the server earlier in nutcracker's order comes first, and a lookup takes the first point
  ``>=`` the hash: that server wins. Hashes above the last point wrap to the first.
* **Modula.** One slot per unit of weight, in server order; key goes to ``slots[hash % len]``.
* **Random** sends each request to a random server, so a key has no home to reproduce.

Ejected hosts (``auto_eject_hosts: true``) make nutcracker rebuild without the dead servers;
these builders describe the pool with every server live.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

from .hashkit import ketama_points_of
from .nodes import NodeSpec
from .ring import Modula, Ring

__all__ = [
    "DISTRIBUTIONS",
    "build_distribution",
    "build_ketama",
    "build_modula",
    "ketama_point_count",
    "server_order",
    "twemproxy_name",
]

KETAMA_POINTS_PER_SERVER = 160
KETAMA_POINTS_PER_HASH = 4
#: nutcracker formats each point string into a 273-byte buffer, NUL included.
KETAMA_MAX_POINT_TEXT = 272
#: For this port (memcached's), libmemcached left the port out of the name; nutcracker follows.
KETAMA_DEFAULT_PORT = 11211

DISTRIBUTIONS = ("ketama", "modula", "random")


def twemproxy_name(node: NodeSpec) -> bytes:
    """The bytes nutcracker knows a server by: what ketama hashes and what orders servers."""
    if node.name:
        return node.name.encode()
    if node.port == KETAMA_DEFAULT_PORT:
        return node.host.encode()
    return node.address.encode()


def server_order(nodes: Sequence[NodeSpec]) -> list[int]:
    """Indices into ``nodes`` in the order nutcracker numbers the servers (by name length,
    then bytes); refuses what nutcracker refuses: no servers, two servers with one name."""
    if not nodes:
        raise ValueError("a twemproxy pool needs at least one server")
    names = [twemproxy_name(node) for node in nodes]
    order = sorted(range(len(nodes)), key=lambda i: (len(names[i]), names[i]))
    for before, after in zip(order, order[1:], strict=False):
        if names[before] == names[after]:
            raise ValueError(
                f"servers {nodes[before].address} and {nodes[after].address} share the name "
                f"{names[before].decode(errors='replace')!r}; twemproxy refuses duplicate names"
            )
    for node in nodes:
        if node.weight < 1:
            raise ValueError(f"server {node.address} has weight {node.weight}: it must be >= 1")
    return order


def _f32(x: float) -> float:
    """Round to the nearest single-precision float, as each C ``float`` operation does."""
    return struct.unpack("f", struct.pack("f", x))[0]


def ketama_point_count(weight: int, total_weight: int, servers: int) -> int:
    """Points nutcracker gives one server; float32 arithmetic, step by step, as in C."""
    share = _f32(_f32(weight) / _f32(total_weight))
    scaled = _f32(_f32(_f32(share * KETAMA_POINTS_PER_SERVER) / 4) * _f32(servers))
    # The tiny addend is done in double, then floorf takes the sum back to float.
    groups = math.floor(_f32(scaled + 0.0000000001))
    return int(groups) * KETAMA_POINTS_PER_HASH


def build_ketama(nodes: Sequence[NodeSpec]) -> Ring:
    """The ketama continuum nutcracker builds for ``nodes`` (all live), as a Ring whose owners
    index ``nodes``."""
    order = server_order(nodes)
    total = sum(node.weight for node in nodes)
    points: list[tuple[int, int]] = []
    for index in order:
        node = nodes[index]
        name = twemproxy_name(node)
        groups = ketama_point_count(node.weight, total, len(nodes)) // KETAMA_POINTS_PER_HASH
        for group in range(groups):
            text = b"%s-%d" % (name, group)
            for value in ketama_points_of(text[:KETAMA_MAX_POINT_TEXT]):
                points.append((value, index))
    # list.sort is stable, like glibc's merge-sort qsort: equal points keep server order.
    points.sort(key=lambda point: point[0])
    return Ring([value for value, _ in points], [owner for _, owner in points])


#: A bound on modula's table (one slot per unit of weight): far above any real pool, low
#: enough that a typo'd weight fails clearly instead of exhausting memory.
MODULA_MAX_SLOTS = 1 << 22


def build_modula(nodes: Sequence[NodeSpec]) -> Modula:
    """nutcracker's modula table: each server repeated ``weight`` times, in server order."""
    total = sum(node.weight for node in nodes)
    if total > MODULA_MAX_SLOTS:
        raise ValueError(f"modula over a total weight of {total} needs a slot per unit of "
                         f"weight; at most {MODULA_MAX_SLOTS} are supported")
    return Modula([index for index in server_order(nodes) for _ in range(nodes[index].weight)])


def build_distribution(name: str, nodes: Sequence[NodeSpec]) -> Ring | Modula:
    """The distribution twemproxy calls ``name`` over ``nodes``."""
    if name == "ketama":
        return build_ketama(nodes)
    if name == "modula":
        return build_modula(nodes)
    if name == "random":
        raise ValueError(
            "distribution 'random' cannot be supported: nutcracker sends every request to a "
            "server picked at random, so a key has no fixed server, data written through it "
            "cannot be found again by any placement, and ringleader only places keys "
            "deterministically; use 'ketama' or 'modula'"
        )
    raise ValueError(f"unknown distribution {name!r}: twemproxy's are ketama, modula, random "
                     "(ringleader supports ketama and modula)")
