"""The benchmark harness's pure parts: output parsing, medians and ratios, tables, Zipf.

No process is started and nothing is timed: these check that the numbers the harness
prints are computed right from what the tools report.
"""

from __future__ import annotations

import collections

import pytest

from bench.harness import benchmark_argv, rotated, sized_requests
from bench.profiling import frame_label, parse_pyspy_raw, pstats_costs, top_frames
from bench.results import (
    BenchmarkOutputError,
    Cell,
    Run,
    build_table,
    default_workloads,
    parse_benchmark_csv,
    ratio,
    render_markdown,
    render_text,
    select_workloads,
    summarize,
    table_cells,
)
from bench.skewed import load_calls, node_shares, parse_commandstats
from bench.systems import System, parse_proc_stat, twemproxy_config
from bench.zipf import ZipfSampler, key_name

CSV_7 = (
    '"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",'
    '"p99_latency_ms","max_latency_ms"\n'
    '"SET","48780.49","0.589","0.168","0.503","1.007","2.591","2.935"\n'
    '"GET","68965.52","0.411","0.072","0.351","0.487","2.727","3.111"\n'
)


def test_parse_redis_benchmark_7_csv() -> None:
    rows = parse_benchmark_csv(CSV_7)
    assert [r.test for r in rows] == ["SET", "GET"]
    assert rows[0].rps == pytest.approx(48780.49)
    assert rows[0].p50_ms == pytest.approx(0.503)
    assert rows[1].p99_ms == pytest.approx(2.727)
    assert rows[1].max_ms == pytest.approx(3.111)


def test_parse_skips_warnings_and_progress_lines() -> None:
    text = ("WARNING: Could not fetch server CONFIG\n"
            "mget: rps=0.0 (overall: 0.0)\r" + CSV_7.splitlines()[0] + "\n"
            '"mget key:__rand_int__ key:__rand_int__","66666.67","0.381","0.120","0.383",'
            '"0.503","0.551","0.607"\n')
    (row,) = parse_benchmark_csv(text)
    assert row.test == "mget key:__rand_int__ key:__rand_int__"
    assert row.rps == pytest.approx(66666.67)
    assert row.p99_ms == pytest.approx(0.551)


def test_parse_old_format_without_latencies() -> None:
    (row,) = parse_benchmark_csv('"GET","12345.00"\n')
    assert row.rps == 12345.0
    assert row.p50_ms is None


def test_parse_rejects_output_without_csv() -> None:
    with pytest.raises(BenchmarkOutputError):
        parse_benchmark_csv("Could not connect to Redis at 127.0.0.1:1: Connection refused\n")


def _run(system: str, workload: str, rps: float, p99: float = 1.0, cpu: float | None = None,
         requests: int = 100_000, rep: int = 0) -> Run:
    return Run(system, workload, rep, requests, rps, 1.0, p50_ms=p99 / 2, p99_ms=p99, cpu_s=cpu)


def test_summarize_takes_medians_per_measure() -> None:
    runs = [_run("twemproxy", "GET P1", r, p99, cpu)
            for r, p99, cpu in ((50_000, 2.0, 0.5), (70_000, 1.0, 0.3), (60_000, 9.0, 0.4))]
    cell = summarize(runs)[("GET P1", "twemproxy")]
    assert cell.rps == 60_000
    assert cell.p99_ms == 2.0
    assert cell.cpu_us_per_op == pytest.approx(4.0)  # 0.4 s over 100,000 requests
    assert cell.runs == 3
    assert cell.spread == pytest.approx(20_000 / 60_000)


def test_summarize_ignores_failed_runs_and_marks_all_failed_cells() -> None:
    runs = [_run("ringleader", "SET P1", 40_000),
            Run("ringleader", "SET P1", 1, 100, 0.0, 0.1, error="boom"),
            Run("ringleader", "MSET10 P1", -1, 0, 0.0, 0.0, error="unsupported")]
    cells = summarize(runs)
    assert cells[("SET P1", "ringleader")].rps == 40_000
    assert cells[("SET P1", "ringleader")].runs == 1
    assert cells[("MSET10 P1", "ringleader")].error == "unsupported"
    assert cells[("MSET10 P1", "ringleader")].rps is None


def test_ratios_and_table() -> None:
    runs = [_run("direct", "GET P1", 100_000, 1.0), _run("twemproxy", "GET P1", 80_000, 2.0, 1.2),
            _run("ringleader", "GET P1", 64_000, 3.0, 1.5)]
    systems = ["direct", "twemproxy", "ringleader"]
    (row,) = build_table(summarize(runs), ["GET P1"], systems)
    assert row.rl_over_tw == pytest.approx(0.8)
    assert row.rl_over_direct == pytest.approx(0.64)
    assert row.p99_rl_over_tw == pytest.approx(1.5)
    table = table_cells([row], systems)
    assert table.headers[:6] == ["workload", "direct ops/s", "twemproxy ops/s",
                                 "ringleader ops/s", "rl/tw", "rl/direct"]
    line = table.rows[0]
    assert line[:6] == ["GET P1", "100,000", "80,000", "64,000", "0.80", "0.64"]
    assert line[-1] == "12.00 / 15.00"  # CPU µs/op: twemproxy, ringleader
    md = render_markdown(table).splitlines()
    assert md[0].startswith("| workload | direct ops/s")
    assert md[2].startswith("| GET P1 | 100,000 |")
    text = render_text(table).splitlines()
    assert len(text) == 3 and len({len(t) for t in text}) == 1  # aligned columns


