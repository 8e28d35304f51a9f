"""Key hashes by name: twemproxy's twelve, bit for bit, plus ringleader's own xxh3.

A twemproxy user switching to ringleader must find every key where nutcracker put it, so each
function here returns exactly the unsigned 32-bit number nutcracker 0.5.0 (an x86-64 build)
compares on its continuum, quirks included:

* twemproxy never hashes an empty key: it compares 0. Every twemproxy function here does the
  same, so a caller needs no special case (``xxh3`` is ringleader's and hashes ``b""``).
* ``fnv1_64`` and ``fnv1a_64`` keep only the low 32 bits of the 64-bit hash, which is the same
  as a 32-bit FNV that starts from the low half of the 64-bit offset basis.
* ``crc32`` is libmemcached's: bits 16..30 of the CRC-32, so it only ranges over 0..32767;
  ``crc32a`` is the whole standard CRC-32 (the one zlib computes).
* ``crc16`` is CRC-16/XMODEM, but the running value is kept in 32 bits and never masked, so
  the result carries the high bytes of two earlier steps above the 16-bit CRC.
* C's ``char`` is signed on x86-64, and several hashes widen a key byte straight from it:
  ``fnv1_32``, ``fnv1a_32``, ``fnv1_64``, ``fnv1a_64`` and ``one_at_a_time`` mix bytes 0x80..0xff
  in as ``0xffffff80..0xffffffff``, and ``hsieh`` does so for the third byte of a 3-byte tail.
  (An ARM build of nutcracker, where ``char`` is unsigned, places non-ASCII keys differently.)
* ``murmur`` is libmemcached's MurmurHash2 with seed ``0xdeadbeef * len(key)``; ``jenkins`` is
  Bob Jenkins' lookup3 ``hashlittle`` with initial value 13; ``md5`` is the first four digest
  bytes read little-endian.

All are pure Python, using hashlib, zlib and binascii where those compute the same thing.
"""

from __future__ import annotations

import struct
import zlib
from binascii import crc_hqx
from collections.abc import Callable
from hashlib import md5 as _md5

import xxhash

__all__ = ["HASH_FUNCTIONS", "TWEMPROXY_HASHES", "get_hash", "ketama_points_of"]

_M32 = 0xFFFFFFFF

#: A key byte as a signed C ``char`` widened to 32 bits (x86-64): 0x80 -> 0xffffff80.
_SIGNED = tuple(b | 0xFFFFFF00 if b & 0x80 else b for b in range(256))

_FNV32_BASIS = 0x811C9DC5
_FNV32_PRIME = 0x01000193
# Only the low 32 bits of a 64-bit FNV product survive the final truncation, and those depend
# only on the low 32 bits of both factors: basis and prime shrink to their low halves.
_FNV64_BASIS_LOW = 0xCBF29CE484222325 & _M32
_FNV64_PRIME_LOW = 0x100000001B3 & _M32


def _fnv1(key: bytes, h: int, prime: int) -> int:
    if key.isascii():
        for b in key:
            h = ((h * prime) & _M32) ^ b
    else:
        signed = _SIGNED
        for b in key:
            h = ((h * prime) & _M32) ^ signed[b]
    return h


def _fnv1a(key: bytes, h: int, prime: int) -> int:
    if key.isascii():
        for b in key:
            h = ((h ^ b) * prime) & _M32
    else:
        signed = _SIGNED
        for b in key:
            h = ((h ^ signed[b]) * prime) & _M32
    return h


def fnv1_32(key: bytes) -> int:
    return _fnv1(key, _FNV32_BASIS, _FNV32_PRIME) if key else 0


def fnv1a_32(key: bytes) -> int:
    return _fnv1a(key, _FNV32_BASIS, _FNV32_PRIME) if key else 0


def fnv1_64(key: bytes) -> int:
    return _fnv1(key, _FNV64_BASIS_LOW, _FNV64_PRIME_LOW) if key else 0


