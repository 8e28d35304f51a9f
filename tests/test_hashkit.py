"""The key hashes: twemproxy's twelve must return exactly what nutcracker compares.

Expected values come from independent sources where one exists (the FNV, CRC, MD5, lookup3,
SMHasher and one-at-a-time reference vectors, or a textbook implementation written here), and
otherwise from nutcracker 0.5.0's own hash code compiled on x86-64, which is where the quirks
(truncation, signed ``char``, the unmasked CRC-16) show.
"""

from __future__ import annotations

import struct
import zlib
from hashlib import md5 as md5_digest

import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from router import hashkit
from router.hashkit import HASH_FUNCTIONS, TWEMPROXY_HASHES, get_hash

TWEMPROXY_NAMES = [
    "one_at_a_time", "md5", "crc16", "crc32", "crc32a", "fnv1_64", "fnv1a_64", "fnv1_32",
    "fnv1a_32", "hsieh", "murmur", "jenkins",
]
M32 = 0xFFFFFFFF

# --- textbook references, written from the algorithms' specifications -------------------


def textbook_fnv(key: bytes, bits: int, variant_a: bool, signed_bytes: bool = False) -> int:
    basis, prime = {32: (0x811C9DC5, 0x01000193),
                    64: (0xCBF29CE484222325, 0x100000001B3)}[bits]
    mask = (1 << bits) - 1
    h = basis
    for b in key:
        octet = (b - 256) & mask if signed_bytes and b >= 0x80 else b
        if variant_a:
            h = ((h ^ octet) * prime) & mask
        else:
            h = ((h * prime) & mask) ^ octet
    return h


def textbook_crc16_xmodem(key: bytes) -> int:
    crc = 0
    for b in key:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def textbook_one_at_a_time(key: bytes) -> int:
    h = 0
    for b in key:
        h = (h + b) & M32
        h = (h + (h << 10)) & M32
        h ^= h >> 6
    h = (h + (h << 3)) & M32
    h ^= h >> 11
    return (h + (h << 15)) & M32


# --- the registry --------------------------------------------------------------------------


def test_registry_has_twemproxys_twelve_hashes_and_xxh3():
    assert sorted(TWEMPROXY_HASHES) == sorted(TWEMPROXY_NAMES)
    assert sorted(HASH_FUNCTIONS) == sorted([*TWEMPROXY_NAMES, "xxh3"])


def test_get_hash_returns_the_named_function():
    assert get_hash("fnv1a_64") is HASH_FUNCTIONS["fnv1a_64"]


def test_get_hash_of_an_unknown_name_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown hash 'fnv1a'") as info:
        get_hash("fnv1a")
    for name in HASH_FUNCTIONS:
        assert name in str(info.value)


def test_xxh3_is_ringleaders_64_bit_default():
    assert HASH_FUNCTIONS["xxh3"](b"user:1") == xxhash.xxh3_64_intdigest(b"user:1")


# --- published reference vectors ----------------------------------------------------------


@pytest.mark.parametrize(("name", "key", "expected"), [
    # FNV test vectors (isthe.com/chongo/tech/comp/fnv); the 64-bit ones keep the low half.
    ("fnv1_32", b"a", 0x050C5D7E),
    ("fnv1a_32", b"a", 0xE40C292C),
    ("fnv1_32", b"foobar", 0x31F0B262),
    ("fnv1a_32", b"foobar", 0xBF9CF968),
    ("fnv1_64", b"a", 0xAF63BD4C8601B7BE & M32),
    ("fnv1a_64", b"a", 0xAF63DC4C8601EC8C & M32),
    ("fnv1_64", b"foobar", 0x340D8765A4DDA9C2 & M32),
    ("fnv1a_64", b"foobar", 0x85944171F73967E8 & M32),
    # CRC-32 check value, and libmemcached's crc32 = its bits 16..30.
    ("crc32a", b"123456789", 0xCBF43926),
    ("crc32", b"123456789", (0xCBF43926 >> 16) & 0x7FFF),
    # RFC 1321: MD5("abc") = 900150983cd24fb0..., first four bytes little-endian.
    ("md5", b"abc", 0x98500190),
    # Bob Jenkins' one-at-a-time, as published with the algorithm.
    ("one_at_a_time", b"a", 0xCA2E9442),
    ("one_at_a_time", b"The quick brown fox jumps over the lazy dog", 0x519E91F5),
])
def test_published_test_vector(name: str, key: bytes, expected: int):
    assert HASH_FUNCTIONS[name](key) == expected


def test_crc16_low_half_is_the_crc16_xmodem_check_value():
    assert HASH_FUNCTIONS["crc16"](b"123456789") & 0xFFFF == 0x31C3


