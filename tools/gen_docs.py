"""Write the generated parts of docs/PROTOCOL.md and README.md.

The "Error codes" table is :class:`protocol.errors.ErrorCode`, the "Close codes" table
with the two paragraphs under it is :class:`protocol.errors.CloseCode`, and the "Request
fields per provider" table is :data:`protocol.request_fields.FIELDS`: each sits between a
``<!-- BEGIN GENERATED ... -->`` and an ``<!-- END GENERATED ... -->`` comment, and this script
rewrites only what lies between them. ``tests/test_errors.py`` fails while the document is
out of date.

README.md's examples of ``/healthz``, of a WebSocket session in wscat (the message to paste
and the frames the hub sends back) and of the two SSE streams from curl come from a run:
:func:`capture_readme_run` starts the mock provider and a hub with the default configuration
in this process and sends each request (:data:`EXAMPLES`). Timing decides where merged chunks
split and the ``ttftMs`` figure, chance the ids and epochs, the clock ``created``, so an
example is out of date when what it shows is not *a possible run* of today's hub (its
``same`` function: every frame or chunk equal field for field once those are set aside and the
text of consecutive chunks is joined; ``/healthz``: the same fields and types); it is rewritten
only then, and ``--check`` fails only then. ``tests/test_newcomer.py`` checks it too.

Run from the root of the checkout after changing either enum, or what the hub sends::

    python -m tools.gen_docs          # rewrite the generated parts of docs/PROTOCOL.md and README.md
    python -m tools.gen_docs --check  # exit 1 when they are out of date
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.errors import HUB_CLOSE_CODE_RANGE, RETRYABLE_STATUSES, CloseCode, ErrorCode
from protocol.request_fields import render_table as render_request_fields

__all__ = ["EXAMPLES", "PROTOCOL_PATH", "README_PATH", "ROOT", "SECTIONS", "SSE_REQUEST", "WSCAT_MESSAGE", "Example",
           "ReadmeRun", "capture_readme_run", "documented", "main", "render_close_codes", "render_error_codes",
           "render_eventsource", "render_healthz", "render_sse", "render_wscat_session", "same_healthz",
           "same_session", "same_sse", "update", "update_readme"]

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
    "request fields": render_request_fields,
}
#: Where a part comes from, for its marker comment (protocol/errors.py when not named here).
_SOURCES = {"request fields": "from protocol/request_fields.py"}


def _markers(name: str, source: str = "from protocol/errors.py") -> tuple[str, str]:
    return (f"<!-- BEGIN GENERATED {name}: python -m tools.gen_docs, {source} -->",
            f"<!-- END GENERATED {name} -->")


def update(markdown: str) -> str:
    """``markdown`` with every generated part written anew.

    Raises:
        ValueError: a part's marker comments are missing or appear more than once.
    """
    for name, render in SECTIONS.items():
        begin, end = _markers(name, _SOURCES.get(name, "from protocol/errors.py"))
        found = list(re.finditer(re.escape(begin) + r"\n.*?" + re.escape(end), markdown, re.S))
        if len(found) != 1:
            raise ValueError(f"{PROTOCOL_PATH}: expected one '{begin}' ... '{end}' block, found {len(found)}")
        block = f"{begin}\n{render()}\n{end}"
        markdown = markdown[:found[0].start()] + block + markdown[found[0].end():]
    return markdown


#: The message README.md has the reader paste into wscat (one line, as pasted).
WSCAT_MESSAGE = ('{"type":"completion","id":"demo-1","model":"openai/gpt-4o-mini","messages":[{"role":"user",'
                 '"content":"Why does streaming matter? [[mock tokens=12 tps=40 seed=4]]"}]}')
#: The body README.md's curl example posts to ``/v1/chat/completions``.
SSE_REQUEST = ('{"model":"openai/gpt-4o-mini","messages":[{"role":"user","content":"Say hello '
               '[[mock tokens=6 seed=4]]"}],"stream":true,"stream_options":{"include_usage":true}}')
#: The query README.md's curl example of ``GET /v1/chat/completions/stream`` (EventSource) sends.
EVENTSOURCE_PATH = ("/v1/chat/completions/stream?model=ollama/llama3.2&messages=%5B%7B%22role%22%3A%22user%22%2C"
                    "%22content%22%3A%22Hi%20%5B%5Bmock%20tokens%3D3%20seed%3D4%5D%5D%22%7D%5D")
HEALTHZ_COMMAND = "$ curl -s http://127.0.0.1:8765/healthz"
EVENTSOURCE_COMMAND = f"$ curl -N 'http://127.0.0.1:8765{EVENTSOURCE_PATH}'"
SSE_COMMAND = ("$ curl -N http://127.0.0.1:8765/v1/chat/completions -H 'Content-Type: application/json' "
               f"-d '{SSE_REQUEST}'")
_SOURCE = "from a run of the hub and the mock provider"
#: Upper bound of the whole run, in seconds (the wscat message asks for 12 tokens at 40 per second).
CAPTURE_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ReadmeRun:
    """What README.md's examples show, from one run: ``/healthz``'s body, the WebSocket frames
    answering :data:`WSCAT_MESSAGE`, the SSE body answering :data:`SSE_REQUEST`, and the one
    answering ``GET`` :data:`EVENTSOURCE_PATH`."""

    healthz: str
    wscat: list[str]
    sse: str
    eventsource: str


async def capture_readme_run() -> ReadmeRun:
    """Run the mock provider and a hub as README.md has the reader run them (the hub's default
    configuration, coalescing included, on a free port of 127.0.0.1, every provider pointed at
    the mock; the mock with ``cbhub mock-provider``'s defaults), in this process, and record
    what README.md's examples show: ``GET /healthz`` first (no connection open yet), then the
    wscat session (a ``websockets`` client: the frames up to and including the completion's
    ``completed`` or ``error``), then the curl SSE request.

    Raises:
        TimeoutError: the run did not end within :data:`CAPTURE_TIMEOUT_S`.
    """
    import aiohttp
    import websockets

    from hub.app import run_hub
    from hub.config import HubConfig
    from hub.testing.mock_provider import MockProvider

    async with MockProvider(port=0) as mock, asyncio.timeout(CAPTURE_TIMEOUT_S):
        config = HubConfig(port=0, openai_base_url=mock.url + "/v1", anthropic_base_url=mock.url,
                           gemini_base_url=mock.url, ollama_host=mock.url)
        async with run_hub(config) as hub:
            async with aiohttp.ClientSession() as http, http.get(hub.url + "/healthz") as response:
                healthz = await response.text()
            async with websockets.connect(hub.url.replace("http", "ws", 1) + "/ws/stream",
                                          compression=None) as connection:
                await connection.send(WSCAT_MESSAGE)
                frames: list[str] = []
                while not frames or json.loads(frames[-1]).get("type") not in ("completed", "error"):
                    frame = await connection.recv()
                    frames.append(frame if isinstance(frame, str) else frame.decode())
            async with aiohttp.ClientSession() as http, http.post(
                    hub.url + "/v1/chat/completions", data=SSE_REQUEST,
                    headers={"Content-Type": "application/json"}) as response:
                sse = await response.text()
            async with aiohttp.ClientSession() as http, http.get(hub.url + EVENTSOURCE_PATH) as response:
                eventsource = await response.text()
    return ReadmeRun(healthz=healthz, wscat=frames, sse=sse, eventsource=eventsource)


# Each example: how it is written, read back from README.md, and compared with a run.


def render_healthz(body: str) -> str:
    """README.md's ``/healthz`` example."""
    return "\n".join(["```", HEALTHZ_COMMAND, body, "```"])


def render_wscat_session(frames: list[str]) -> str:
    """README.md's wscat example: the message to paste, then ``frames`` as wscat shows them."""
    return "\n".join([
        "Paste this message:", "", "```json", WSCAT_MESSAGE, "```", "",
        "The hub sends back these frames. `python -m tools.gen_docs` captured them from the hub and",
        "the mock provider with a `websockets` client, which receives exactly the frames wscat shows.",
        "Where the merged chunks split, the `epochs` value and the `ttftMs` figure vary from run to run.", "",
        "```", *[f"< {frame}" for frame in frames], "```",
    ])


def _render_stream(command: str, body: str) -> str:
    return "\n".join(["```", command, body.rstrip("\n"), "", "```"])


def render_sse(body: str) -> str:
    """README.md's curl example of ``POST /v1/chat/completions`` with ``"stream": true``."""
    return _render_stream(SSE_COMMAND, body)


def render_eventsource(body: str) -> str:
    """README.md's curl example of ``GET /v1/chat/completions/stream`` (what an EventSource gets)."""
    return _render_stream(EVENTSOURCE_COMMAND, body)


def _parse_healthz(block: str) -> str:
    lines = block.splitlines()
    return lines[lines.index(HEALTHZ_COMMAND) + 1] if HEALTHZ_COMMAND in lines else ""


def _parse_wscat(block: str) -> list[str]:
    return [line[2:] for line in block.splitlines() if line.startswith("< ")]


def _parse_stream(block: str, command: str) -> str:
    lines = block.splitlines()
    if command not in lines:
        return ""
    body = lines[lines.index(command) + 1:]
    return "\n".join(body[:-1] if body and body[-1] == "```" else body) + "\n"


def _parse_sse(block: str) -> str:
    return _parse_stream(block, SSE_COMMAND)


def _parse_eventsource(block: str) -> str:
    return _parse_stream(block, EVENTSOURCE_COMMAND)


def _shape(value: Any) -> Any:
    """``value`` with every leaf replaced by its type's name (dict keys kept)."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(item) for item in value]
    return type(value).__name__


def same_healthz(documented: str, captured: str) -> bool:
    """Same fields and types (counts, the pid and the task number differ between runs), same
    ``status``."""
    try:
        old, new = json.loads(documented), json.loads(captured)
    except ValueError:
        return False
    if not isinstance(old, dict) or not isinstance(new, dict):
        return False
    return bool(_shape(old) == _shape(new) and old.get("status") == new.get("status"))


def _normalized(frames: list[str]) -> list[dict[str, Any]]:
    """``frames`` decoded, ``seq`` dropped, a ``ttftMs`` figure replaced by its type, the random
    ``epochs`` of ``subscribed`` blanked (each channel instance draws one), consecutive
    ``content_chunk`` frames of one completion joined into one."""
    out: list[dict[str, Any]] = []
    for frame in frames:
        message = {key: value for key, value in json.loads(frame).items() if key != "seq"}
        if "ttftMs" in message:
            message["ttftMs"] = type(message["ttftMs"]).__name__
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
    the same frames, field for field, once :func:`_normalized`, and the documented ``seq``
    numbers 1, 2, ... without a gap. Timing decides where merged chunks split and what
    ``ttftMs`` is; chance decides the epoch."""
    try:
        numbered = [seq for seq in (json.loads(frame).get("seq") for frame in documented) if seq is not None]
        if not documented or numbered != list(range(1, len(numbered) + 1)):
            return False
        return _normalized(documented) == _normalized(captured)
    except (ValueError, AttributeError, TypeError):
        return False


def _sse_normalized(body: str) -> list[Any] | None:
    """The SSE ``data:`` events of ``body``, decoded; ``id`` (random, one per response) and
    ``created`` (a clock) dropped, the id's form (its hex digits as 0) kept beside them, and
    the form of each ``id:`` line; consecutive content-only chunks joined. None when it is not
    such a stream (no ``[DONE]`` at the end, an event that is not JSON, chunks whose ids differ
    in form)."""
    data = [line[6:] for line in body.split("\n") if line.startswith("data: ")]
    if not data or data[-1] != "[DONE]":
        return None
    out: list[Any] = []
    ids = set()
    try:
        for text in data[:-1]:
            chunk = json.loads(text)
            ids.add(re.sub(r"[0-9a-f]", "0", str(chunk.pop("id", None))))  # its form, not its random digits
            chunk.pop("created", None)
            choices = chunk.get("choices")
            content_only = (isinstance(choices, list) and len(choices) == 1 and choices[0].get("finish_reason") is None
                            and list(choices[0].get("delta", {})) == ["content"])
            last = out[-1] if out else None
            if content_only and last is not None and last.pop("_content_only", False):
                last["choices"][0]["delta"]["content"] += choices[0]["delta"]["content"]
                last["_content_only"] = True
                continue
            if content_only:
                chunk["_content_only"] = True
            out.append(chunk)
    except (ValueError, AttributeError, TypeError, KeyError):
        return None
    if len(ids) != 1:
        return None
    for chunk in out:
        chunk.pop("_content_only", None)
    event_ids = [re.sub(r"[0-9a-f]", "0", line[4:]) for line in body.split("\n") if line.startswith("id: ")]
    return [*ids, *event_ids, *out, "[DONE]"]


def same_sse(documented: str, captured: str) -> bool:
    """Whether ``documented`` is an SSE answer the hub could send today, ``captured`` being
    one: the same chunks, field for field, once the id and ``created`` are set aside and the
    text of consecutive content chunks is joined (timing decides where merged text splits)."""
    old = _sse_normalized(documented)
    return old is not None and old == _sse_normalized(captured)


@dataclass(frozen=True)
class Example:
    """One generated example of README.md, between its marker comments."""

    name: str
    render: Callable[[Any], str]
    parse: Callable[[str], Any]
    same: Callable[[Any, Any], bool]
    captured: Callable[[ReadmeRun], Any]


#: README.md's generated examples, in the order they appear.
EXAMPLES = (
    Example("curl healthz", render_healthz, _parse_healthz, same_healthz, lambda run: run.healthz),
    Example("wscat session", render_wscat_session, _parse_wscat, same_session, lambda run: run.wscat),
    Example("curl sse", render_sse, _parse_sse, same_sse, lambda run: run.sse),
    Example("curl eventsource", render_eventsource, _parse_eventsource, same_sse, lambda run: run.eventsource),
)


def _block(markdown: str, name: str, path: str) -> re.Match[str]:
    begin, end = _markers(name, _SOURCE)
    found = list(re.finditer(re.escape(begin) + r"\n(.*?)\n" + re.escape(end), markdown, re.S))
    if len(found) != 1:
        raise ValueError(f"{path}: expected one '{begin}' ... '{end}' block, found {len(found)}")
    return found[0]


def documented(readme: str, name: str) -> Any:
    """What README.md's example ``name`` shows (parsed as that example's ``parse`` does).

    Raises:
        ValueError: the example's markers are missing or repeated.
    """
    example = next(example for example in EXAMPLES if example.name == name)
    return example.parse(_block(readme, name, README_PATH).group(1))


def update_readme(readme: str, run: ReadmeRun) -> str:
    """``readme`` with each generated example rewritten from ``run``, except those that already
    read as their ``render`` writes what they show and that their ``same`` finds a possible
    run of today's hub (so that a run that only differs by timing rewrites nothing).

    Raises:
        ValueError: an example's markers are missing or repeated.
    """
    for example in EXAMPLES:
        found = _block(readme, example.name, README_PATH)
        shown = example.parse(found.group(1))
        captured = example.captured(run)
        if found.group(1) == example.render(shown) and example.same(shown, captured):
            continue
        readme = readme[:found.start(1)] + example.render(captured) + readme[found.end(1):]
    return readme


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.gen_docs", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when a document is out of date")
    args = parser.parse_args(argv)
    run = asyncio.run(capture_readme_run())
    status = 0
    for path, rewrite in ((PROTOCOL_PATH, update), (README_PATH, lambda text: update_readme(text, run))):
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
