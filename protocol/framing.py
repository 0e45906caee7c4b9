"""Incremental framing parsers for provider response bodies, fed arbitrary byte slices.

Three framings, chosen by the endpoint that was called (never by ``Content-Type``: Gemini's
array and Ollama Cloud's NDJSON are both served as ``application/json``, docs/PROVIDERS.md §10.10):

- :class:`SSEDecoder`: ``text/event-stream`` per WHATWG HTML §9.2.6 "Interpreting an event
  stream" (OpenAI, OpenAI-compatible servers, Anthropic, Gemini with ``alt=sse``).
- :class:`JSONArrayDecoder`: one JSON array flushed element by element (Gemini
  ``streamGenerateContent`` without ``alt=sse``, docs/PROVIDERS.md §3.1).
- :class:`NDJSONDecoder`: one JSON document per line (Ollama ``/api/chat``, docs/PROVIDERS.md §4.1).

Each decoder is pure: ``feed(bytes) -> list`` any number of times, then ``close() -> list``
once at end of body. None of them awaits, reads a clock or touches a socket.

EOF policy (docs/PROVIDERS.md §10.9). The SSE spec discards an event that is still pending when the
stream ends (§9.2.6: "the end of the stream is not enough to trigger the dispatch of the last
event"). Several real recordings end without the final blank line, and one (Gemini
prompt-blocked) ends right after its only event. The hub therefore *dispatches* a pending
event at EOF, and sets :attr:`SSEDecoder.unterminated` so the caller knows the blank line was
missing. This cannot turn a cut body into a success: a normalizer only reports success when
it has parsed the provider's terminal marker (``[DONE]``, ``message_stop``...), and an event
whose JSON was cut mid-way fails to parse and is reported as a truncated stream.
"""

from __future__ import annotations

import re

import msgspec

from protocol.errors import FramingError

__all__ = ["SSEEvent", "StrayLine", "SSEDecoder", "NDJSONDecoder", "JSONArrayDecoder"]

_BOM = b"\xef\xbb\xbf"
_ASCII_DIGITS = re.compile(r"[0-9]+")


class SSEEvent(msgspec.Struct, frozen=True, gc=False):
    """One dispatched SSE event.

    Attributes:
        data: the data buffer, lines joined with ``\\n`` (the last ``\\n`` removed).
        event: the event type (``message`` when the stream gave no ``event`` field).
        id: the last event ID buffer at dispatch time (persists across events), or None.
        retry: the reconnection time in ms last set by a ``retry`` field, or None.
    """

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class StrayLine(msgspec.Struct, frozen=True, gc=False):
    """A non-comment line whose field name is not one the SSE spec knows.

    Only produced with ``SSEDecoder(collect_stray=True)``. Gemini writes a mid-stream error
    as pretty-printed JSON *without* ``data:`` (docs/PROVIDERS.md §3.4); a spec parser ignores those
    lines, so the Gemini normalizer collects them to find the error.
    """

    text: str


