"""Figure 5 as a PNG: a metric against the threshold α, one line per dataset (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path


def plot_sweep(points: dict[str, list[tuple[float, float]]], path: Path, xlabel: str = "α",
               ylabel: str = "accuracy (%)", title: str = "SPP-SCL: sensitivity to α") -> Path:
    """`points`: {series label: [(x, y), ...]}; writes the PNG atomically and returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=120)
    for label, series in points.items():
        xs, ys = zip(*sorted(series))
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path
