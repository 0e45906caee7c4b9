#!/bin/sh
# The full benchmark suite as run for docs/BENCHMARKS.md (about 10 minutes on 2 cores).
# Usage: tools/bench/run_all.sh OUTDIR [LITELLM_BINARY]
# Run it on an otherwise idle machine; every scenario appends JSON lines to OUTDIR/*.jsonl.
set -eu
out=${1:?usage: tools/bench/run_all.sh OUTDIR [LITELLM_BINARY]}
litellm=${2:-litellm}
py=${PYTHON:-python}
mkdir -p "$out"
bench() { name=$1; shift; echo "== cbhub bench $*" >&2; $py -m hub.cli bench "$@" --out "$out/$name.jsonl"; }
bench ingest ingest
bench fanout fanout --shape 10x100 --shape 1000x1 --tokens 200 --coalesce both
bench fanout-uvloop fanout --servers hub --loop uvloop --shape 10x100 --shape 1000x1 --tokens 200
bench fanout-batch fanout --servers hub --batch --shape 10x100 --shape 1000x1 --tokens 200
bench fanout-burst fanout --servers hub,limit --coalesce both --burst 8 --shape 10x100 --shape 1000x1 --tokens 800
bench sweep fanout --shape 10x1 --shape 100x1 --shape 250x1 --shape 500x1 --shape 1000x1 --rate 50 --tokens 250 --coalesce both
bench connections connections --counts 1000,5000,10000
bench sse sse --litellm "$litellm"
$py -m tools.bench.plot "$out/sweep.jsonl" --png docs/fanout.png --title "$(date -u +%F), 2 cores, hub + mock provider + load generator on one machine"