class SSEDecoder:
    """Incremental ``text/event-stream`` parser (WHATWG HTML §9.2.6).

    Implements: UTF-8 decoding with one leading BOM stripped (only at stream start); CR, LF and
    CRLF line ends, freely mixed, including a CRLF split across two reads; multi-byte UTF-8
    characters split across reads (lines are decoded only once complete, and invalid bytes
    become U+FFFD); comment lines (``:``); one leading space stripped from a value; multi-line
    ``data`` joined with ``\\n``; ``event``; ``id`` (ignored when it contains U+0000);
    ``retry`` (ASCII digits only); an event with an empty data buffer is not dispatched.
    Lines are split on CR and LF bytes only, never on U+2028 and friends (docs/PROVIDERS.md §10.10).

    Args:
        collect_stray: also return :class:`StrayLine` for lines with an unknown field name.
    """

    def __init__(self, *, collect_stray: bool = False) -> None:
        self._collect_stray = collect_stray
        self._bom_prefix = b""  # first bytes, while they could still be a BOM
        self._parts: list[bytes] = []  # pieces of an incomplete line, joined once it ends
        self._skip_lf = False  # the previous read ended with CR: drop a leading LF
        self._at_start = True  # BOM not yet checked
        self._data: list[str] = []
        self._event_type = ""
        self._last_id: str | None = None
        self._retry: int | None = None
        self._closed = False
        self.unterminated = False
        """True when :meth:`close` had to dispatch an event that lacked its blank line."""

    # Public methods.

    def feed(self, chunk: bytes) -> list[SSEEvent | StrayLine]:
        """Parse the next slice of the body; return the events it completed, in order."""
        if self._closed:
            raise FramingError("SSEDecoder.feed() after close()")
        if not chunk:
            return []
        if self._at_start:
            chunk = self._bom_prefix + chunk
            self._bom_prefix = b""
            if len(chunk) < len(_BOM) and _BOM.startswith(chunk):
                self._bom_prefix = chunk  # could still become a BOM
                return []
            self._at_start = False
            if chunk.startswith(_BOM):
                chunk = chunk[len(_BOM) :]
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if b"\n" not in chunk and b"\r" not in chunk:
            # A line still growing (signatures, base64, big tool arguments): keep the piece
            # and join once the line ends, rather than re-copying the line on every read.
            self._parts.append(chunk)
            return []
        if self._parts:
            self._parts.append(chunk)
            chunk = b"".join(self._parts)
            self._parts = []
        lines = chunk.splitlines(keepends=True)  # bytes: splits on \r, \n, \r\n only
        out: list[SSEEvent | StrayLine] = []
        if lines and not lines[-1].endswith((b"\n", b"\r")):
            self._parts.append(lines.pop())
        if chunk.endswith(b"\r"):
            self._skip_lf = True
        for raw in lines:
            if raw.endswith(b"\r\n"):
                raw = raw[:-2]
            else:
                raw = raw[:-1]
            self._process_line(raw.decode("utf-8", "replace"), out)
        return out

    def close(self) -> list[SSEEvent | StrayLine]:
        """End of body: dispatch a pending event (see the module's EOF policy)."""
        if self._closed:
            return []
        self._closed = True
        out: list[SSEEvent | StrayLine] = []
        pending = self._bom_prefix + b"".join(self._parts)
        self._bom_prefix = b""
        self._parts = []
        if pending:
            if self._at_start and pending.startswith(_BOM):
                pending = pending[len(_BOM) :]
            if pending:
                self._process_line(pending.decode("utf-8", "replace"), out)
        if self._data:
            self.unterminated = True
            self._dispatch(out)
        return out

    @property
    def last_event_id(self) -> str | None:
        """The last event ID buffer (``id`` field), as a reconnecting client would send it."""
        return self._last_id

    # Private methods.

    def _process_line(self, line: str, out: list[SSEEvent | StrayLine]) -> None:
        if not line:
            self._dispatch(out)
            return
        if line[0] == ":":
            return  # comment (keep-alive)
        field, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event_type = value
        elif field == "id":
            if "\x00" not in value:
                self._last_id = value
        elif field == "retry":
            if _ASCII_DIGITS.fullmatch(value):
                self._retry = int(value)
        elif self._collect_stray:
            out.append(StrayLine(line))

    def _dispatch(self, out: list[SSEEvent | StrayLine]) -> None:
        if not self._data:
            self._event_type = ""
            return
        data = "\n".join(self._data)
        out.append(SSEEvent(data, self._event_type or "message", self._last_id, self._retry))
        self._data = []
        self._event_type = ""


class NDJSONDecoder:
    """Incremental newline-delimited JSON splitter (Ollama ``/api/chat``, docs/PROVIDERS.md §4.1).

    ``feed`` returns the complete, non-blank lines as ``bytes`` (without the line end; a CR
    before the LF is removed), so each normalizer decodes only the fields it needs. Bytes are
    not decoded here, so a multi-byte character split across reads is never torn.
    """

    def __init__(self) -> None:
        self._parts: list[bytes] = []  # pieces of an incomplete line, joined once it ends
        self._closed = False
        self.unterminated = False
        """True when :meth:`close` returned a last line that had no line end."""

    def feed(self, chunk: bytes) -> list[bytes]:
        """Parse the next slice of the body; return the lines it completed."""
        if self._closed:
            raise FramingError("NDJSONDecoder.feed() after close()")
        if b"\n" not in chunk:
            if chunk:
                self._parts.append(chunk)  # joined once the line ends (no quadratic re-copying)
            return []
        if self._parts:
            self._parts.append(chunk)
            chunk = b"".join(self._parts)
            self._parts = []
        *lines, pending = chunk.split(b"\n")
        if pending:
            self._parts.append(pending)
        return [line for line in (raw.rstrip(b"\r") for raw in lines) if line.strip()]

    def close(self) -> list[bytes]:
        """End of body: return the last line if it lacked its line end (and is not blank)."""
        if self._closed:
            return []
        self._closed = True
        pending = b"".join(self._parts).rstrip(b"\r")
        self._parts = []
        if pending.strip():
            self.unterminated = True
            return [pending]
        return []


