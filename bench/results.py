"""The harness's pure parts: redis-benchmark output to numbers, medians, ratios, tables.

Kept apart from process control so they can be tested without starting anything, and so a
table can be rebuilt from a saved JSON file (``summarize(load(...)["runs"])``).
"""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

# The system names the ratios are computed between.
RINGLEADER = "ringleader"
TWEMPROXY = "twemproxy"
DIRECT = "direct"

SHORT_NAMES = {DIRECT: "direct", TWEMPROXY: "twem", RINGLEADER: "ringl"}


@dataclass(frozen=True)
class Workload:
    """One row of the table: what redis-benchmark is asked to do.

    ``args`` are appended to the common redis-benchmark arguments (host, port, clients,
    key range, CSV output); ``keys_per_op`` says how many keys one request touches, so a
    reader can turn requests/s into keys/s.
    """

    name: str
    key: str  # the spelling ``--workloads`` accepts: set1, get16, mget10...
    args: tuple[str, ...]
    pipeline: int = 1
    keys_per_op: int = 1
    command: str = "get"  # the command, for the smoke check


VALUE_SIZE = 64


def _multi(command: str, count: int, with_value: bool) -> tuple[str, ...]:
    args: list[str] = [command]
    for _ in range(count):
        args.append("key:__rand_int__")
        if with_value:
            args.append("x" * VALUE_SIZE)
    return tuple(args)


def default_workloads() -> list[Workload]:
    """The rows issue 4 asks for: SET/GET at depth 1 and 16, MGET/MSET of 10 keys at depth 1."""
    rows = []
    for depth in (1, 16):
        for command in ("set", "get"):
            rows.append(Workload(f"{command.upper()} P{depth}", f"{command}{depth}",
                                 ("-t", command, "-d", str(VALUE_SIZE), "-P", str(depth)),
                                 depth, 1, command))
    rows.append(Workload("MGET10 P1", "mget10", ("-P", "1", *_multi("mget", 10, False)), 1, 10,
                         "mget"))
    rows.append(Workload("MSET10 P1", "mset10", ("-P", "1", *_multi("mset", 10, True)), 1, 10,
                         "mset"))
    return rows


def select_workloads(spec: str | None) -> list[Workload]:
    """The workloads named in ``spec`` ("set1,get16"), in table order; all when empty."""
    rows = default_workloads()
    if not spec:
        return rows
    wanted = {item.strip().lower() for item in spec.split(",") if item.strip()}
    unknown = wanted - {w.key for w in rows}
    if unknown:
        raise ValueError(f"unknown workloads {sorted(unknown)}; known: "
                         + ", ".join(w.key for w in rows))
    return [w for w in rows if w.key in wanted]


# ---------------------------------------------------------------- redis-benchmark output


class BenchmarkOutputError(ValueError):
    """redis-benchmark printed no usable CSV row (it failed, or its format changed)."""


@dataclass(frozen=True)
class BenchmarkRow:
    """One CSV row of ``redis-benchmark --csv``; latencies in milliseconds."""

    test: str
    rps: float
    avg_ms: float | None = None
    min_ms: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None


_CSV_COLUMNS = {
    "rps": "rps",
    "avg_latency_ms": "avg_ms",
    "min_latency_ms": "min_ms",
    "p50_latency_ms": "p50_ms",
    "p95_latency_ms": "p95_ms",
    "p99_latency_ms": "p99_ms",
    "max_latency_ms": "max_ms",
}


