"""``cbhub bench``: the benchmark suite of circuit-breaker-hub (docs/BENCHMARKS.md).

Scenarios (one module each): ``fanout``, ``connections``, ``ingest``, ``limit`` (run inside
``fanout`` as its reference) and ``sse``. Every scenario writes its results as JSON lines
(stdout, or ``--out FILE``) and a table on the terminal (stderr); see :mod:`tools.bench.report`.
The hub, the mock provider and the load generator run in separate processes on 127.0.0.1
(:mod:`tools.bench.procs`). Benchmarks measure; the test suite never asserts timings.
"""
