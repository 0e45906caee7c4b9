"""Redaction: patterns masked in text before it is stored or sent (docs/PROTOCOL.md "Redaction").

Pure (no asyncio, no clock). A :class:`Redactor` holds compiled :class:`Rule` objects: the
built-ins switched on by name (:data:`BUILTINS`: ``email``, ``phone``, ``credit_card`` with a
Luhn check, ``iban`` with the mod-97 check, ``api_key`` shapes) and the operator's own
``{name, pattern, replace}`` rules; a match is replaced by ``replace`` or ``[REDACTED:<name>]``.

Matching (the one definition both paths follow). From a position ``pos``, every rule looks for
its leftmost match starting at ``pos`` or later that its validator accepts (a candidate the
validator refuses is skipped and the rule searches again one character later); the match
that starts first wins, then the longest, then the rule listed first. It is replaced and the
scan goes on after it. An ``api_key`` match also swallows the key characters that follow it
(its *tail*), so keys longer than any bounded pattern are masked whole.

Streaming. :class:`StreamRedactor` (one per streamed field) gets the text in chunks and returns
only what no later chunk can change. Every rule's match is at most ``max_match_chars``
(``M``) characters long (checked by :func:`check_rules`, refused at config load otherwise)
and may look at most one character past its end. So whether a match starts at position
``s`` is decided once the text reaches ``s + M + 1`` characters: the redactor scans its
buffer, replaces the decided matches and emits the literal text up to ``len(buffer) - M``,
holding back the last ``M`` characters (a match could still start there or grow into it).
Invariant: for any text and any split into chunks,
``"".join(feed(c) for c in chunks) + flush() == Redactor.redact(text)`` (a hypothesis
property in tests/test_redaction.py). The cost is latency: streamed text reaches clients up
to ``M`` characters late, released by the next chunk or at the end of the field. Up to ``M``
already-emitted characters are kept as context for look-behinds and ``\\b``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "BUILTINS",
    "Rule",
    "RuleSpec",
    "Redactor",
    "StreamRedactor",
    "builtin_rule",
    "check_rules",
    "compile_redactor",
    "luhn_valid",
    "iban_valid",
    "max_width",
    "redact_value",
    "redact_messages",
]


class RuleSpec(Protocol):
    """A configured rule (hub.config.RedactionRule has this shape)."""

    name: str
    pattern: str
    replace: str | None


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled rule. ``validate`` (optional) accepts or refuses a candidate match's text;
    ``tail`` (optional) matches one character that extends a match (``api_key``); ``anchor``
    (optional) is text every match contains, at most ``anchor_back`` characters after its start
    (a match cannot start before the first anchor minus ``anchor_back``: the scan skips there)."""

    name: str
    regex: re.Pattern[str]
    replacement: str
    validate: Callable[[str], bool] | None = None
    tail: re.Pattern[str] | None = None
    anchor: re.Pattern[str] | None = None
    anchor_back: int = 0


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of a string of digits (card numbers)."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _card(text: str) -> bool:
    digits = text.replace(" ", "").replace("-", "")
    return 13 <= len(digits) <= 19 and digits.isdigit() and luhn_valid(digits)


def iban_valid(text: str) -> bool:
    """An IBAN (spaces allowed) of 15 to 34 characters whose mod-97 check is 1 (ISO 13616)."""
    code = text.replace(" ", "").upper()
    if not 15 <= len(code) <= 34 or not code.isalnum() or not code[:2].isalpha() or not code[2:4].isdigit():
        return False
    rearranged = code[4:] + code[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def _phone(text: str) -> bool:
    digits = sum(char.isdigit() for char in text)
    return (9 if text[0] == "0" else 8) <= digits <= 15  # a national 0... number: not a date


# The built-ins. Each fits in 64 characters (the default max_match_chars).
_BUILTIN_SOURCES: dict[str, tuple[str, Callable[[str], bool] | None, str | None]] = {
    # local part (up to 24) @ domain labels, a dot and a TLD of 2-12 letters.
    "email": (r"[A-Za-z0-9._%+-]{1,24}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,24}[A-Za-z0-9])?\.[A-Za-z]{2,12}(?![A-Za-z0-9])",
              None, None),
    # +CC and groups (international), (555) 234-5678 (North American), 0XX national numbers
    # with separators; 8 to 15 digits in all, never part of a longer number or word.
    "phone": (r"(?<![\w+])(?:\+[1-9]\d{0,2}(?:[ .-]?\(?\d{1,4}\)?){1,5}"
              r"|\(?[2-9]\d{2}\)?[ .-]?[2-9]\d{2}[ .-]\d{4}"
              r"|0\d{1,4}(?:[ .-]\d{2,8}){1,4})(?![\d])", _phone, None),
    # 13-19 digits, single spaces or dashes between them, Luhn-valid.
    "credit_card": (r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d])", _card, None),
    # country code, check digits, BBAN (groups of 4 with optional single spaces), mod-97.
    "iban": (r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?(?![A-Za-z0-9])",
             iban_valid, None),
    # OpenAI/Anthropic sk-..., AWS AKIA..., Google AIza..., GitHub tokens; the tail swallows the rest.
    "api_key": (r"(?<![A-Za-z0-9_-])(?:sk-[A-Za-z0-9_-]{20}|AKIA[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{35}"
                r"|gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{22})", None, r"[A-Za-z0-9_-]"),
}