def parse_benchmark_csv(text: str) -> list[BenchmarkRow]:
    """Rows of ``redis-benchmark --csv`` output (7.x: test, rps, avg, min, p50, p95, p99, max).

    Lines that are not CSV (warnings such as "Could not fetch server CONFIG", progress
    lines with carriage returns) are skipped; older versions print only test and rps, which
    leaves the latencies ``None``.
    """
    lines = [line.rsplit("\r", 1)[-1] for line in text.splitlines()]
    lines = [line for line in lines if line.startswith('"')]
    if not lines:
        raise BenchmarkOutputError(f"no CSV in redis-benchmark output: {text[-500:]!r}")
    reader = csv.reader(io.StringIO("\n".join(lines)))
    header: list[str] | None = None
    rows: list[BenchmarkRow] = []
    for record in reader:
        if not record:
            continue
        if record[0] == "test":
            header = record
            continue
        if header is None:  # redis-benchmark < 7: no header, "test","rps"
            header = ["test", "rps"]
        values: dict[str, float | None] = {}
        for name, cell in zip(header[1:], record[1:], strict=False):
            attr = _CSV_COLUMNS.get(name)
            if attr is None:
                continue
            try:
                values[attr] = float(cell)
            except ValueError:
                values[attr] = None
        if values.get("rps") is None:
            raise BenchmarkOutputError(f"row without a rate: {record!r}")
        rows.append(BenchmarkRow(test=record[0], **values))  # type: ignore[arg-type]
    if not rows:
        raise BenchmarkOutputError(f"CSV header but no rows: {text[-500:]!r}")
    return rows


# ---------------------------------------------------------------- runs and medians


@dataclass
class Run:
    """One redis-benchmark invocation: one workload on one system, one repetition."""

    system: str
    workload: str
    rep: int
    requests: int
    rps: float
    wall_s: float
    avg_ms: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    cpu_s: float | None = None  # CPU of the measured process (proxy, or the node for direct)
    cpu_of: str | None = None
    error: str | None = None

    @property
    def cpu_us_per_op(self) -> float | None:
        if self.cpu_s is None or self.requests <= 0:
            return None
        return self.cpu_s / self.requests * 1e6

    def to_dict(self) -> dict:
        out = asdict(self)
        out["cpu_us_per_op"] = self.cpu_us_per_op
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> Run:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Cell:
    """Medians over the repetitions of one workload on one system."""

    rps: float | None
    p50_ms: float | None
    p99_ms: float | None
    cpu_us_per_op: float | None
    runs: int
    spread: float | None = None  # (max - min) / median of rps: how noisy the repeats were
    error: str | None = None


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(runs: Iterable[Run]) -> dict[tuple[str, str], Cell]:
    """Median of each measure over repetitions, per (workload, system).

    Medians rather than means because a shared machine produces the occasional outlier run;
    each measure's median is taken on its own (the p99 median need not come from the run
    with the median rate).
    """
    grouped: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        grouped.setdefault((run.workload, run.system), []).append(run)
    cells: dict[tuple[str, str], Cell] = {}
    for key, group in grouped.items():
        good = [r for r in group if r.error is None]
        if not good:
            cells[key] = Cell(None, None, None, None, 0, error=group[-1].error)
            continue
        rates = [r.rps for r in good]
        median_rps = statistics.median(rates)
        spread = (max(rates) - min(rates)) / median_rps if median_rps and len(rates) > 1 else None
        cells[key] = Cell(
            rps=median_rps,
            p50_ms=_median(r.p50_ms for r in good),
            p99_ms=_median(r.p99_ms for r in good),
            cpu_us_per_op=_median(r.cpu_us_per_op for r in good),
            runs=len(good),
            spread=spread,
        )
    return cells


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


@dataclass
class TableRow:
    workload: str
    cells: dict[str, Cell]
    rl_over_tw: float | None = None
    rl_over_direct: float | None = None
    p99_rl_over_tw: float | None = None


def build_table(cells: Mapping[tuple[str, str], Cell], workloads: Sequence[str],
                systems: Sequence[str]) -> list[TableRow]:
    """One row per workload with every system's cell and the ringleader ratios."""
    rows = []
    for workload in workloads:
        row_cells = {s: cells[(workload, s)] for s in systems if (workload, s) in cells}
        if not row_cells:
            continue
        rl = row_cells.get(RINGLEADER)
        tw = row_cells.get(TWEMPROXY)
        dr = row_cells.get(DIRECT)
        rows.append(TableRow(
            workload=workload,
            cells=row_cells,
            rl_over_tw=ratio(rl and rl.rps, tw and tw.rps),
            rl_over_direct=ratio(rl and rl.rps, dr and dr.rps),
            p99_rl_over_tw=ratio(rl and rl.p99_ms, tw and tw.p99_ms),
        ))
    return rows


