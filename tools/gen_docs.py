"""Write the generated parts of docs/PROTOCOL.md and README.md.

The "Error codes" table is :class:`protocol.errors.ErrorCode`, and the "Close codes" table
with the two paragraphs under it is :class:`protocol.errors.CloseCode`: each sits between a
``<!-- BEGIN GENERATED ... -->`` and an ``<!-- END GENERATED ... -->`` comment, and this script
rewrites only what lies between them. ``tests/test_errors.py`` fails while the document is
out of date.

README.md's "A WebSocket session (wscat)" example (the message to paste and the frames the
hub sends back) comes from a run: :func:`capture_wscat_session` starts the mock provider and a
hub with the default configuration in this process, sends the message over a WebSocket and
records every frame until the completion ends. Where merged chunks split and the ``ttftMs``
figure depend on timing, so the documented session is out of date when it is not *a possible
run* of today's hub (:func:`same_session`: every frame equal once the chunks' text is joined
and ``seq`` and ``ttftMs`` are set aside); the block is rewritten only then, and ``--check``
fails only then. ``tests/test_newcomer.py`` checks it too. Run from the root of the checkout
after changing either enum or the messages::

    python -m tools.gen_docs          # rewrite the generated parts of docs/PROTOCOL.md and README.md
    python -m tools.gen_docs --check  # exit 1 when they are out of date
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from pathlib import Path
from typing import Any

from protocol.errors import HUB_CLOSE_CODE_RANGE, RETRYABLE_STATUSES, CloseCode, ErrorCode

__all__ = ["ROOT", "PROTOCOL_PATH", "README_PATH", "SECTIONS", "WSCAT_MESSAGE", "capture_wscat_session",
           "documented_wscat_session", "main", "render_close_codes", "render_error_codes", "render_wscat_session",
           "same_session", "update", "update_readme"]

ROOT = Path(__file__).resolve().parent.parent
#: The documents, relative to the root of the checkout.
PROTOCOL_PATH = "docs/PROTOCOL.md"
README_PATH = "README.md"


def _retryable_cell(code: ErrorCode) -> str:
    if code.retryable is None:
        statuses = [str(status) for status in RETRYABLE_STATUSES]
        return f"if `status` is {', '.join(statuses[:-1])} or {statuses[-1]}"
    return "yes" if code.retryable else "no"


def render_error_codes() -> str:
    """The "Error codes" table: one row per way each code is sent."""
    lines = ["| code | fault | retryable | sent as | when | HTTP |", "|---|---|---|---|---|---|"]
    for code in ErrorCode:
        http = str(code.http_status) if code.http_status is not None else code.http_note
        for use in code.uses:
            lines.append(f"| `{code.value}` | {code.fault.value} | {_retryable_cell(code)} | {use.sent_as} "
                         f"| {use.when} | {http} |")
    return "\n".join(lines)


def render_close_codes() -> str:
    """The "Close codes" table (the codes the hub sends as a close frame), what a client sees
    without one, and the hub's own range."""
    lines = ["| code | sent by the hub when | client should |", "|---|---|---|"]
    lines += [f"| {code.value} | {code.when} | {code.client_should} |" for code in CloseCode if code.sent]
    for code in CloseCode:
        if not code.sent:
            lines += ["", f"Without a close frame: {code.when}."]
    low, high = HUB_CLOSE_CODE_RANGE
    own = [str(code.value) for code in CloseCode if low <= code <= high]
    in_use = f"{', '.join(own)} {'is' if len(own) == 1 else 'are'} in use" if own else "none is in use yet"
    lines += ["", f"Codes {low}-{high} are the hub's own. Of those, {in_use}; a code in that range means",
              '"reconnect" unless this table says otherwise.']
    return "\n".join(lines)


#: The generated parts: the name in their marker comments, and what writes them.
SECTIONS = {
    "error codes": render_error_codes,
    "close codes": render_close_codes,
}


def _markers(name: str, source: str = "from protocol/errors.py") -> tuple[str, str]:
    return (f"<!-- BEGIN GENERATED {name}: python -m tools.gen_docs, {source} -->",
            f"<!-- END GENERATED {name} -->")


def update(markdown: str) -> str:
    """``markdown`` with every generated part written anew.

    Raises:
        ValueError: a part's marker comments are missing or appear more than once.
    """
    for name, render in SECTIONS.items():
        begin, end = _markers(name)
        found = list(re.finditer(re.escape(begin) + r"\n.*?" + re.escape(end), markdown, re.S))
        if len(found) != 1:
            raise ValueError(f"{PROTOCOL_PATH}: expected one '{begin}' ... '{end}' block, found {len(found)}")
        block = f"{begin}\n{render()}\n{end}"
        markdown = markdown[:found[0].start()] + block + markdown[found[0].end():]
    return markdown


#: The message README.md has the reader paste into wscat (one line, as pasted).
WSCAT_MESSAGE = ('{"type":"completion","id":"demo-1","model":"openai/gpt-4o-mini","messages":[{"role":"user",'
                 '"content":"Why does streaming matter? [[mock tokens=12 tps=40 seed=4]]"}]}')
_WSCAT = ("wscat session", "from a run of the hub and the mock provider")
#: Upper bound of the whole run, in seconds (the message asks for 12 tokens at 40 per second).
CAPTURE_TIMEOUT_S = 30.0