# What every match of a built-in contains, and how far after the match's start at most.
_ANCHORS: dict[str, tuple[str, int]] = {
    "email": ("@", 24),
    "phone": (r"\d", 1),
    "credit_card": (r"\d", 0),
    "iban": (r"\d", 2),
    "api_key": ("sk-|AKIA|AIza|gh[pousr]_|github_pat_", 0),
}

#: The built-in rule names, in the order they are tried on a tie.
BUILTINS = ("api_key", "credit_card", "iban", "email", "phone")


def _default_replacement(name: str) -> str:
    return f"[REDACTED:{name}]"


def builtin_rule(name: str) -> Rule:
    """The compiled built-in rule ``name`` (KeyError for an unknown one)."""
    source, validate, tail = _BUILTIN_SOURCES[name]
    anchor, back = _ANCHORS[name]
    return Rule(name, re.compile(source), _default_replacement(name), validate,
                re.compile(tail) if tail else None, re.compile(anchor), back)


def max_width(pattern: str) -> int | None:
    """The longest text ``pattern`` can match (look-arounds not counted), or None when
    unbounded or unknown (read from the standard library's regex parser)."""
    try:
        from re import _parser  # type: ignore[attr-defined]  # CPython 3.11+

        _, high = _parser.parse(pattern).getwidth()
    except Exception:
        return None
    return None if high >= 1 << 16 else int(high)  # the parser's MAXREPEAT-capped "unbounded"


def check_rules(builtins: Iterable[str], rules: Iterable[RuleSpec], max_match_chars: int) -> str | None:
    """Why these rules cannot be streamed with ``max_match_chars``, or None when they can:
    an unknown built-in, a pattern that does not compile, matches the empty string, or can
    match more than ``max_match_chars`` characters (or an unbounded number)."""
    for name in builtins:
        if name not in _BUILTIN_SOURCES:
            return f"unknown built-in rule {name!r}; expected any of {', '.join(BUILTINS)}"
        width = max_width(_BUILTIN_SOURCES[name][0])
        if width is not None and width > max_match_chars:
            return (f"the built-in rule {name!r} can match {width} characters, more than "
                    f"redaction.max_match_chars ({max_match_chars}); raise it")
    for rule in rules:
        try:
            regex = re.compile(rule.pattern)
        except re.error as exc:
            return f"rule {rule.name!r}: pattern {rule.pattern!r} does not compile: {exc}"
        if regex.fullmatch(""):
            return f"rule {rule.name!r}: pattern {rule.pattern!r} matches the empty string"
        width = max_width(rule.pattern)
        if width is None:
            return (f"rule {rule.name!r}: pattern {rule.pattern!r} can match text of unbounded length; "
                    f"bound its repetitions ({{1,N}} instead of + or *) so a match fits in "
                    f"redaction.max_match_chars ({max_match_chars})")
        if width > max_match_chars:
            return (f"rule {rule.name!r}: pattern {rule.pattern!r} can match {width} characters, more than "
                    f"redaction.max_match_chars ({max_match_chars})")
    return None


