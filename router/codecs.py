"""Value codecs for library mode: Python objects stored as Redis string values.

A codec only touches the *values* of the string commands listed in ``ENCODED_VALUES`` and
``DECODED_REPLIES``; keys, hash fields, list items, scores and every other command pass
through as redis-py would send them. That keeps the codec predictable: a key written with
``set`` through a codec is read back with ``get`` (or ``mget``, ``getdel``...) through the
same codec, and nothing else changes meaning.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgpack

#: Commands whose value arguments a codec encodes: command name -> (first value index, step).
#: ``None`` as step means one value; MSET-like commands hold a value every second argument.
ENCODED_VALUES: dict[str, tuple[int, int | None]] = {
    "set": (2, None),
    "setnx": (2, None),
    "getset": (2, None),
    "setex": (3, None),
    "psetex": (3, None),
    "mset": (2, 2),
    "msetnx": (2, 2),
}

#: Commands whose reply is a value (or a list of values, MGET) that a codec decodes.
#: SET's reply is a value only with its GET option; otherwise it stays True/None.
DECODED_REPLIES = frozenset({"get", "getdel", "getex", "getset", "mget"})


class ValueCodec(Protocol):
    """What library mode asks of a codec: bytes out for any value, the value back."""

    name: str

    def encode(self, value: Any) -> bytes: ...

    def decode(self, data: bytes) -> Any: ...


class MsgpackCodec:
    """msgpack with str and bytes kept apart, so ``"a"`` and ``b"a"`` both round-trip.

    msgpack has no tuple or set: tuples come back as lists and sets are refused, as
    ``msgpack.packb`` does. Integer and other non-string map keys are allowed.
    """

    name = "msgpack"

    def encode(self, value: Any) -> bytes:
        return msgpack.packb(value, use_bin_type=True)

    def decode(self, data: bytes) -> Any:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)

    def __repr__(self) -> str:
        return "MsgpackCodec()"


CODECS = {"msgpack": MsgpackCodec}


def resolve_codec(codec: str | ValueCodec | None) -> ValueCodec | None:
    """A codec object from what a user passes: None, a name such as ``"msgpack"``, or an
    object with ``encode``/``decode``."""
    if codec is None:
        return None
    if isinstance(codec, str):
        try:
            return CODECS[codec]()
        except KeyError:
            raise ValueError(f"unknown value codec {codec!r}; known: "
                             f"{', '.join(sorted(CODECS))}, or pass an object with "
                             "encode(value) -> bytes and decode(bytes)") from None
    if not (callable(getattr(codec, "encode", None)) and callable(getattr(codec, "decode", None))):
        raise TypeError("a value codec needs encode(value) -> bytes and decode(bytes) methods")
    return codec
