"""Transports: thin adapters between a wire format and a :class:`hub.session.Session`.

- :mod:`hub.transports.websocket`: ``GET /ws/stream``, the hub's own protocol.
- :mod:`hub.transports.http_stream`: the run loop every HTTP front door shares.
- :mod:`hub.transports.openai_sse`: the OpenAI-compatible Chat Completions API under ``/v1/``.
- :mod:`hub.transports.anthropic_messages`: the Anthropic Messages API, ``POST /v1/messages``.
- :mod:`hub.transports.openai_responses`: the OpenAI Responses API, ``POST /v1/responses``.

Each one builds an :class:`hub.outbox.Outbox` subclass (how its bytes reach the socket) and a
session, feeds the session what the client sends and leaves every protocol rule to it.
"""