class Redactor:
    """Compiled rules and the whole-text scan (module docstring, "Matching").

    Args:
        rules: the rules, in tie-breaking order.
        max_match_chars: the longest match a rule makes (the streaming hold-back).
    """

    def __init__(self, rules: Sequence[Rule], max_match_chars: int = 64) -> None:
        self.rules = tuple(rules)
        self.max_match_chars = max_match_chars
        unanchored = [rule for rule in self.rules if rule.anchor is None]
        self._any = _alternation(unanchored) if len(unanchored) > 1 else None
        # Where any match may be near: an anchor, or where an unanchored rule matches. Searched
        # one by one (a single-class or literal pattern is scanned fast by the engine; their
        # alternation is not). None: no fast path.
        self._triggers: list[re.Pattern[str]] | None = None
        self._back = max((rule.anchor_back for rule in self.rules), default=0)
        whole = self._any or (unanchored[0].regex if len(unanchored) == 1 else None)
        if not unanchored or whole is not None:
            anchors = list(dict.fromkeys(rule.anchor.pattern for rule in self.rules if rule.anchor is not None))
            singles = [a for a in anchors if a in (r"\d", "@")]
            others = [a for a in anchors if a not in singles]
            self._triggers = ([re.compile(f"[{''.join(singles)}]")] if singles else []) + (
                [re.compile("|".join(others))] if others else []) + ([whole] if whole is not None else [])

    def __bool__(self) -> bool:
        return bool(self.rules)

    def redact(self, text: str) -> str:
        """``text`` with every match replaced."""
        if not self.rules:
            return text
        out, pos, _ = self._scan(text, 0, len(text), final=True)
        return "".join(out) + text[pos:]

    def stream(self) -> StreamRedactor:
        """A new :class:`StreamRedactor` over these rules."""
        return StreamRedactor(self)

    def _candidate(self, rule: Rule, text: str, pos: int, horizon: int) -> re.Match[str] | None:
        """The rule's leftmost accepted match starting in ``[pos, horizon)``."""
        search = rule.regex.search
        validate = rule.validate
        if rule.anchor is not None:
            anchor = rule.anchor.search(text, pos)
            if anchor is None:
                return None
            pos = max(pos, anchor.start() - rule.anchor_back)
        while pos < horizon:
            match = search(text, pos)
            if match is None or match.start() >= horizon:
                return None
            if match.end() > match.start() and (validate is None or validate(match.group())):
                return match
            pos = match.start() + 1
        return None

    def _scan(self, text: str, pos: int, horizon: int, final: bool) -> tuple[list[str], int, Rule | None]:
        """Replace the matches starting before ``horizon`` from ``pos``; emit literal text up to
        ``horizon``. Returns the pieces, the position reached and the rule whose tail is still
        open at the end of ``text`` (streaming only)."""
        out: list[str] = []
        rules = self.rules
        end = len(text)
        any_rule = self._any
        triggers = self._triggers
        while pos < horizon:
            if triggers is not None:  # the common case: no rule can match before the horizon
                limit = horizon + self._back
                for trigger in triggers:
                    near = trigger.search(text, pos)
                    if near is not None and near.start() < limit:
                        break
                else:
                    out.append(text[pos:horizon])
                    return out, horizon, None
            # One scan finds where the first match of an unanchored rule may start (none before).
            unanchored = pos
            if any_rule is not None:
                first = any_rule.search(text, pos)
                unanchored = first.start() if first is not None and first.start() < horizon else horizon
            best: re.Match[str] | None = None
            best_rule: Rule | None = None
            for rule in rules:
                start = pos if rule.anchor is not None else unanchored
                match = self._candidate(rule, text, start, horizon if best is None else best.start() + 1)
                if match is None:
                    continue
                if best is None or match.start() < best.start() or (
                        match.start() == best.start() and match.end() > best.end()):
                    best, best_rule = match, rule
            if best is None or best_rule is None:
                out.append(text[pos:horizon])
                return out, horizon, None
            out.append(text[pos:best.start()])
            out.append(best_rule.replacement)
            pos = best.end()
            tail = best_rule.tail
            if tail is not None:
                while pos < end and tail.match(text, pos):
                    pos += 1
                if pos == end and not final:
                    return out, pos, best_rule
        return out, pos, None


