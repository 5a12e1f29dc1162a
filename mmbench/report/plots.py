"""PNG plots of tables that the papers draw as figures (sweeps): one panel per column, x read from each
row label's `name = value` (e.g. "α = 0.3", "K = 10", "α = 1/3"; rows without one are categories on
the x axis, e.g. encoder names). Per row group two series: ours (mean ± std over the seeds, error
bars) and the paper's printed value; a series keeps its colour in every panel."""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

_VALUE = re.compile(r"^(.*?)\s*=\s*([0-9.]+(?:/[0-9.]+)?)\s*$")


def row_x(label: str, position: int) -> float:
    match = _VALUE.search(label)
    return float(Fraction(match.group(2))) if match else float(position)


def swept(labels: list[str]) -> str | None:
    """The swept parameter(s) when every label reads `name = value` ("α / β" for two groups), else None."""
    names = [m.group(1).strip() if m else None for m in map(_VALUE.search, labels)]
    return None if None in names else " / ".join(dict.fromkeys(names))


def series_names(group: str | None, n_seeds: list[int]) -> tuple[str, str]:
    low, high = min(n_seeds, default=0), max(n_seeds, default=0)
    seeds = str(high) if low == high else f"{low}–{high}"
    prefix = f"{group}: " if group else ""
    return f"{prefix}ours (mean ± std over {seeds} seed{'s' if seeds != '1' else ''})", f"{prefix}paper"


def plot_table(table, rows, path: Path, smoke: bool = False) -> Path | None:
    """Draw ours (solid, error bars) and the paper's value where printed (dashed); None when nothing ran."""
    if not any(cell.ours for r in rows for cell in r.cells):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = table.columns
    fig, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 3.6), squeeze=False)
    groups = list(dict.fromkeys(r.row.group for r in rows))
    labels = [r.row.label for r in rows]
    parameter = swept(labels)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colour = {}  # (group, ours|paper) → colour, the same in every panel
    for col, (ax, column) in enumerate(zip(axes[0], columns)):
        for group in groups:
            members = [(row_x(r.row.label, i), r.cells[col]) for i, r in enumerate(rows) if r.row.group == group]
            ours = sorted((x, c.ours.mean, c.ours.std or 0.0) for x, c in members if c.ours)
            paper = sorted((x, c.paper) for x, c in members if c.paper is not None)
            ours_name, paper_name = series_names(group, [c.ours.n for _, c in members if c.ours])
            if ours:
                xs, means, stds = zip(*ours)
                ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=ours_name,
                            color=colour.setdefault((group, "ours"), colours[len(colour) % len(colours)]))
            if paper:
                ax.plot(*zip(*paper), marker="x", markersize=9, markeredgewidth=2, linestyle="--", zorder=3, label=paper_name,
                        color=colour.setdefault((group, "paper"), colours[len(colour) % len(colours)]))
        ax.set_title(column.header, fontsize=9)
        ax.set_ylabel(f"{column.metric} ({column.split})", fontsize=8)
        if parameter:
            ax.set_xlabel(parameter, fontsize=9)
        else:  # categories (e.g. encoders): one tick per row label
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
            ax.set_xlabel("row", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if smoke:
        fig.text(0.5, 0.5, "SMOKE", fontsize=64, color="red", alpha=0.18, ha="center", va="center", rotation=20)
    import textwrap

    title = textwrap.fill(table.title, width=int(55 * len(columns)))
    fig.suptitle(title + ("\nSMOKE: synthetic data and tiny encoders, not comparable to the paper" if smoke else ""), fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
