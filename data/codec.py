"""Compact binary encoding of token arrays (never JSON).

Every blob starts with a one-byte dtype tag, followed by the little-endian payload:

====  ==========================================  =========================
tag   payload                                     used for
====  ==========================================  =========================
``H`` uint16 values                               token ids when all < 65536
``i`` int32 values                                token ids otherwise
``f`` float32 values                              log-probs, token weights
``m`` uint32 length ``n`` + ``ceil(n/8)`` bytes   0/1 loss masks (bit-packed)
====  ==========================================  =========================

A turn's prompt can be stored as a *delta*: ``Turn.prompt_ids`` holds the full context, which is
the previous turn's prompt + completion followed by the new observation tokens. Storing only the
length of the shared prefix and the new suffix keeps an episode's storage linear in its length.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from data.errors import CodecError

__all__ = [
    "encode_ids",
    "encode_floats",
    "encode_mask",
    "decode",
    "common_prefix_len",
    "split_prompt",
    "join_prompt",
]

_DTYPES: dict[bytes, np.dtype[Any]] = {
    b"H": np.dtype("<u2"),
    b"i": np.dtype("<i4"),
    b"f": np.dtype("<f4"),
}


def encode_ids(ids: Sequence[int] | np.ndarray) -> bytes:
    """Token ids -> ``b"H" + uint16`` when they all fit, else ``b"i" + int32``."""
    if isinstance(ids, np.ndarray):
        if ids.ndim != 1:
            raise CodecError(f"token ids must be 1-D, got shape {ids.shape}")
        ids = ids.tolist()
    n = len(ids)
    for tag, code in ((b"H", "H"), (b"i", "i")):
        try:  # struct range-checks every value; ~3x faster than array.array or numpy from a list
            return tag + struct.pack(f"<{n}{code}", *ids)
        except struct.error:
            continue  # out of range (try the wider type) or not an integer (told apart below)
    try:
        for value in ids:
            operator.index(value)
    except TypeError as exc:
        raise CodecError(f"token ids must be integers: {exc}") from exc
    raise CodecError("token id does not fit in int32")


def encode_floats(values: Sequence[float] | np.ndarray) -> bytes:
    """Log-probs or weights -> ``b"f" + float32`` bytes."""
    if isinstance(values, np.ndarray):
        if values.ndim != 1:
            raise CodecError(f"float array must be 1-D, got shape {values.shape}")
        return b"f" + values.astype("<f4").tobytes()
    try:
        return b"f" + struct.pack(f"<{len(values)}f", *values)
    except (OverflowError, struct.error) as exc:
        raise CodecError(f"float array: {exc}") from exc


def encode_mask(mask: Sequence[int] | np.ndarray) -> bytes:
    """A 0/1 mask of length n -> ``b"m" + uint32(n) + packbits(mask)`` (n/8 bytes)."""
    if isinstance(mask, np.ndarray):
        if mask.ndim != 1:
            raise CodecError(f"mask must be 1-D, got shape {mask.shape}")
        mask = mask.tolist()
    try:
        raw = bytes(mask)  # C speed; range-checks 0..255 and rejects non-integers
    except (ValueError, TypeError) as exc:
        raise CodecError(f"loss mask values must be 0 or 1: {exc}") from exc
    if raw.translate(None, b"\x00\x01"):  # anything left is neither 0 nor 1
        raise CodecError("loss mask values must be 0 or 1")
    bits = np.packbits(np.frombuffer(raw, dtype=np.uint8)) if raw else np.zeros(0, np.uint8)
    return b"m" + struct.pack("<I", len(raw)) + bits.tobytes()


def decode(blob: bytes | memoryview | None) -> np.ndarray | None:
    """Inverse of the ``encode_*`` functions; ``None`` stays ``None``.

    Returns a 1-D array: int64 for ids and masks, float32 for floats.
    """
    if blob is None:
        return None
    blob = bytes(blob)
    if not blob:
        raise CodecError("empty blob (missing dtype tag)")
    tag, payload = blob[:1], blob[1:]
    if tag == b"m":
        if len(payload) < 4:
            raise CodecError("truncated mask header")
        (n,) = struct.unpack("<I", payload[:4])
        bits = np.frombuffer(payload[4:], dtype=np.uint8)
        if bits.size != (n + 7) // 8:
            raise CodecError(f"mask payload holds {bits.size} bytes, expected {(n + 7) // 8}")
        return np.unpackbits(bits, count=n).astype(np.int64)
    dtype = _DTYPES.get(tag)
    if dtype is None:
        raise CodecError(f"unknown dtype tag {tag!r}")
    if len(payload) % dtype.itemsize:
        raise CodecError(f"payload of {len(payload)} bytes is not a multiple of {dtype.itemsize}")
    arr = np.frombuffer(payload, dtype=dtype)
    return arr.astype(np.int64) if dtype.kind in "iu" else arr


def common_prefix_len(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the longest common prefix of two 1-D integer arrays."""
    n = min(a.size, b.size)
    if n == 0:
        return 0
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if diff.size else n


def split_prompt(prompt: np.ndarray, previous_context: np.ndarray | None) -> tuple[int, np.ndarray]:
    """Delta-encode a prompt against the previous turn's ``prompt + completion``.

    Returns ``(prefix_len, suffix)`` with ``prompt == previous_context[:prefix_len] ++ suffix``.
    """
    if previous_context is None:
        return 0, prompt
    k = common_prefix_len(prompt, previous_context)
    return k, prompt[k:]


def join_prompt(
    prefix_len: int, suffix: np.ndarray, previous_context: np.ndarray | None
) -> np.ndarray:
    """Inverse of :func:`split_prompt`."""
    if prefix_len == 0:
        return suffix
    if previous_context is None or previous_context.size < prefix_len:
        raise CodecError("prompt delta refers to a missing previous turn")
    return np.concatenate([previous_context[:prefix_len], suffix])