# ---------------------------------------------------------------- rendering


def _fmt(value: float | None, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "rate":
        return f"{value:,.0f}"
    if kind == "ratio":
        return f"{value:.2f}"
    if kind == "ms":
        return f"{value:.3f}" if value < 10 else f"{value:.1f}"
    if kind == "us":
        return f"{value:.2f}" if value < 100 else f"{value:.0f}"
    return str(value)


def _get(row: TableRow, system: str, attr: str) -> float | None:
    cell = row.cells.get(system)
    return None if cell is None else getattr(cell, attr)


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)


def table_cells(rows: Sequence[TableRow], systems: Sequence[str]) -> Table:
    """The printed table as strings: one layout for the terminal and for Markdown.

    Columns: ops/s per system; ringleader/twemproxy and ringleader/direct throughput
    ratios; p50 and p99 per system (``a / b / c`` in system order); ringleader/twemproxy
    p99 ratio; proxy CPU µs per request (twemproxy, ringleader).
    """
    proxies = [s for s in systems if s in (TWEMPROXY, RINGLEADER)]
    short = "/".join(SHORT_NAMES.get(s, s) for s in systems)
    headers = ["workload"] + [f"{s} ops/s" for s in systems]
    has_rl = RINGLEADER in systems
    if has_rl and TWEMPROXY in systems:
        headers.append("rl/tw")
    if has_rl and DIRECT in systems:
        headers.append("rl/direct")
    headers += [f"p50 ms {short}", f"p99 ms {short}"]
    if has_rl and TWEMPROXY in systems:
        headers.append("p99 rl/tw")
    if proxies:
        headers.append("CPU µs/op " + "/".join(SHORT_NAMES.get(s, s) for s in proxies))
    table = Table(headers)
    for row in rows:
        line = [row.workload]
        for s in systems:
            c = row.cells.get(s)
            line.append("error" if c is not None and c.error else _fmt(_get(row, s, "rps"), "rate"))
        if has_rl and TWEMPROXY in systems:
            line.append(_fmt(row.rl_over_tw, "ratio"))
        if has_rl and DIRECT in systems:
            line.append(_fmt(row.rl_over_direct, "ratio"))
        line.append(" / ".join(_fmt(_get(row, s, "p50_ms"), "ms") for s in systems))
        line.append(" / ".join(_fmt(_get(row, s, "p99_ms"), "ms") for s in systems))
        if has_rl and TWEMPROXY in systems:
            line.append(_fmt(row.p99_rl_over_tw, "ratio"))
        if proxies:
            line.append(" / ".join(_fmt(_get(row, s, "cpu_us_per_op"), "us") for s in proxies))
        table.rows.append(line)
    return table


def render_text(table: Table) -> str:
    """A fixed-width table for the terminal (numbers right-aligned)."""
    widths = [len(h) for h in table.headers]
    for line in table.rows:
        widths = [max(w, len(c)) for w, c in zip(widths, line, strict=True)]
    out = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                     for i, (h, w) in enumerate(zip(table.headers, widths, strict=True)))]
    out.append("  ".join("-" * w for w in widths))
    for line in table.rows:
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(line, widths, strict=True))))
    return "\n".join(out)


def render_markdown(table: Table) -> str:
    """A GitHub-flavoured Markdown table (workload left-aligned, numbers right-aligned)."""
    out = ["| " + " | ".join(table.headers) + " |",
           "| " + " | ".join(["---"] + ["---:"] * (len(table.headers) - 1)) + " |"]
    for line in table.rows:
        out.append("| " + " | ".join(line) + " |")
    return "\n".join(out)
