"""Every preset shipped in hub/presets starts a hub: its config loads, and a real
``cbhub serve --preset NAME --port 0`` answers ``/healthz`` and stops on SIGTERM with exit 0.

The high_performance preset runs on uvloop, a regular dependency where it installs (not on
Windows): after the README's plain install, that preset must start too (issue 11, "Also")."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from hub.config import KEYS, PRESETS_DIR, HubConfig, preset_names

SHIPPED = sorted(path.stem for path in PRESETS_DIR.glob("*.yaml"))
START_TIMEOUT_S = 30.0


def test_every_shipped_file_is_a_preset() -> None:
    assert SHIPPED and preset_names() == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_preset_config_loads(name: str) -> None:
    config = HubConfig.load(preset=name, environ={})
    assert config != HubConfig()  # the preset changes something


@pytest.mark.skipif(sys.platform == "win32", reason="uvloop is not installed on Windows")
def test_uvloop_is_installed_with_the_hub() -> None:
    import uvloop

    assert uvloop.new_event_loop is not None


def _environ() -> dict[str, str]:
    """os.environ without any variable the hub reads, so only the preset and the flags count."""
    variables = {name for key in KEYS for name in key.env}
    return {k: v for k, v in os.environ.items() if k not in variables}


@pytest.mark.parametrize("name", SHIPPED)
async def test_cbhub_serve_with_the_preset_answers_healthz_and_stops_on_sigterm(name: str, tmp_path: Path) -> None:
    # The working directory is a temporary one: the debug preset writes its dead-letter file
    # there. The package is importable from anywhere (installed, editable in a checkout).
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hub.cli", "serve", "--preset", name, "--port", "0",
        cwd=tmp_path, env=_environ(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    # stderr is read all along (the debug preset logs there at DEBUG; a full pipe would block it).
    errors_read = asyncio.create_task(process.stderr.read())
    try:
        line = (await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT_S)).decode()
        if "listening on " not in line:
            await asyncio.wait_for(process.wait(), START_TIMEOUT_S)
            errors = (await errors_read).decode()
            pytest.fail(f"preset {name}: cbhub serve exited {process.returncode}: {line}{errors}")
        url = line.split("listening on ")[1].split()[0]
        async with aiohttp.ClientSession() as session, session.get(url + "/healthz") as response:
            assert response.status == 200
            assert (await response.json())["status"] == "ok"
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), START_TIMEOUT_S) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await errors_read