def fnv1a_64(key: bytes) -> int:
    return _fnv1a(key, _FNV64_BASIS_LOW, _FNV64_PRIME_LOW) if key else 0


def md5(key: bytes) -> int:
    return int.from_bytes(_md5(key).digest()[:4], "little") if key else 0


def crc16(key: bytes) -> int:
    # The low 16 bits are CRC-16/XMODEM (binascii.crc_hqx from 0). Each step shifts the
    # unmasked 32-bit value left by 8, so bits 16..23 hold the high byte of the CRC one byte
    # earlier and bits 24..31 the high byte of the CRC two bytes earlier.
    n = len(key)
    if n < 2:
        return crc_hqx(key, 0)
    before2 = crc_hqx(key[:-2], 0)
    before1 = crc_hqx(key[-2:-1], before2)
    last = crc_hqx(key[-1:], before1)
    return ((before2 >> 8) << 24) | ((before1 >> 8) << 16) | last


def crc32(key: bytes) -> int:
    return (zlib.crc32(key) >> 16) & 0x7FFF


def crc32a(key: bytes) -> int:
    return zlib.crc32(key)


def one_at_a_time(key: bytes) -> int:
    if not key:
        return 0
    h = 0
    # value += byte; value += value << 10 is one multiplication by 1025
    if key.isascii():
        for b in key:
            h = ((h + b) * 1025) & _M32
            h ^= h >> 6
    else:
        signed = _SIGNED
        for b in key:
            h = ((h + signed[b]) * 1025) & _M32
            h ^= h >> 6
    h = (h * 9) & _M32
    h ^= h >> 11
    return (h * 32769) & _M32


def hsieh(key: bytes) -> int:
    n = len(key)
    if not n:
        return 0
    rem = n & 3
    body = n - rem
    h = 0
    words = struct.unpack_from(f"<{body >> 1}H", key)
    for i in range(0, len(words), 2):
        h = (h + words[i]) & _M32
        tmp = (words[i + 1] << 11) ^ h
        h = ((h << 16) & _M32) ^ tmp
        h = (h + (h >> 11)) & _M32
    if rem == 3:
        h = (h + (key[body] | key[body + 1] << 8)) & _M32
        h ^= (h << 16) & _M32
        h ^= (_SIGNED[key[body + 2]] << 18) & _M32
        h = (h + (h >> 11)) & _M32
    elif rem == 2:
        h = (h + (key[body] | key[body + 1] << 8)) & _M32
        h ^= (h << 11) & _M32
        h = (h + (h >> 17)) & _M32
    elif rem == 1:
        h = (h + key[body]) & _M32
        h ^= (h << 10) & _M32
        h = (h + (h >> 1)) & _M32
    h ^= (h << 3) & _M32
    h = (h + (h >> 5)) & _M32
    h ^= (h << 4) & _M32
    h = (h + (h >> 17)) & _M32
    h ^= (h << 25) & _M32
    return (h + (h >> 6)) & _M32


_MURMUR_M = 0x5BD1E995


def _murmur2(key: bytes, seed: int) -> int:
    """Austin Appleby's MurmurHash2 (little-endian reads); the seed is a parameter so the
    SMHasher verification value can check it."""
    n = len(key)
    m = _MURMUR_M
    h = (seed ^ n) & _M32
    blocks = n >> 2
    for k in struct.unpack_from(f"<{blocks}I", key):
        k = (k * m) & _M32
        k ^= k >> 24
        k = (k * m) & _M32
        h = ((h * m) & _M32) ^ k
    tail = n & 3
    if tail:
        i = blocks << 2
        if tail == 3:
            h ^= key[i + 2] << 16
        if tail >= 2:
            h ^= key[i + 1] << 8
        h = ((h ^ key[i]) * m) & _M32
    h ^= h >> 13
    h = (h * m) & _M32
    return h ^ (h >> 15)


def murmur(key: bytes) -> int:
    return _murmur2(key, 0xDEADBEEF * len(key)) if key else 0


