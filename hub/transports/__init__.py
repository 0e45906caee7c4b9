"""Transports: thin adapters between a wire format and a :class:`hub.session.Session`.

- :mod:`hub.transports.websocket`: ``GET /ws/stream``, the hub's own protocol.
- :mod:`hub.transports.openai_sse`: the OpenAI-compatible HTTP API under ``/v1/``.

Each one builds an :class:`hub.outbox.Outbox` subclass (how its bytes reach the socket) and a
session, feeds the session what the client sends and leaves every protocol rule to it.
"""
