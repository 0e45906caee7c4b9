"""The Python SDK (hub/client/) is a package of its own: it imports nothing of the hub server
and not aiohttp, its state module does no I/O, and every SDK error has one root."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest

import hub.client
from hub.client import errors
from tests.support import ROOT

CLIENT_DIR = ROOT / "hub" / "client"

#: What hub/client/ may import besides the standard library: itself, the shared wire
#: definitions (protocol/), and its two runtime dependencies.
ALLOWED_ROOTS = {"hub.client", "protocol", "websockets", "msgspec"}

#: What the I/O-free state module may import.
STATE_ALLOWED = {"__future__", "typing", "hub.client.errors", "hub.client.results", "protocol.messages"}


def imports_of(path: str) -> set[str]:
    """Every module a file imports (absolute names, ``from x import y`` as ``x``)."""
    tree = ast.parse((CLIENT_DIR / path).read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            names.add(node.module or "")
    return names


@pytest.mark.parametrize("path", sorted(p.name for p in CLIENT_DIR.glob("*.py")))
def test_the_sdk_imports_no_server_module(path: str) -> None:
    for name in imports_of(path):
        root = name.split(".")[0]
        if root in sys.stdlib_module_names or name == "__future__":
            continue
        assert any(name == allowed or name.startswith(allowed + ".") for allowed in ALLOWED_ROOTS), (
            f"hub/client/{path} imports {name}")


def test_the_state_module_does_no_io() -> None:
    assert imports_of("state.py") <= STATE_ALLOWED


SCRIPT = r"""
import json, sys
sys.modules["aiohttp"] = None  # importing aiohttp now raises ImportError, as where it is absent
import hub.client
from hub.client import HubClient, CircuitBreakerStream, StreamConfig
client = HubClient("ws://127.0.0.1:1/ws/stream")
stream = CircuitBreakerStream(StreamConfig(ws_url="ws://127.0.0.1:1/ws/stream"))
server = sorted(name for name in sys.modules
                if name in ("hub.app", "hub.config", "hub.multiplexer", "hub.connection", "hub.completions",
                            "hub.providers", "hub.workflows", "hub.resilience", "hub.cli", "tools")
                or name.startswith(("aiohttp.", "hub.transports", "tools.")))
print(json.dumps({"server": server, "client": type(client).__name__, "stream": type(stream).__name__}))
"""


def test_import_hub_client_works_without_aiohttp() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report == {"server": [], "client": "HubClient", "stream": "CircuitBreakerStream"}


def test_every_sdk_error_has_one_root() -> None:
    exported = [getattr(hub.client, name) for name in hub.client.__all__]
    error_classes = [value for value in exported if isinstance(value, type) and issubclass(value, BaseException)]
    assert error_classes and all(issubclass(cls, errors.HubClientError) for cls in error_classes)
    # Argument errors stay the built-in kinds too.
    assert issubclass(errors.InvalidArgumentError, ValueError)
    assert issubclass(errors.UnknownOptionError, TypeError)
    for name in errors.__all__:  # and the tree in the docstring names each of them
        assert name in (errors.__doc__ or "")