class StreamRedactor:
    """One streamed field (content, reasoning, refusal): :meth:`feed` the chunks, then
    :meth:`flush`. Holds back at most ``max_match_chars`` characters (module docstring)."""

    __slots__ = ("_redactor", "_buffer", "_pos", "_tail", "_keep")

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._buffer = ""  # context (already emitted) + pending text
        self._pos = 0  # where the pending text starts in _buffer
        self._tail: Rule | None = None  # a match whose tail may go on in the next chunk
        self._keep = redactor.max_match_chars

    @property
    def pending(self) -> int:
        """Characters held back now."""
        return len(self._buffer) - self._pos

    def feed(self, delta: str) -> str:
        """Take the next chunk; return the text that no later chunk can change."""
        buffer = self._buffer + delta
        pos = self._pos
        out: list[str] = []
        if self._tail is not None:
            tail = self._tail.tail
            assert tail is not None
            while pos < len(buffer) and tail.match(buffer, pos):
                pos += 1
            if pos < len(buffer):
                self._tail = None
        if self._tail is None:
            horizon = len(buffer) - self._keep
            if horizon > pos:
                out, pos, self._tail = self._redactor._scan(buffer, pos, horizon, final=False)
        keep_from = max(0, pos - self._keep)  # context for look-behinds
        self._buffer = buffer[keep_from:]
        self._pos = pos - keep_from
        return "".join(out)

    def flush(self) -> str:
        """The end of the field: return everything still held, redacted."""
        buffer, pos = self._buffer, self._pos
        self._buffer, self._pos = "", 0
        if self._tail is not None:
            self._tail = None
            return ""  # only tail characters were pending: swallowed
        out, pos, _ = self._redactor._scan(buffer, pos, len(buffer), final=True)
        return "".join(out) + buffer[pos:]


def _alternation(rules: Sequence[Rule]) -> re.Pattern[str] | None:
    """One pattern that matches at a position exactly when some rule's pattern does (their
    alternation), to skip text no rule matches in one scan; None when the patterns cannot be
    joined (back-references, flags, repeated group names): the rules are then tried one by one."""
    return _alternation_of([rule.regex.pattern for rule in rules])


def _alternation_of(patterns: Sequence[str]) -> re.Pattern[str] | None:
    if not patterns or any(re.search(r"\\[1-9]|\(\?P=|\(\?[aiLmsux]+\)", pattern) for pattern in patterns):
        return None
    try:
        return re.compile("|".join(f"(?:{pattern})" for pattern in patterns))
    except re.error:
        return None


@functools.lru_cache(maxsize=16)
def _compile(builtins: tuple[str, ...], rules: tuple[tuple[str, str, str | None], ...],
             max_match_chars: int) -> Redactor:
    compiled = [builtin_rule(name) for name in BUILTINS if name in builtins]
    compiled += [Rule(name, re.compile(pattern), replace if replace is not None else _default_replacement(name))
                 for name, pattern, replace in rules]
    return Redactor(compiled, max_match_chars)


def compile_redactor(builtins: Iterable[str], rules: Iterable[RuleSpec], max_match_chars: int = 64) -> Redactor:
    """The :class:`Redactor` of a configuration (compiled once per distinct configuration).
    Built-ins are tried before the operator's rules on a tie."""
    return _compile(tuple(builtins), tuple((rule.name, rule.pattern, rule.replace) for rule in rules),
                    max_match_chars)


def redact_value(value: Any, redactor: Redactor) -> Any:
    """A JSON value with every string in it (not the object keys) redacted."""
    if isinstance(value, str):
        return redactor.redact(value)
    if isinstance(value, list):
        return [redact_value(item, redactor) for item in value]
    if isinstance(value, dict):
        return {key: redact_value(item, redactor) for key, item in value.items()}
    return value


def redact_messages(messages: Sequence[Any], redactor: Redactor) -> list[Any]:
    """Chat messages (protocol.messages.ChatMessage) with their text redacted: string
    contents, the ``text`` of content parts, and tool-call arguments."""
    import msgspec  # the messages are msgspec structs

    redacted = []
    for message in messages:
        changes: dict[str, Any] = {}
        content = message.content
        if isinstance(content, str):
            changes["content"] = redactor.redact(content)
        elif isinstance(content, list):
            changes["content"] = [
                {**part, "text": redactor.redact(part["text"])}
                if isinstance(part, dict) and isinstance(part.get("text"), str) else part
                for part in content
            ]
        if message.tool_calls:
            changes["tool_calls"] = [_redact_tool_call(call, redactor) for call in message.tool_calls]
        redacted.append(msgspec.structs.replace(message, **changes) if changes else message)
    return redacted


def _redact_tool_call(call: Any, redactor: Redactor) -> Any:
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        return call
    function = call["function"]
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        return {**call, "function": {**function, "arguments": redactor.redact(arguments)}}
    return {**call, "function": {**function, "arguments": redact_value(arguments, redactor)}}
