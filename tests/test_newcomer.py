"""What a newcomer hit (issue 14, item 6): ``cbhub serve`` that cannot listen says so in one line
and exits 2; ``cbhub --version``; README.md's commands run in the virtualenv it tells the reader
to activate; README.md's wscat session is a run of today's hub (tools/gen_docs.py); sdk_js's
test command with a relative ``CBHUB_PYTHON``; the LICENSE file."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import aiohttp
import pytest

from hub.app import CannotListen, run_hub
from hub.config import HubConfig
from tools import gen_docs

ROOT = Path(__file__).resolve().parent.parent
#: Safety net for a child process; never a measured timing.
CHILD_TIMEOUT_S = 60


def cbhub(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m hub.cli ARGS`` as a child process, from the checkout, without the caller's
    CBHUB_* variables, with every ResourceWarning shown (an unclosed aiohttp session is one)."""
    environ = {key: value for key, value in os.environ.items() if not key.startswith("CBHUB_")}
    environ.update(env)
    return subprocess.run([sys.executable, "-W", "always::ResourceWarning", "-m", "hub.cli", *args],
                          cwd=ROOT, env=environ, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)


def assert_one_line_exit_2(result: subprocess.CompletedProcess[str], first_words: str) -> str:
    assert result.returncode == 2, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and "Unclosed" not in result.stderr
    assert result.stdout == ""
    assert lines[0].startswith(first_words), lines[0]
    return lines[0]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port of 127.0.0.1 on which this process listens."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


# cbhub serve that cannot listen.


def test_serve_on_a_taken_port_says_so_in_one_line_and_exits_2(taken_port: int) -> None:
    line = assert_one_line_exit_2(cbhub("serve", "--port", str(taken_port)),
                                  f"cbhub: cannot listen on 127.0.0.1:{taken_port}: address already in use")
    assert "--port" in line  # what to do about it


def test_serve_on_a_host_name_that_does_not_resolve_exits_2() -> None:
    # .invalid never resolves (RFC 6761); a non-loopback host needs auth or this flag first.
    assert_one_line_exit_2(cbhub("serve", "--host", "no-such-host.invalid", "--port", "0",
                                 CBHUB_AUTH_ALLOW_ANONYMOUS="true"),
                           "cbhub: cannot listen on no-such-host.invalid:0: the host name does not resolve")


def test_serve_on_an_address_of_another_machine_exits_2() -> None:
    # 192.0.2.1 is TEST-NET-1 (RFC 5737): never an address of this machine.
    assert_one_line_exit_2(cbhub("serve", "--host", "192.0.2.1", "--port", "0", CBHUB_AUTH_ALLOW_ANONYMOUS="true"),
                           "cbhub: cannot listen on 192.0.2.1:0: not an address of this machine")


