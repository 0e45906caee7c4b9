"""The mock provider as part of the product (hub/testing/), its old import path, and the
``cbhub`` commands that come from dev tooling through the ``cbhub.commands`` entry point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hub import cli
from hub.config import HubConfig
from hub.testing import mock_provider
from protocol.providers import PROVIDERS

ROOT = Path(__file__).resolve().parents[1]


def test_old_import_path_is_the_same_module() -> None:
    import tools.mock_provider as old

    assert old is mock_provider  # the shim replaces itself with the real module


async def test_mock_points_every_registered_provider_at_itself() -> None:
    async with mock_provider.MockProvider() as mock:
        urls = mock.base_urls()
        assert set(urls) == set(PROVIDERS)
        assert urls["openai"] == mock.url + "/v1" and urls["ollama"] == mock.url
        config = HubConfig(port=0, **mock.hub_overrides())
        for name, spec in PROVIDERS.items():
            assert config.provider_settings(name).base_url == urls[name]
            assert mock.hub_environment()[spec.base_url_env] == urls[name]


@pytest.mark.parametrize("module", ["hub.testing.mock_provider", "tools.mock_provider"])
def test_mock_provider_runs_as_a_module(module: str) -> None:
    result = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "cbhub mock-provider" in result.stdout


def test_cbhub_mock_provider_is_built_in(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["mock-provider", "--help"])
    assert info.value.code == 0
    assert "cbhub mock-provider" in capsys.readouterr().out


def test_plugin_commands_come_from_the_entry_point_group(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    class Entry:
        name = "hello"

        def load(self) -> Any:
            def command(argv: list[str]) -> int:
                calls.append(argv)
                return 7

            return command

    def entry_points(*, group: str, name: str) -> list[Entry]:
        assert group == cli.COMMAND_GROUP
        return [Entry()] if name == "hello" else []

    monkeypatch.setattr("importlib.metadata.entry_points", entry_points)
    assert cli.main(["hello", "a", "b"]) == 7
    assert calls == [["a", "b"]]


def test_bench_without_tools_says_so(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    class Missing:
        name = "bench"

        def load(self) -> Any:
            raise ModuleNotFoundError("No module named 'tools'")

    monkeypatch.setattr("importlib.metadata.entry_points", lambda *, group, name: [Missing()])
    assert cli.main(["bench", "fanout"]) == 2
    error = capsys.readouterr().err
    assert "cbhub bench: not installed" in error and "tools/bench" in error
    monkeypatch.setattr("importlib.metadata.entry_points", lambda *, group, name: [])
    assert cli.main(["bench"]) == 2
    assert "cbhub.commands" in capsys.readouterr().err


def test_bench_is_declared_as_an_entry_point() -> None:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert '[project.entry-points."cbhub.commands"]\nbench = "tools.bench.cli:main"' in text
