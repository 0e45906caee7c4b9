"""Server-to-client WebSocket text frames, built once and written to many connections.

RFC 6455 §5.2: a frame is a 2-byte header (FIN bit, opcode, payload length), an extended
length of 2 bytes (126 ≤ length < 65536) or 8 bytes (length ≥ 65536), then the payload.
Frames a server sends are never masked (§5.1), so one frame's bytes are the same for every
connection: the hub builds each event's frame once and hands the same bytes to every
subscriber's transport (docs/ARCHITECTURE.md decision 4). Compression (permessage-deflate) would make
frames per connection, which is why the hub turns it off.
"""

from __future__ import annotations

import struct

__all__ = ["text_frame", "close_frame", "MAX_BATCH_BYTES", "batch_frames"]

_FIN_TEXT = 0x81  # FIN=1, RSV=0, opcode=0x1 (text), §5.2
_SHORT = [bytes((_FIN_TEXT, length)) for length in range(126)]  # headers of 0-125 byte payloads
_LEN16 = struct.Struct("!BBH").pack
_LEN64 = struct.Struct("!BBQ").pack

MAX_BATCH_BYTES = 65536
"""Largest payload :func:`batch_frames` puts in one frame, in bytes (a single message that is
larger still goes out alone, whole)."""


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked text frame carrying ``payload`` (UTF-8 bytes), header included.

    The payload must be valid UTF-8 (§5.6); it is not checked here: the hub's encoders
    produce it.
    """
    length = len(payload)
    if length < 126:
        return _SHORT[length] + payload
    if length < 65536:
        return _LEN16(_FIN_TEXT, 126, length) + payload
    return _LEN64(_FIN_TEXT, 127, length) + payload


def close_frame(code: int, reason: str = "") -> bytes:
    """A server Close frame (RFC 6455 §5.5.1): opcode 0x8, a 2-byte status code, then the
    UTF-8 reason, cut to the 123 bytes a control frame's payload leaves for it."""
    payload = struct.pack("!H", code) + reason.encode()[:123]
    return bytes((0x88, len(payload))) + payload


def batch_frames(payloads: list[bytes], limit: int = MAX_BATCH_BYTES) -> bytes:
    """Text frames that each carry several JSON messages separated by ``\\n`` (the opt-in
    batching of docs/PROTOCOL.md, as Centrifugo's JSON protocol does): consecutive payloads
    are joined while the joined size stays within ``limit`` bytes. JSON text never holds a
    raw newline (RFC 8259 §7: control characters are escaped), so ``\\n`` splits it safely.

    Returns:
        The frames' bytes, concatenated, ready for one transport write.
    """
    frames: list[bytes] = []
    group: list[bytes] = []
    size = 0
    for payload in payloads:
        if group and size + 1 + len(payload) > limit:
            frames.append(text_frame(b"\n".join(group)))
            group, size = [], 0
        size += len(payload) + (1 if group else 0)
        group.append(payload)
    if group:
        frames.append(text_frame(b"\n".join(group)))
    return b"".join(frames)