_WHITESPACE = frozenset(b" \t\r\n")
_STRING_SPECIAL = re.compile(rb'["\\]')
_NESTED_SPECIAL = re.compile(rb'["{}\[\]]')


class JSONArrayDecoder:
    """Incremental reader of one top-level JSON array whose elements are objects or arrays.

    Gemini ``streamGenerateContent`` without ``alt=sse`` flushes one pretty-printed array
    element at a time: ``[{…}\\n,\\r\\n{…}\\n]`` (docs/PROVIDERS.md §3.1, §9). ``feed`` returns each
    element's raw bytes as soon as its closing brace arrives, so the caller decodes it with a
    schema of its own. Elements may span any number of reads.

    A body that starts with ``{`` instead of ``[`` (an error envelope such as
    ``{"error": {...}}``) is accepted as a single element.

    Raises:
        FramingError: on bytes that cannot belong to such an array (a scalar element, a
            missing comma, data after the closing bracket). Elements completed before the bad
            byte are returned first, and the error is raised by the next ``feed`` or
            ``close``, so the outcome does not depend on where reads are split.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0  # next byte to scan in _buf
        self._state = "start"  # start, first, after, next, done
        self._depth = 0
        self._in_string = False
        self._element_start = 0
        self._bare_object = False
        self._closed = False
        self._error: FramingError | None = None

    @property
    def complete(self) -> bool:
        """True once the closing ``]`` (or the end of a bare object) has been read."""
        return self._state == "done"

    def feed(self, chunk: bytes) -> list[bytes]:
        """Parse the next slice of the body; return the elements it completed."""
        if self._error is not None:
            raise self._error
        if self._closed:
            raise FramingError("JSONArrayDecoder.feed() after close()")
        buf = self._buf
        buf += chunk
        out: list[bytes] = []
        i, n = self._pos, len(buf)
        while i < n:
            if self._in_string:
                m = _STRING_SPECIAL.search(buf, i)
                if m is None:
                    i = n
                    break
                j = m.start()
                if buf[j] == 0x5C:  # backslash: skip the escaped byte
                    if j + 1 >= n:
                        i = j  # wait for the escaped byte
                        break
                    i = j + 2
                    continue
                self._in_string = False
                i = j + 1
                continue
            if self._depth:
                m = _NESTED_SPECIAL.search(buf, i)
                if m is None:
                    i = n
                    break
                j = m.start()
                c = buf[j]
                if c == 0x22:  # "
                    self._in_string = True
                elif c in (0x7B, 0x5B):  # { [
                    self._depth += 1
                else:  # } ]
                    self._depth -= 1
                    if not self._depth:
                        out.append(bytes(buf[self._element_start : j + 1]))
                        self._state = "done" if self._bare_object else "after"
                i = j + 1
                continue
            c = buf[i]
            if c in _WHITESPACE:
                i += 1
                continue
            state = self._state
            if state == "start" and c == 0x5B:  # [
                self._state = "first"
            elif state == "start" and c == 0x7B:  # a bare object, e.g. an error envelope
                self._bare_object = True
                self._begin_element(i)
            elif state in ("first", "next") and c in (0x7B, 0x5B):
                self._begin_element(i)
            elif state in ("first", "after") and c == 0x5D:  # ]
                self._state = "done"
            elif state == "after" and c == 0x2C:  # ,
                self._state = "next"
            else:
                error = FramingError(f"unexpected byte {bytes([c])!r} in JSON array stream (state {state})")
                if not out and state != "done":
                    raise error
                # Return what this read completed (elements, or the end of the array, which
                # `complete` reports); the error is raised by the next call.
                self._error = error
                return out
            i += 1
        # Drop what is no longer needed: everything before the current element.
        keep_from = self._element_start if self._depth else i
        if keep_from:
            del buf[:keep_from]
            i -= keep_from
            self._element_start = 0
        self._pos = i
        return out

    def close(self) -> list[bytes]:
        """End of body. Returns nothing; check :attr:`complete` to know if ``]`` arrived.

        Raises:
            FramingError: the error found after the elements the last ``feed`` returned.
        """
        self._closed = True
        if self._error is not None:
            raise self._error
        return []

    def _begin_element(self, index: int) -> None:
        self._element_start = index
        self._depth = 1
