"""PNG plots of tables that the papers draw as figures (sweeps): one panel per column, one line per
row group, x read from each row label's `= value` (e.g. "α = 0.3", "K = 10", "α = 1/3")."""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

_VALUE = re.compile(r"=\s*([0-9.]+(?:/[0-9.]+)?)\s*$")


def row_x(label: str, position: int) -> float:
    match = _VALUE.search(label)
    return float(Fraction(match.group(1))) if match else float(position)


def plot_table(table, rows, path: Path) -> Path | None:
    """Draw ours (solid) and the paper's value where printed (dashed); None when nothing ran."""
    if not any(cell.ours for r in rows for cell in r.cells):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = table.columns
    fig, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 3.4), squeeze=False)
    groups = list(dict.fromkeys(r.row.group for r in rows))
    for col, (ax, column) in enumerate(zip(axes[0], columns)):
        for group in groups:
            members = [(row_x(r.row.label, i), r.cells[col]) for i, r in enumerate(rows) if r.row.group == group]
            ours = sorted((x, c.ours.mean) for x, c in members if c.ours)
            paper = sorted((x, c.paper) for x, c in members if c.paper is not None)
            name = group or "ours"
            if ours:
                ax.plot(*zip(*ours), marker="o", label=f"{name} (ours)")
            if paper:
                ax.plot(*zip(*paper), marker="x", linestyle="--", label=f"{name} (paper)")
        ax.set_title(column.header, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(table.title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
