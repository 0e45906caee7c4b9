"""The stream testing framework that ships with the hub.

:mod:`hub.testing.mock_provider` is a mock LLM provider that speaks every wire format the hub
reads (protocol/providers/) on one port, with per-request directives for pacing, reasoning,
tool calls, errors, truncation and replays. ``cbhub demo``, ``cbhub mock-provider``, the test
suite, the JS SDK tests and ``cbhub bench`` use it instead of a real provider.
"""