async def capture_wscat_session(message: str = WSCAT_MESSAGE) -> list[str]:
    """The text frames a hub sends back for ``message``, in order, up to and including the
    completion's ``completed`` or ``error``.

    The hub runs as README.md has the reader run it: the default configuration (coalescing
    included) on a free port of 127.0.0.1, with every provider pointed at the mock provider,
    which also runs here with ``cbhub mock-provider``'s defaults.

    Raises:
        TimeoutError: the completion did not end within :data:`CAPTURE_TIMEOUT_S`.
    """
    import websockets

    from hub.app import run_hub
    from hub.config import HubConfig
    from hub.testing.mock_provider import MockProvider

    async with MockProvider(port=0) as mock:
        config = HubConfig(port=0, openai_base_url=mock.url + "/v1", anthropic_base_url=mock.url,
                           gemini_base_url=mock.url, ollama_host=mock.url)
        async with run_hub(config) as hub, websockets.connect(
                hub.url.replace("http", "ws", 1) + "/ws/stream", compression=None) as connection:
            await connection.send(message)
            frames: list[str] = []
            async with asyncio.timeout(CAPTURE_TIMEOUT_S):
                while not frames or json.loads(frames[-1]).get("type") not in ("completed", "error"):
                    frame = await connection.recv()
                    frames.append(frame if isinstance(frame, str) else frame.decode())
            return frames


def render_wscat_session(frames: list[str], message: str = WSCAT_MESSAGE) -> str:
    """README.md's wscat example: the message to paste, then ``frames`` as wscat shows them."""
    return "\n".join([
        "Paste this message:", "", "```json", message, "```", "",
        "The hub sends back these frames. `python -m tools.gen_docs` captured them from the hub and",
        "the mock provider with a `websockets` client, which receives exactly the frames wscat shows.",
        "Where the merged chunks split, the `epochs` value and the `ttftMs` figure vary from run to run.", "",
        "```", *[f"< {frame}" for frame in frames], "```",
    ])


def _normalized(frames: list[str]) -> list[dict[str, Any]]:
    """``frames`` decoded, ``seq`` and ``ttftMs`` dropped, the random ``epochs`` of ``subscribed``
    blanked (each channel instance draws one), consecutive ``content_chunk`` frames of one
    completion joined into one."""
    out: list[dict[str, Any]] = []
    for frame in frames:
        message = {key: value for key, value in json.loads(frame).items() if key not in ("seq", "ttftMs")}
        if isinstance(message.get("epochs"), dict):
            message["epochs"] = dict.fromkeys(message["epochs"], "")
        last = out[-1] if out else None
        if (last is not None and message.get("type") == "content_chunk" and last.get("type") == "content_chunk"
                and last.get("completionId") == message.get("completionId") and last.keys() == message.keys()):
            last["content"] += message["content"]
        else:
            out.append(message)
    return out


def same_session(documented: list[str], captured: list[str]) -> bool:
    """Whether ``documented`` frames are a run the hub could send today, ``captured`` being one:
    the same frames, field for field, once :func:`_normalized`; the documented ``seq`` numbers
    1, 2, ... without a gap, and ``ttftMs`` present in the same frames. Timing decides where
    merged chunks split and what ``ttftMs`` is; chance decides the epoch."""
    seqs = [json.loads(frame).get("seq") for frame in documented]
    numbered = [seq for seq in seqs if seq is not None]
    if numbered != list(range(1, len(numbered) + 1)):
        return False
    has_ttft = [["ttftMs" in json.loads(frame) for frame in frames] for frames in (documented, captured)]
    if [flag for flag in has_ttft[0] if flag] != [flag for flag in has_ttft[1] if flag]:
        return False
    return _normalized(documented) == _normalized(captured)


def _block(markdown: str, name: str, source: str, path: str) -> re.Match[str]:
    begin, end = _markers(name, source)
    found = list(re.finditer(re.escape(begin) + r"\n.*?" + re.escape(end), markdown, re.S))
    if len(found) != 1:
        raise ValueError(f"{path}: expected one '{begin}' ... '{end}' block, found {len(found)}")
    return found[0]


def documented_wscat_session(readme: str) -> list[str]:
    """The frames (``< `` lines) README.md's wscat block shows.

    Raises:
        ValueError: the block's markers are missing or repeated.
    """
    block = _block(readme, *_WSCAT, README_PATH).group(0)
    return [line[2:] for line in block.splitlines() if line.startswith("< ")]


def update_readme(readme: str, captured: list[str]) -> str:
    """``readme`` with its wscat block rewritten from ``captured`` frames, or unchanged when
    the block is what :func:`render_wscat_session` writes for the frames it shows and those
    are a session :func:`same_session` accepts.

    Raises:
        ValueError: the block's markers are missing or repeated.
    """
    found = _block(readme, *_WSCAT, README_PATH)
    begin, end = _markers(*_WSCAT)
    documented = documented_wscat_session(readme)
    if found.group(0) == f"{begin}\n{render_wscat_session(documented)}\n{end}" and same_session(documented, captured):
        return readme
    return readme[:found.start()] + f"{begin}\n{render_wscat_session(captured)}\n{end}" + readme[found.end():]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.gen_docs", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when a document is out of date")
    args = parser.parse_args(argv)
    captured = asyncio.run(capture_wscat_session())
    status = 0
    for path, rewrite in ((PROTOCOL_PATH, update), (README_PATH, lambda text: update_readme(text, captured))):
        target = ROOT / path
        current = target.read_text(encoding="utf-8")
        try:
            text = rewrite(current)
        except ValueError as exc:
            print(exc, file=sys.stderr)
            status = 1
            continue
        if text == current:
            continue
        if args.check:
            print(f"out of date: {path} (run python -m tools.gen_docs)", file=sys.stderr)
            status = 1
            continue
        target.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