def test_table_without_ringleader_has_no_ratio_columns() -> None:
    runs = [_run("direct", "SET P16", 500_000), _run("twemproxy", "SET P16", 250_000)]
    rows = build_table(summarize(runs), ["SET P16"], ["direct", "twemproxy"])
    assert rows[0].rl_over_tw is None
    headers = table_cells(rows, ["direct", "twemproxy"]).headers
    assert not any("rl/" in h for h in headers)


def test_ratio_handles_missing_values() -> None:
    assert ratio(None, 1.0) is None
    assert ratio(1.0, 0.0) is None
    assert ratio(3.0, 2.0) == 1.5


def test_run_round_trips_through_json_dict() -> None:
    run = _run("twemproxy", "GET P16", 300_000, cpu=0.9)
    data = run.to_dict()
    assert data["cpu_us_per_op"] == pytest.approx(9.0)
    assert Run.from_dict(data) == run
    assert summarize([Run.from_dict(data)])[("GET P16", "twemproxy")] == Cell(
        300_000, 0.5, 1.0, pytest.approx(9.0), 1)


def test_workloads_and_benchmark_command_line() -> None:
    names = [w.name for w in default_workloads()]
    assert names == ["SET P1", "GET P1", "SET P16", "GET P16", "MGET10 P1", "MSET10 P1"]
    mset = select_workloads("mset10")[0]
    assert mset.args.count("key:__rand_int__") == 10
    assert mset.args[:3] == ("-P", "1", "mset")
    with pytest.raises(ValueError):
        select_workloads("set2")
    get16 = select_workloads("get16")[0]
    argv = benchmark_argv("redis-benchmark", System("direct", 7000), get16, 1000, 50, 100_000)
    assert argv[:12] == ["redis-benchmark", "-h", "127.0.0.1", "-p", "7000", "-c", "50", "-r",
                         "100000", "-n", "1000", "--csv"]
    assert argv[-2:] == ["-P", "16"]


def test_run_sizing_and_rotation() -> None:
    assert sized_requests(40_000, 3.0, 5_000) == 120_000
    assert sized_requests(100, 3.0, 5_000) == 5_000
    assert rotated(["a", "b", "c"], 1) == ["b", "c", "a"]
    assert rotated(["a", "b", "c"], 3) == ["a", "b", "c"]


def test_proc_stat_parsing_survives_odd_command_names() -> None:
    fields = ["S", "1", "2", "3"] + ["0"] * 7 + ["150", "25"] + ["0"] * 30
    utime, stime, ppid = parse_proc_stat("1234 (we ird) (name)) " + " ".join(fields))
    assert (utime, stime, ppid) == (150, 25, 1)


def test_twemproxy_config_lists_every_node() -> None:
    text = twemproxy_config(22121, ["127.0.0.1:7000", "127.0.0.1:7001"])
    assert "listen: 127.0.0.1:22121" in text
    assert "hash: fnv1a_64" in text and "distribution: ketama" in text
    assert "   - 127.0.0.1:7000:1\n   - 127.0.0.1:7001:1\n" in text


def test_commandstats_parsing_and_node_shares() -> None:
    info = ("# Commandstats\r\n"
            "cmdstat_get:calls=900,usec=700,usec_per_call=0.78,rejected_calls=0,failed_calls=0\r\n"
            "cmdstat_set:calls=100,usec=90,usec_per_call=0.90,rejected_calls=0,failed_calls=0\r\n"
            "cmdstat_config|get:calls=6,usec=49,usec_per_call=8.17,rejected_calls=0\r\n"
            "cmdstat_ping:calls=50,usec=10,usec_per_call=0.20\r\n")
    stats = parse_commandstats(info)
    assert stats == {"get": 900, "set": 100, "config|get": 6, "ping": 50}
    assert load_calls(stats) == 1000
    shares = node_shares(["a", "b"], [{"get": 100}, {"get": 0, "ping": 5}],
                         [{"get": 700}, {"get": 200, "ping": 90}])
    assert shares.ops == [600, 200]
    assert shares.shares == [0.75, 0.25]
    assert shares.max_over_mean == pytest.approx(1.5)


@pytest.mark.parametrize("use_numpy", [True, False])
def test_zipf_sampler_matches_theory(use_numpy: bool) -> None:
    if use_numpy:
        pytest.importorskip("numpy")
    sampler = ZipfSampler(n=10_000, s=0.99, seed=7, use_numpy=use_numpy)
    draws = 100_000
    counts = collections.Counter(sampler.sample(draws))
    assert all(0 <= r < 10_000 for r in counts)
    top = sampler.probability(0)
    assert top == pytest.approx(1 / sum((k + 1) ** -0.99 for k in range(10_000)))
    # rank 0 holds ~10% here; with 100k draws its observed share is within a few % of that
    assert counts[0] / draws == pytest.approx(top, rel=0.05)
    assert counts[1] / draws == pytest.approx(sampler.probability(1), rel=0.08)
    assert counts[0] > counts[9] > counts[999]
    top100 = sum(counts[r] for r in range(100)) / draws
    assert top100 == pytest.approx(sampler.top_share(100), rel=0.03)