def _lookup3(key: bytes, initval: int) -> int:
    """Bob Jenkins' lookup3 ``hashlittle``; ``initval`` is a parameter so the published
    test vectors (initial values 0 and 1) can check it."""
    n = len(key)
    a = b = c = (0xDEADBEEF + n + initval) & _M32
    if not n:
        return c
    # Reading a short last block as if zero-padded to 12 bytes is what hashlittle's tail
    # switch amounts to on a little-endian machine.
    words = struct.unpack(f"<{(n + 11) // 12 * 3}I", key + bytes(-n % 12))
    last = len(words) - 3
    for i in range(0, last, 3):
        a = (a + words[i]) & _M32
        b = (b + words[i + 1]) & _M32
        c = (c + words[i + 2]) & _M32
        a = ((a - c) & _M32) ^ ((c << 4) & _M32 | c >> 28)
        c = (c + b) & _M32
        b = ((b - a) & _M32) ^ ((a << 6) & _M32 | a >> 26)
        a = (a + c) & _M32
        c = ((c - b) & _M32) ^ ((b << 8) & _M32 | b >> 24)
        b = (b + a) & _M32
        a = ((a - c) & _M32) ^ ((c << 16) & _M32 | c >> 16)
        c = (c + b) & _M32
        b = ((b - a) & _M32) ^ ((a << 19) & _M32 | a >> 13)
        a = (a + c) & _M32
        c = ((c - b) & _M32) ^ ((b << 4) & _M32 | b >> 28)
        b = (b + a) & _M32
    a = (a + words[last]) & _M32
    b = (b + words[last + 1]) & _M32
    c = (c + words[last + 2]) & _M32
    c = ((c ^ b) - ((b << 14) & _M32 | b >> 18)) & _M32
    a = ((a ^ c) - ((c << 11) & _M32 | c >> 21)) & _M32
    b = ((b ^ a) - ((a << 25) & _M32 | a >> 7)) & _M32
    c = ((c ^ b) - ((b << 16) & _M32 | b >> 16)) & _M32
    a = ((a ^ c) - ((c << 4) & _M32 | c >> 28)) & _M32
    b = ((b ^ a) - ((a << 14) & _M32 | a >> 18)) & _M32
    return ((c ^ b) - ((b << 24) & _M32 | b >> 8)) & _M32


def jenkins(key: bytes) -> int:
    return _lookup3(key, 13) if key else 0


#: ringleader's default: the C function itself, with no Python frame around it (it runs for
#: every key of every request).
xxh3: Callable[[bytes], int] = xxhash.xxh3_64_intdigest


def ketama_points_of(text: bytes) -> tuple[int, int, int, int]:
    """The four continuum points one ketama string yields: the MD5 digest read as four
    little-endian 32-bit numbers (point 0 is what the ``md5`` key hash compares)."""
    return struct.unpack("<4I", _md5(text).digest())


#: twemproxy's hash names, in the order its configuration documents them.
TWEMPROXY_HASHES: dict[str, Callable[[bytes], int]] = {
    "one_at_a_time": one_at_a_time,
    "md5": md5,
    "crc16": crc16,
    "crc32": crc32,
    "crc32a": crc32a,
    "fnv1_64": fnv1_64,
    "fnv1a_64": fnv1a_64,
    "fnv1_32": fnv1_32,
    "fnv1a_32": fnv1a_32,
    "hsieh": hsieh,
    "murmur": murmur,
    "jenkins": jenkins,
}

#: Every key hash ringleader knows: twemproxy's twelve and ``xxh3`` (64-bit, the default).
HASH_FUNCTIONS: dict[str, Callable[[bytes], int]] = {**TWEMPROXY_HASHES, "xxh3": xxh3}


def get_hash(name: str) -> Callable[[bytes], int]:
    """The hash called ``name``; a config typo gets the list of valid names, not a KeyError."""
    try:
        return HASH_FUNCTIONS[name]
    except KeyError:
        valid = ", ".join(sorted(HASH_FUNCTIONS))
        raise ValueError(f"unknown hash {name!r}: valid hashes are {valid}") from None