@pytest.mark.parametrize(("key", "initval", "expected"), [
    # lookup3.c's driver5 self-test
    (b"", 0, 0xDEADBEEF),
    (b"", 0xDEADBEEF, 0xBD5B7DDE),
    (b"Four score and seven years ago", 0, 0x17770551),
    (b"Four score and seven years ago", 1, 0xCD628161),
])
def test_jenkins_is_lookup3_hashlittle(key: bytes, initval: int, expected: int):
    assert hashkit._lookup3(key, initval) == expected


def test_jenkins_is_lookup3_with_initial_value_13():
    key = b"Four score and seven years ago"
    assert HASH_FUNCTIONS["jenkins"](key) == hashkit._lookup3(key, 13)


def test_murmur_core_passes_smhasher_verification_of_murmurhash2():
    # SMHasher: hash keys 0..i-1 with seed 256-i, then hash the 256 results with seed 0.
    key = bytes(range(256))
    results = b"".join(struct.pack("<I", hashkit._murmur2(key[:i], 256 - i)) for i in range(256))
    assert hashkit._murmur2(results, 0) == 0x27864C1E


def test_murmur_seeds_with_deadbeef_times_length_as_libmemcached():
    key = b"user:1000"
    assert HASH_FUNCTIONS["murmur"](key) == hashkit._murmur2(key, (0xDEADBEEF * len(key)) & M32)


# --- nutcracker 0.5.0's own outputs (x86-64) -------------------------------------------------

NUTCRACKER_OUTPUTS = {
    # key: one_at_a_time md5 crc16 crc32 crc32a fnv1_64 fnv1a_64 fnv1_32 fnv1a_32 hsieh murmur jenkins
    b"123456789": (0xC66B58C5, 0x94E7F925, 0x869031C3, 0x00004BF4, 0xCBF43926, 0x2BF916D6,
                   0x23C6CDFC, 0x24148816, 0xBB86B11C, 0xE4FC1670, 0xB7760690, 0x19777AF6),
    b"foo": (0x238678DD, 0xDB18BDAC, 0x0C3CAF96, 0x00000C73, 0x8C736521, 0x6BA13533,
             0xFED9D577, 0x408F5E13, 0xA9F37ED7, 0x76D4D427, 0xC4E0338F, 0x99F84F99),
    b"user:1000": (0xB563B74F, 0x2E986207, 0xE1644671, 0x00001F74, 0x9F7417E3, 0xD39E3D21,
                   0xAE7B4289, 0xA6AFFCA1, 0x507C1D89, 0xDDEC1969, 0x8E24AEC7, 0x048C4D84),
    "été".encode(): (0x7FCB4B35, 0x1E6AAFDE, 0xE626A767, 0x000044D1, 0x44D16CD4, 0xEE202E17,
                     0xEA769C57, 0xBEBB7C97, 0x0BEEA017, 0xCC955977, 0xDA710ACB, 0x89466C13),
    b"ab\xff": (0x0603D118, 0x82ABBD74, 0x7C74DFE3, 0x00004C9D, 0xCC9D9EAD, 0x94505257,
                0xFABE022F, 0xBC63D0D7, 0xC3B7E16F, 0x75DC9FD6, 0xEC9082B2, 0xE9AF676B),
}


@pytest.mark.parametrize("key", list(NUTCRACKER_OUTPUTS), ids=repr)
@pytest.mark.parametrize("name", TWEMPROXY_NAMES)
def test_hash_equals_nutcrackers_output(name: str, key: bytes):
    expected = NUTCRACKER_OUTPUTS[key][TWEMPROXY_NAMES.index(name)]
    assert HASH_FUNCTIONS[name](key) == expected


#: A 40-byte key with ASCII, bytes above 0x7f and a NUL; every prefix of it is hashed, so
#: every tail length and block boundary of every hash is covered.
PREFIX_SOURCE = bytes.fromhex(
    "4142434445464748494a4b4c4d4e4f505152535480ffe97f00c3a0a1a2a3a4a5a6a7a8a9aaabacad")

#: MD5 of the 40 outputs (little-endian uint32) of nutcracker's code for prefixes 1..40.
NUTCRACKER_PREFIX_DIGESTS = {
    "one_at_a_time": "389cb2423219274f69ecf5a0fd0a7c78",
    "md5": "d48e74e2410c46b41fd84f967c420643",
    "crc16": "56da003551644ed1c07b536f7957584f",
    "crc32": "ad9f98ead28a5ead4abe55f213044453",
    "crc32a": "d9e0f6ddd434267c25be753dece85ec1",
    "fnv1_64": "f97f5204b51220716749351b7c2bda8a",
    "fnv1a_64": "ed66cea800b511cf5e010ca3438e1089",
    "fnv1_32": "4f7c988eed9ee908e71c078ca77f72d6",
    "fnv1a_32": "760865b29ff1c67e76e381bfdf36faf9",
    "hsieh": "dbbb94f065f40b892f17a41e3404ea44",
    "murmur": "e68a48e4877851827cd3f398663ba9f6",
    "jenkins": "0c4b14a57fbb44aa154d39bd2ecaf661",
}