def test_zipf_reseed_gives_independent_streams_and_keys_match_redis_benchmark() -> None:
    sampler = ZipfSampler(n=1000, seed=1, use_numpy=False)
    first = sampler.sample(50)
    sampler.reseed(2)
    assert sampler.sample(50) != first
    sampler.reseed(1)
    assert sampler.sample(50) == first
    assert key_name(42) == b"key:000000000042"


def test_pyspy_raw_self_and_total() -> None:
    raw = ("<module> (router/__main__.py:7);run (trio/_core/_run.py:2000);"
           "handle (router/server.py:10);parse (router/resp.py:5) 30\n"
           "<module> (router/__main__.py:7);run (trio/_core/_run.py:2010);"
           "handle (router/server.py:12) 10\n"
           "process 99:\"python -m router serve\";<module> (router/__main__.py:7);"
           "run (trio/_core/_run.py:2000);epoll_wait (trio/_core/_io_epoll.py:3) 60\n")
    self_counts, total_counts, samples = parse_pyspy_raw(raw)
    assert samples == 100
    assert self_counts["epoll_wait (trio/_core/_io_epoll.py)"] == 60
    assert self_counts["parse (router/resp.py)"] == 30
    assert self_counts["handle (router/server.py)"] == 10  # lines 10 and 12: one function
    assert total_counts["handle (router/server.py)"] == 40
    assert total_counts["run (trio/_core/_run.py)"] == 100
    top = top_frames(self_counts, total_counts, samples, limit=2)
    assert [t.frame for t in top] == ["epoll_wait (trio/_core/_io_epoll.py)",
                                      "parse (router/resp.py)"]
    assert top[1].self_share == pytest.approx(0.3)
    assert top[1].total_share == pytest.approx(0.3)
    assert frame_label("odd frame") == "odd frame"


def test_pstats_costs() -> None:
    stats = {("/x/router/server.py", 10, "handle"): (5, 5, 0.2, 0.9, {}),
             ("~", 0, "<method 'send' of '_socket.socket' objects>"): (9, 9, 0.6, 0.6, {})}
    self_costs, total_costs, overall = pstats_costs(stats)
    assert overall == pytest.approx(0.8)
    top = top_frames(self_costs, total_costs, overall, limit=1)
    assert top[0].frame.startswith("<method 'send'")
    assert top[0].self_share == pytest.approx(0.75)


def test_hotkeys_overhead_rows_are_medians_per_proxy_and_their_ratio():
    from bench.hotkeys_overhead import HOT, PLAIN, render
    from bench.hotkeys_overhead import summarize as summarize_overhead

    runs = [Run(PLAIN, "GET P1", 0, 1000, 100.0, 1.0, cpu_s=0.01),
            Run(PLAIN, "GET P1", 1, 1000, 120.0, 1.0, cpu_s=0.03),
            Run(PLAIN, "GET P1", 2, 1000, 110.0, 1.0, cpu_s=0.02),
            Run(HOT, "GET P1", 0, 1000, 99.0, 1.0),
            Run(HOT, "GET P1", 1, 1000, 0.0, 1.0, error="refused"),  # errors left out
            Run(HOT, "GET P1", 2, 1000, 105.0, 1.0)]
    (row,) = summarize_overhead(runs, ["GET P1", "SET P1"])  # SET P1 has no runs: no row
    assert (row.plain_rps, row.hot_rps, row.runs) == (110.0, 102.0, 2)
    assert row.ratio == pytest.approx(102 / 110)
    assert row.plain_cpu_us == pytest.approx(20.0) and row.hot_cpu_us is None
    assert "| GET P1 | 110 | 102 | 0.927 | 20.00 / - |" in render([row])


def test_profile_can_load_any_table_row():
    from bench.profiling import workload_named

    assert workload_named("mget10").name == "MGET10 P1"
    with pytest.raises(ValueError, match="get16"):
        workload_named("nope")


def test_the_ab_report_gives_medians_and_the_candidate_to_base_ratio():
    from bench.ab import Side, report_line

    workload = select_workloads("get16")[0]
    base = Side(rps=[100.0, 300.0, 200.0], user_us=[2.0, 2.4, 2.2], sys_us=[0.5, 0.7, 0.6])
    cand = Side(rps=[110.0, 330.0, 180.0], user_us=[1.9, 2.1, 2.0], sys_us=[0.6, 0.6, 0.6])
    line = report_line(workload, base, cand)
    assert "base       200" in line and "candidate       180" in line
    assert "(0.900; per run 1.10, 1.10, 0.90)" in line
    assert "user 2.20 -> 2.00, system 0.60 -> 0.60" in line
