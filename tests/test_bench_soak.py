"""``cbhub bench soak --quick`` (tools/bench/soak.py): normal clients and the attackers of issue
12 against one hub, in real processes on 127.0.0.1 (mock provider, hub, attacker process).

Asserted: the normal clients' streams completed exactly in every phase (before, during and
after the attack), the hub answered ``/healthz`` at every sample, every attacker ran and got the
answer the hub's limits promise, the summary row has every field, and after the attackers left
the hub's client sockets and file descriptors are back at the baseline. Never a timing.
"""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from tools.bench import soak

#: Refusals a request may meet while the hub is over its memory budget or its limits (retryable).
REFUSALS = {"error hub_overloaded", "error too_many_completions"}


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("soak") / "soak.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "hub.cli", "bench", "soak", "--quick", "--quiet", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert out.exists(), done.stderr[-3000:]
    parsed = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    parsed.append({"returncode": done.returncode, "stderr": done.stderr[-3000:]})
    return parsed


def _summary(rows: list[dict]) -> dict:
    [summary] = [row for row in rows if row.get("row") == "summary"]
    return summary


def test_samples_cover_every_phase(rows: list[dict]) -> None:
    assert rows[0]["scenario"] == "conditions"
    samples = [row for row in rows if row.get("row") == "sample"]
    duration = _summary(rows)["duration_s"]
    assert {row["phase"] for row in samples} == set(soak.PHASES)
    assert [row["t_s"] for row in samples] == sorted(row["t_s"] for row in samples)
    for row in samples:
        assert row["scenario"] == "soak"
        assert {"t_s", "phase", "rss_bytes", "fds", "tasks", "client_sockets", "upstream_sockets",
                "healthz_ms", "cpu_s", "streams_completed"} <= set(row)
        assert row["rss_bytes"] > 0 and row["fds"] > 0
        assert row["phase"] == soak.phase_at(row["t_s"], duration)


def test_summary_has_every_field_and_the_run_is_ok(rows: list[dict]) -> None:
    summary = _summary(rows)
    assert set(soak.SUMMARY_KEYS) <= set(summary)
    assert set(summary["phases"]) == set(soak.PHASES)
    for stats in summary["phases"].values():
        assert set(soak.PHASE_KEYS) <= set(stats)
    assert set(summary["attacks"]) == set(soak.ATTACKS)
    assert summary["ok"] is True, summary
    assert rows[-1]["returncode"] == 0, rows[-1]["stderr"]


def test_normal_streams_complete_exactly_in_every_phase(rows: list[dict]) -> None:
    summary = _summary(rows)
    for phase, stats in summary["phases"].items():
        assert stats["streams_completed"] > 0, phase
        assert stats["streams_broken"] == 0 and stats["broken"] == {}, (phase, stats["broken"])
        assert stats["exact"] is True and stats["streams_completed"] == stats["streams_started"]
        assert stats["ttft_p50_ms"] is not None and stats["token_gap_p50_ms"] is not None
        assert stats["healthz_failures"] == 0, phase  # /healthz answered at every sample
    # Before the attack nothing is refused; after it, new work is admitted again.
    assert summary["phases"]["before"]["refused"] == {}
    assert summary["phases"]["after"]["refused"] == {}


def test_every_attacker_ran_and_got_the_promised_answer(rows: list[dict]) -> None:
    attacks = _summary(rows)["attacks"]
    for name in soak.ATTACKS:
        assert attacks[name]["sent"] >= 1, name
    assert "error invalid_workflow" in attacks["workflow_cycle"]["answers"]
    assert set(attacks["workflow_cycle"]["answers"]) <= {"error invalid_workflow"} | REFUSALS
    assert "error workflow_limit" in attacks["workflow_loop"]["answers"]
    assert set(attacks["workflow_loop"]["answers"]) <= {"error workflow_limit"} | REFUSALS
    assert "error provider_error" in attacks["failing"]["answers"]
    assert set(attacks["failing"]["answers"]) <= {"error provider_error"} | REFUSALS
    # Bounded replies: one 540 KB subscribe gets one invalid_message, 50,000 x system one ack.
    for flood in ("subscribe_flood", "system_flood"):
        assert attacks[flood]["max_reply_bytes"] <= 64 * 1024, flood
    assert set(attacks["subscribe_flood"]["answers"]) == {"error invalid_message"}
    assert set(attacks["system_flood"]["answers"]) == {"subscribed"}
    # The hub dealt with every client that did not read; it never wrote into a dead socket forever.
    assert not {answer for answer in attacks["memory"]["answers"] if answer.startswith("exception")}


def test_sockets_and_fds_return_to_the_baseline_after_the_attack(rows: list[dict]) -> None:
    summary = _summary(rows)
    clients = summary["settings"]["clients"]
    assert summary["client_sockets_baseline"] == clients + 1  # the normal clients and the observer
    assert summary["client_sockets_end"] == summary["client_sockets_baseline"]
    assert summary["fds_max"] > summary["fds_baseline"]  # the attack was seen
    assert summary["fds_excess_end"] is not None and summary["fds_excess_end"] <= soak.FDS_MARGIN


def test_half_open_sockets_are_reaped_by_the_header_timeout(rows: list[dict]) -> None:
    half_open = _summary(rows)["attacks"]["half_open"]
    assert half_open["opened"] >= 1
    if half_open["reaped_by_hub"] == 0:
        pytest.xfail("the hub does not time out request heads yet (http.header_timeout_s, issue 12): "
                     f"all {half_open['opened']} half-open sockets were held until the attacker left")
    # http.header_timeout_s is 2 s in the soak, 10 s by default: the soak's setting applies.
    assert half_open["reap_p50_s"] < 10
