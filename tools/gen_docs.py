"""Write the generated parts of docs/PROTOCOL.md from the hub's own definitions.

The "Error codes" table is :class:`protocol.errors.ErrorCode`, and the "Close codes" table
with the two paragraphs under it is :class:`protocol.errors.CloseCode`: each sits between a
``<!-- BEGIN GENERATED ... -->`` and an ``<!-- END GENERATED ... -->`` comment, and this script
rewrites only what lies between them. ``tests/test_errors.py`` fails while the document is
out of date. Run from the root of the checkout after changing either enum::

    python -m tools.gen_docs          # rewrite the generated parts of docs/PROTOCOL.md
    python -m tools.gen_docs --check  # exit 1 when they are out of date
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from protocol.errors import HUB_CLOSE_CODE_RANGE, RETRYABLE_STATUSES, CloseCode, ErrorCode

__all__ = ["ROOT", "PROTOCOL_PATH", "SECTIONS", "render_error_codes", "render_close_codes", "update", "main"]

ROOT = Path(__file__).resolve().parent.parent
#: The document, relative to the root of the checkout.
PROTOCOL_PATH = "docs/PROTOCOL.md"


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


def _markers(name: str) -> tuple[str, str]:
    return (f"<!-- BEGIN GENERATED {name}: python -m tools.gen_docs, from protocol/errors.py -->",
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.gen_docs", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when the document is out of date")
    args = parser.parse_args(argv)
    target = ROOT / PROTOCOL_PATH
    current = target.read_text(encoding="utf-8")
    try:
        text = update(current)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 1
    if text == current:
        return 0
    if args.check:
        print(f"out of date: {PROTOCOL_PATH} (run python -m tools.gen_docs)", file=sys.stderr)
        return 1
    target.write_text(text, encoding="utf-8")
    print(f"wrote {PROTOCOL_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
