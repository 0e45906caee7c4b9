"""Checks shared by the request decoders of the hub's HTTP front doors
(protocol/anthropic_compat.py for ``/v1/messages``, protocol/responses_compat.py for
``/v1/responses``): a field is carried into the hub's :class:`~protocol.messages.Completion`
or refused by name (docs/PROTOCOL.md: nothing is dropped silently). Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

from protocol.errors import ProtocolError
from protocol.messages import Completion

__all__ = ["COMPLETION_FIELDS", "FieldRefused", "carry", "check_keys", "text"]

#: The fields of the hub's completion request (msgspec field names).
COMPLETION_FIELDS = frozenset(Completion.__struct_fields__)


class FieldRefused(ProtocolError):
    """A request field that cannot be carried or is malformed (code ``invalid_message``); the
    message is ``"`<param>` <why>"``.

    Attributes:
        param: the field's path in the request (``tools[0].type``); OpenAI's error ``param``.
    """

    def __init__(self, param: str, why: str) -> None:
        super().__init__(f"`{param}` {why}", "invalid_message")
        self.param = param


def carry(extra: dict[str, Any], name: str, value: Any, field: str) -> None:
    """Put ``value`` in ``extra`` as the completion's ``name``.

    Raises:
        FieldRefused: the completion has no field ``name`` (``field`` is the request's path).
    """
    if name not in COMPLETION_FIELDS:
        raise FieldRefused(field, f"cannot be carried: the hub's completion request has no `{name}`; leave it out")
    extra[name] = value


def check_keys(block: dict[str, Any], allowed: frozenset[str], where: str) -> None:
    """Refuse the first key of ``block`` (in name order) that is not in ``allowed``.

    Raises:
        FieldRefused: naming ``<where>.<key>``.
    """
    unknown = sorted(set(block) - allowed)
    if unknown:
        raise FieldRefused(f"{where}.{unknown[0]}", "cannot be carried; leave it out")


def text(value: Any, where: str) -> str:
    """``value`` when it is a string.

    Raises:
        FieldRefused: it is not (naming ``where``).
    """
    if not isinstance(value, str):
        raise FieldRefused(where, "must be a string")
    return value
