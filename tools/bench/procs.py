"""The processes of a benchmark run: mock provider, hub, reference server, load generators.

Each server runs as its own child process on 127.0.0.1 with port 0 and announces its URL on
its first line of stdout (``... listening on http://127.0.0.1:PORT``); :class:`ServerProcess`
waits for that line. CPU time and memory are read from the operating system's accounting of
that process (psutil: user + system CPU seconds, resident set size; peak RSS from Linux's
``VmHWM``), never estimated from the client side.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import signal
import sys
from typing import Any

import psutil

from protocol.providers import PROVIDERS

__all__ = ["ServerProcess", "start_mock", "start_hub", "hub_env"]

_URL = re.compile(rb"listening on (http://[0-9.]+:\d+)")


class ServerProcess:
    """A child server process and its resource accounting.

    Args:
        name: label for messages (``hub``, ``mock``, ``limit``).
        argv: the command line (the first item is the program).
        env: extra environment variables.
        startup_timeout_s: how long to wait for the ``listening on`` line, in seconds.

    Raises (from :meth:`start`):
        RuntimeError: the process exited or did not announce its URL in time.
    """

    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None,
                 startup_timeout_s: float = 30.0) -> None:
        self.name = name
        self.argv = argv
        self.env = {**os.environ, **(env or {})}
        self.startup_timeout_s = startup_timeout_s
        self.process: asyncio.subprocess.Process | None = None
        self.url = ""
        self._ps: psutil.Process | None = None
        self._drain: asyncio.Task[None] | None = None

    async def start(self) -> ServerProcess:
        """Start the process and wait until it listens; sets :attr:`url`."""
        self.process = await asyncio.create_subprocess_exec(
            *self.argv, env=self.env, stdout=asyncio.subprocess.PIPE, stderr=None,
        )
        assert self.process.stdout is not None
        try:
            async with asyncio.timeout(self.startup_timeout_s):
                while True:
                    line = await self.process.stdout.readline()
                    if not line:
                        raise RuntimeError(f"{self.name} exited before listening (status {await self.process.wait()})")
                    match = _URL.search(line)
                    if match:
                        self.url = match.group(1).decode()
                        break
        except BaseException:
            await self.stop()
            raise
        self._ps = psutil.Process(self.process.pid)
        self._drain = asyncio.create_task(self._drain_stdout())
        return self

    async def _drain_stdout(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        while await self.process.stdout.read(65536):
            pass

    def cpu_s(self) -> float:
        """User + system CPU time the process has used so far, in seconds."""
        assert self._ps is not None
        times = self._ps.cpu_times()
        return times.user + times.system

    def cpu_system_s(self) -> float:
        """System (kernel) CPU time the process has used so far, in seconds: system calls,
        socket work and wake-ups done on its behalf."""
        assert self._ps is not None
        return self._ps.cpu_times().system

    def rss_bytes(self) -> int:
        """Current resident set size, in bytes."""
        assert self._ps is not None
        return self._ps.memory_info().rss

    def peak_rss_bytes(self) -> int | None:
        """Peak resident set size (Linux ``VmHWM``), in bytes; None where unavailable."""
        assert self.process is not None
        try:
            with open(f"/proc/{self.process.pid}/status", "rb") as status:
                for line in status:
                    if line.startswith(b"VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(5.0):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()
        if self._drain is not None:
            self._drain.cancel()

    async def __aenter__(self) -> ServerProcess:
        return await self.start()

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.stop()


def start_mock(**options: Any) -> ServerProcess:
    """The mock provider (hub/testing/mock_provider.py) on a free port, on uvloop when it is
    installed (the upstream should take as little of the machine as it can); ``options``
    become ``--key value`` flags (e.g. ``tokens=100``)."""
    argv = [sys.executable, "-m", "hub.testing.mock_provider", "--port", "0"]
    if "loop" not in options and importlib.util.find_spec("uvloop") is not None:
        options["loop"] = "uvloop"
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return ServerProcess("mock", argv)


#: The HS256 secret of benchmark hubs run with ``--auth jwt`` (a benchmark, not a deployment).
BENCH_JWT_SECRET = "bench-secret-of-at-least-32-bytes-0123456789"


def bench_auth(auth: str) -> tuple[dict[str, Any], str]:
    """``(hub settings, query string)`` for a benchmark hub with ``auth`` (``none`` or
    ``jwt``): under ``jwt`` the hub requires HS256 tokens and every client presents the same
    valid one as ``?token=`` on the upgrade (one subject: the owner of every stream)."""
    if auth == "none":
        return {}, ""
    import time

    import jwt

    token = jwt.encode({"sub": "bench", "exp": int(time.time()) + 3600}, BENCH_JWT_SECRET, algorithm="HS256")
    return {"auth_mode": "jwt", "jwt_secret": BENCH_JWT_SECRET}, f"token={token}"


def hub_env(mock_url: str, **config: Any) -> dict[str, str]:
    """Environment for a hub whose every provider points at the mock provider at ``mock_url``;
    ``config`` adds ``CBHUB_<KEY>`` settings (e.g. ``flush_interval_ms=25``)."""
    env: dict[str, str] = {}
    for spec in PROVIDERS.values():  # every provider of the registry (protocol/providers/)
        if spec.api_key_env:
            env[spec.api_key_env[0]] = "bench-key"
        env[spec.base_url_env] = spec.base_url_on(mock_url)
    for key, value in config.items():
        env[f"CBHUB_{key.upper()}"] = str(value)
    return env


def start_hub(mock_url: str, loop: str = "asyncio", **config: Any) -> ServerProcess:
    """``cbhub serve`` on a free port against the mock provider (see :func:`hub_env`).

    Args:
        loop: ``asyncio`` or ``uvloop`` (``cbhub serve --loop``).
    """
    argv = [sys.executable, "-m", "hub.cli", "serve", "--port", "0", "--log-level", "WARNING", "--loop", loop]
    config.setdefault("shutdown_drain_timeout_s", 0)  # a benchmark's leftovers need no graceful drain
    return ServerProcess("hub", argv, hub_env(mock_url, **config))