@pytest.mark.parametrize("name", TWEMPROXY_NAMES)
def test_hash_of_every_prefix_length_equals_nutcrackers(name: str):
    outputs = [HASH_FUNCTIONS[name](PREFIX_SOURCE[:n]) for n in range(1, 41)]
    digest = md5_digest(struct.pack("<40I", *outputs)).hexdigest()
    assert digest == NUTCRACKER_PREFIX_DIGESTS[name]


# --- quirks --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TWEMPROXY_NAMES)
def test_empty_key_hashes_to_zero_as_twemproxy_compares_it(name: str):
    assert HASH_FUNCTIONS[name](b"") == 0


def test_crc16_keeps_the_high_bytes_of_earlier_steps_above_the_crc():
    # bits 16..23: high byte of the CRC one byte earlier; bits 24..31: two bytes earlier
    key = b"123456789"
    one_before = textbook_crc16_xmodem(key[:-1])
    two_before = textbook_crc16_xmodem(key[:-2])
    assert HASH_FUNCTIONS["crc16"](key) == (
        (two_before >> 8) << 24 | (one_before >> 8) << 16 | textbook_crc16_xmodem(key))


def test_fnv_mixes_bytes_above_0x7f_in_as_signed_chars():
    key = "été".encode()
    assert HASH_FUNCTIONS["fnv1a_32"](key) != textbook_fnv(key, 32, variant_a=True)
    assert HASH_FUNCTIONS["fnv1a_32"](key) == textbook_fnv(key, 32, True, signed_bytes=True)


def test_one_at_a_time_mixes_bytes_above_0x7f_in_as_signed_chars():
    assert HASH_FUNCTIONS["one_at_a_time"](b"\xe9") != textbook_one_at_a_time(b"\xe9")


def test_hsieh_sign_extends_only_the_third_byte_of_a_three_byte_tail():
    # Same bytes, different position: only a tail byte at offset 2 of a 3-byte tail is signed.
    assert HASH_FUNCTIONS["hsieh"](b"ab\xff") == 0x75DC9FD6
    assert HASH_FUNCTIONS["hsieh"](b"a\xffb") == 0x7154DF9E


# --- properties ----------------------------------------------------------------------------

keys = st.binary(max_size=80)


@pytest.mark.parametrize("name", TWEMPROXY_NAMES)
@given(key=keys)
def test_twemproxy_hash_is_deterministic_and_32_bit(name: str, key: bytes):
    h = HASH_FUNCTIONS[name](key)
    assert h == HASH_FUNCTIONS[name](bytes(key))
    assert 0 <= h <= M32


@given(key=keys)
def test_crc32_is_bits_16_to_30_of_crc32a(key: bytes):
    assert HASH_FUNCTIONS["crc32"](key) == (HASH_FUNCTIONS["crc32a"](key) >> 16) & 0x7FFF
    assert HASH_FUNCTIONS["crc32"](key) < 1 << 15


@given(key=keys)
def test_crc32a_is_the_standard_crc32(key: bytes):
    assert HASH_FUNCTIONS["crc32a"](key) == zlib.crc32(key)


@given(key=keys)
def test_crc16_low_half_is_crc16_xmodem(key: bytes):
    assert HASH_FUNCTIONS["crc16"](key) & 0xFFFF == textbook_crc16_xmodem(key)


@pytest.mark.parametrize(("name", "bits", "variant_a"), [
    ("fnv1_32", 32, False), ("fnv1a_32", 32, True), ("fnv1_64", 64, False),
    ("fnv1a_64", 64, True),
])
@given(key=keys.filter(bool))
def test_fnv_is_textbook_fnv_over_signed_bytes_truncated_to_32_bits(
        name: str, bits: int, variant_a: bool, key: bytes):
    expected = textbook_fnv(key, bits, variant_a, signed_bytes=True) & M32
    assert HASH_FUNCTIONS[name](key) == expected


@given(key=st.text(alphabet=st.characters(max_codepoint=127), min_size=1).map(str.encode))
def test_fnv_of_ascii_keys_is_plain_fnv(key: bytes):
    assert HASH_FUNCTIONS["fnv1a_64"](key) == textbook_fnv(key, 64, True) & M32
    assert HASH_FUNCTIONS["fnv1_32"](key) == textbook_fnv(key, 32, False)


@given(key=st.text(alphabet=st.characters(max_codepoint=127), min_size=1).map(str.encode))
def test_one_at_a_time_of_ascii_keys_is_the_textbook_hash(key: bytes):
    assert HASH_FUNCTIONS["one_at_a_time"](key) == textbook_one_at_a_time(key)


@given(key=keys.filter(bool))
def test_md5_is_the_first_digest_word_and_the_first_ketama_point(key: bytes):
    digest = md5_digest(key).digest()
    assert HASH_FUNCTIONS["md5"](key) == int.from_bytes(digest[:4], "little")
    assert hashkit.ketama_points_of(key)[0] == HASH_FUNCTIONS["md5"](key)


