"""``cbhub bench ingest`` runs end to end on tiny bodies and reports sane rows (no timing asserted)."""

from __future__ import annotations

import argparse
import json
import pathlib

import pytest

from tools.bench import ingest
from tools.bench.report import Reporter

TOKENS = 50

# Provider chunks the mock writes for TOKENS answer tokens (tools/mock_provider.py docstring):
# OpenAI: role chunk, one per token, finish chunk, usage chunk, [DONE]. Anthropic:
# message_start, content_block_start, ping, one delta per token, content_block_stop,
# message_delta, message_stop. Gemini: one per token and a final STOP chunk. Ollama: one line
# per token and the done line.
EXPECTED_CHUNKS = {
    "openai": TOKENS + 4,
    "anthropic": TOKENS + 6,
    "gemini-sse": TOKENS + 1,
    "gemini-array": TOKENS + 1,
    "ollama": TOKENS + 1,
}


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    ingest.add_arguments(parser, "ingest")
    return parser.parse_args(list(argv))


def test_ingest_quick_run_reports_every_format(tmp_path: pathlib.Path) -> None:
    args = _args("--quick", "--seconds", "0.02", "--tokens", str(TOKENS))
    out_path = tmp_path / "ingest.jsonl"
    with out_path.open("ab") as out:
        status = ingest.run(args, Reporter(out=out, quiet=True))
    assert status == 0
    rows = [json.loads(line) for line in out_path.read_bytes().splitlines()]

    ingest_rows = [row for row in rows if row["scenario"] == "ingest"]
    assert {(row["format"], row["reads"]) for row in ingest_rows} == {
        (name, reads) for name in ingest.FORMATS for reads in ("4096B", "per-chunk")
    }
    for row in ingest_rows:
        assert row["check"] == "ok", row
        assert row["provider_chunks"] == EXPECTED_CHUNKS[row["format"]], row
        assert row["events_out"] > 0
        assert row["passes"] >= 1
        assert row["chunks_per_s"] > 0 and row["bytes_per_s"] > 0
        if row["reads"] == "per-chunk":
            assert row["pieces"] == row["provider_chunks"]

    encode_rows = [row for row in rows if row["scenario"] == "encode"]
    assert {row["encoder"] for row in encode_rows} >= {"hub encode (msgspec)", "orjson.dumps(dict)"}
    for row in encode_rows:
        assert row["identical_bytes"] or row["equivalent_json"], row
        assert row["ns_per_event"] > 0


def test_a_broken_path_fails_the_run_instead_of_being_timed(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest, "expected_text", lambda tokens, seed=0: "not what the mock sent")
    out_path = tmp_path / "ingest.jsonl"
    with out_path.open("ab") as out:
        status = ingest.run(_args("--formats", "ollama", "--tokens", "5", "--seconds", "0.01"),
                            Reporter(out=out, quiet=True))
    assert status == 1
    rows = [json.loads(line) for line in out_path.read_bytes().splitlines()]
    ingest_rows = [row for row in rows if row["scenario"] == "ingest"]
    assert len(ingest_rows) == 2
    for row in ingest_rows:
        assert row["check"].startswith("text differs"), row
        assert "chunks_per_s" not in row  # not timed


def test_formats_option_rejects_unknown_names() -> None:
    assert _args("--formats", "ollama,openai").formats == ["ollama", "openai"]
    with pytest.raises(argparse.ArgumentTypeError, match="smoke-signals"):
        ingest._format_list("openai,smoke-signals")
