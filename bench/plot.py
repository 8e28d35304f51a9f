"""A PNG of the results table: throughput, p99 latency and proxy CPU per request.

matplotlib is optional (the ``bench`` extra); without it the harness still prints and saves
JSON, and says the plot was skipped.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from bench.results import RINGLEADER, TWEMPROXY, TableRow

COLORS = {"direct": "#7f7f7f", "twemproxy": "#1f77b4", "ringleader": "#d62728"}


def plot_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot_table(rows: Sequence[TableRow], systems: Sequence[str], path: Path, title: str) -> None:
    """Grouped bars per workload: ops/s (labelled with ringleader/twemproxy), p99, CPU µs/op.

    Written to a temporary name and renamed, so a reader never sees half a file.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    names = [row.workload for row in rows]
    proxies = [s for s in systems if s in (TWEMPROXY, RINGLEADER)]
    panels = [("ops/s (median)", "rps", systems), ("p99 latency, ms", "p99_ms", systems)]
    if proxies:
        panels.append(("proxy CPU per request, µs", "cpu_us_per_op", proxies))
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(8, 1.6 * len(names) + 2), 3.2 * len(panels)))
    if len(panels) == 1:
        axes = [axes]
    for ax, (label, attr, shown) in zip(axes, panels, strict=True):
        width = 0.8 / max(1, len(shown))
        for i, system in enumerate(shown):
            xs, values = [], []
            for j, row in enumerate(rows):
                cell = row.cells.get(system)
                value = None if cell is None else getattr(cell, attr)
                if value is not None:
                    xs.append(j + (i - (len(shown) - 1) / 2) * width)
                    values.append(value)
            bars = ax.bar(xs, values, width, label=system, color=COLORS.get(system))
            if attr == "rps" and system == RINGLEADER:
                labels = ["" if row.rl_over_tw is None else f"{row.rl_over_tw:.2f}×tw"
                          for row in rows
                          if row.cells.get(system) is not None and row.cells[system].rps is not None]
                ax.bar_label(bars, labels=labels, fontsize=7, padding=2)
        if attr == "rps":
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v / 1000:,.0f}k"))
        ax.set_xticks(range(len(names)), names)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, path)