def test_cannot_listen_words() -> None:
    taken = CannotListen("::1", 8765, OSError(errno.EADDRINUSE, "Address already in use"))
    assert str(taken).startswith("cannot listen on [::1]:8765: address already in use")
    assert isinstance(taken, OSError) and taken.errno == errno.EADDRINUSE
    assert str(CannotListen("0.0.0.0", 80, OSError(errno.EACCES, "Permission denied"))) == \
        "cannot listen on 0.0.0.0:80: permission denied (ports below 1024 need privileges)"
    assert str(CannotListen("0.0.0.0", 8080, OSError(errno.EMFILE, "Too many open files"))) == \
        "cannot listen on 0.0.0.0:8080: too many open files"
    resolve = CannotListen("x.invalid", 1, socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
    assert str(resolve) == "cannot listen on x.invalid:1: the host name does not resolve (Name or service not known)"


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback address here")
async def test_the_url_of_a_hub_on_an_ipv6_host_has_brackets() -> None:
    # cbhub serve --host ::1 printed http://::1:8765, which no client takes.
    async with run_hub(HubConfig(host="::1", port=0)) as hub, aiohttp.ClientSession() as http:
        assert re.fullmatch(r"http://\[::1\]:\d+", hub.url), hub.url
        async with http.get(hub.url + "/healthz") as response:
            assert response.status == 200


def test_version_is_the_installed_packages() -> None:
    result = cbhub("--version")
    assert result.returncode == 0, result
    installed = version("circuit-breaker-hub")
    assert result.stdout == f"cbhub {installed}\n"
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    assert installed == declared, "the virtualenv's install is older than pyproject.toml: pip install -e ."


# README.md.


def test_readme_commands_run_in_the_virtualenv_it_says_to_activate() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    activate = lines.index("    source .venv/bin/activate")
    # A command: a line (indented, after "$ ", or in a fence) that starts with cbhub, python or pip.
    bare = [number for number, line in enumerate(lines)
            if re.match(r"^(?: {4,}|\$ )?(?:cbhub|python|pip) ", line) and "python3 -m venv" not in line]
    assert len(bare) >= 15, "few commands found: the pattern is stale"
    assert min(bare) > activate, [lines[number] for number in bare if number < activate]
    # Before it, only the two commands, which name the virtualenv's programs.
    before = [line for line in lines[:activate] if re.match(r"^ {4,}\S", line) and ".venv/bin/" in line]
    assert before[0] == "    python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/cbhub demo"
    assert before[1] == "    .venv/bin/python -m pytest -q"


async def test_readme_examples_are_a_run_of_todays_hub() -> None:
    readme = (ROOT / gen_docs.README_PATH).read_text(encoding="utf-8")
    run = await gen_docs.capture_readme_run()
    types = [json.loads(frame)["type"] for frame in run.wscat]
    assert types[0] == "subscribed" and types[-1] == "completed" and set(types[1:-1]) == {"content_chunk"}
    assert run.sse.endswith("data: [DONE]\n\n") and json.loads(run.healthz)["status"] == "ok"
    assert gen_docs.update_readme(readme, run) == readme, "README.md is out of date: run python -m tools.gen_docs"
    assert gen_docs.same_session(gen_docs.documented(readme, "wscat session"), run.wscat)
    assert gen_docs.same_sse(gen_docs.documented(readme, "curl sse"), run.sse)
    assert run.eventsource.startswith("id: comp-")
    assert gen_docs.same_sse(gen_docs.documented(readme, "curl eventsource"), run.eventsource)
    assert gen_docs.same_healthz(gen_docs.documented(readme, "curl healthz"), run.healthz)
    # A stale example is rewritten from the run (the transcript README.md showed before issue 14).
    stale = readme.replace(',"attempts":[{"provider":"openai","model":"gpt-4o-mini"}]}', "}", 1)
    assert stale != readme
    rewritten = gen_docs.update_readme(stale, run)
    assert rewritten != stale and gen_docs.documented(rewritten, "wscat session") == run.wscat


def test_same_session_sets_aside_only_what_timing_and_chance_decide() -> None:
    frames = [
        '{"type":"subscribed","channels":["completion:a"],"completionId":"a","epochs":{"completion:a":"x1"}}',
        '{"type":"content_chunk","completionId":"a","seq":1,"content":"one "}',
        '{"type":"content_chunk","completionId":"a","seq":2,"content":"two three "}',
        '{"type":"completed","completionId":"a","seq":3,"finishReason":"stop","ttftMs":1.5}',
    ]
    split_otherwise = [
        frames[0].replace('"x1"', '"y2"'),
        '{"type":"content_chunk","completionId":"a","seq":1,"content":"one two "}',
        '{"type":"content_chunk","completionId":"a","seq":2,"content":"three "}',
        '{"type":"completed","completionId":"a","seq":3,"finishReason":"stop","ttftMs":9.0}',
    ]
    assert gen_docs.same_session(frames, split_otherwise)
    assert not gen_docs.same_session(frames, [*frames[:3], frames[3].replace('"stop"', '"length"')])
    assert not gen_docs.same_session(frames, [*frames[:2], frames[2].replace("three", "four"), frames[3]])
    assert not gen_docs.same_session(frames, [*frames[:3], frames[3].replace(',"ttftMs":1.5', "")])
    assert not gen_docs.same_session(frames, [frames[0].replace(',"epochs":{"completion:a":"x1"}', ""), *frames[1:]])
    gap = [*frames[:3], frames[3].replace('"seq":3', '"seq":4')]
    assert not gen_docs.same_session(gap, frames)
    assert not gen_docs.same_session(["not json"], frames)


def sse(*chunks: str, chunk_id: str = "chatcmpl-comp-0a1b", created: int = 1) -> str:
    head = f'{{"id":"{chunk_id}","object":"chat.completion.chunk","created":{created},"model":"m","choices":'
    return "".join(f"data: {head}{chunk}}}\n\n" for chunk in chunks) + "data: [DONE]\n\n"


def test_same_sse_sets_aside_ids_clock_and_where_text_splits() -> None:
    text = '[{"index":0,"delta":{"content":"%s"},"finish_reason":null}]'
    stop = '[{"index":0,"delta":{},"finish_reason":"stop"}]'
    documented = sse(text % "one two ", stop)
    assert gen_docs.same_sse(documented, sse(text % "one ", text % "two ", stop, chunk_id="chatcmpl-comp-9f9f",
                                             created=2))
    assert not gen_docs.same_sse(documented, sse(text % "one three ", stop))
    assert not gen_docs.same_sse(documented, sse(text % "one two ", stop.replace("stop", "length")))
    assert not gen_docs.same_sse(documented, sse(text % "one two ", stop, chunk_id="chatcmpl-comp-0a1b-1"))
    assert not gen_docs.same_sse(documented, sse(text % "one two ", stop)[:-len("data: [DONE]\n\n")])
    with_event_id = "id: comp-0a1b\n" + documented
    assert gen_docs.same_sse(with_event_id, "id: comp-9c9c\n" + documented)
    assert not gen_docs.same_sse(with_event_id, "id: comp-9c9c-1\n" + documented)
    assert not gen_docs.same_sse(with_event_id, documented)
    assert not gen_docs.same_healthz('{"status": "ok", "pid": 1}', '{"status": "ok", "pid": 2, "node": null}')
    assert gen_docs.same_healthz('{"status": "ok", "pid": 1}', '{"status": "ok", "pid": 2}')


# sdk_js's test command.


def test_sdk_js_readme_command_resolves_a_relative_python_where_it_was_typed() -> None:
    command = "cd sdk_js && npm ci && CBHUB_PYTHON=../.venv/bin/python npm test"
    assert f"    {command}" in (ROOT / "sdk_js" / "README.md").read_text(encoding="utf-8").splitlines()
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (the sdk_js tests need it too)")
    script = ("import { PYTHON, resolvePython } from './test/support.js';"
              "console.log(JSON.stringify([PYTHON, resolvePython('python3.12'), resolvePython('./py', '/x/y')]));")
    environ = {**os.environ, "CBHUB_PYTHON": "../.venv/bin/python", "INIT_CWD": str(ROOT / "sdk_js")}
    result = subprocess.run([node, "--input-type=module", "-e", script], cwd=ROOT / "sdk_js", env=environ,
                            capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [str(ROOT / ".venv" / "bin" / "python"), "python3.12", "/x/y/py"]


# LICENSE.


def test_license_is_the_apache_license_pyproject_names() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.split()[:5] == ["Apache", "License", "Version", "2.0,", "January"]
    assert "END OF TERMS AND CONDITIONS" in text
    assert json.loads((ROOT / "sdk_js" / "package.json").read_text(encoding="utf-8"))["license"] == "Apache-2.0"
