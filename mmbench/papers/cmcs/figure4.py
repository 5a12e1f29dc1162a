"""Figure 4 of CMCS (§4.5): causal effects Δε and scheduling weights φ of 16 batches at epochs 1 and 15,
for text and image, as a markdown table and a PNG, from a run's `cmcs_trace.jsonl` (written by
`CMCS.train_step`, one row per training batch).

    python -m mmbench.papers.cmcs.figure4 RUN_DIR [--out DIR] [--epochs 1 15] [--batches 16]

Epochs are 1-based like the paper; an epoch the run did not reach (e.g. a 3-epoch smoke run) is
replaced by the run's last epoch and the table says so.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mmbench.errors import DataError
from mmbench.papers.cmcs.method import TRACE_FILE
from mmbench.results import store

QUANTITIES = (("text_effect", "Δε text"), ("text_weight", "φ text"), ("image_effect", "Δε image"), ("image_weight", "φ image"))


def figure4_data(run_dir: Path, epochs: tuple[int, ...] = (1, 15), batches: int = 16) -> dict:
    """{"epochs": [(asked, used)], "series": {epoch_used: {quantity: [values of the first `batches` batches]}}}."""
    path = Path(run_dir) / TRACE_FILE
    rows = store.read_jsonl(path)
    if not rows:
        raise DataError(f"{path}: no CMCS trace (train with model.trace=true)")
    last = max(r["epoch"] for r in rows) + 1
    used = [(e, e if e <= last else last) for e in epochs]
    series = {}
    for _, epoch in used:
        chosen = sorted((r for r in rows if r["epoch"] == epoch - 1), key=lambda r: r["batch"])[:batches]
        series[epoch] = {q: [r.get(q) for r in chosen] for q, _ in QUANTITIES}
    return {"epochs": used, "series": series, "ranges": effect_ranges(rows)}


def effect_ranges(rows: list[dict]) -> list[dict]:
    """Per epoch, min / median / max of ln Δε before the clamp (text, image) and of the raw hypergradient
    norm: what the `effect_clamp` is chosen from (issue 14); and the share of upper steps whose ∇φ the
    engine clipped (issue 27: a high share means φ follows the clip, not the hypergradient)."""
    import statistics

    out = []
    for epoch in sorted({r["epoch"] for r in rows}):
        row = {"epoch": epoch + 1}
        for key in ("text_log_effect", "image_log_effect", "hypergrad_norm"):
            values = [r[key] for r in rows if r["epoch"] == epoch and r.get(key) is not None]
            if values:
                row[key] = (min(values), statistics.median(values), max(values))
        flags = [r["hypergrad_clipped"] for r in rows if r["epoch"] == epoch and r.get("hypergrad_clipped") is not None]
        if flags:
            row["clipped_share"] = sum(flags) / len(flags)
        out.append(row)
    return out


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def figure4_table(data: dict) -> str:
    header = ["batch"] + [f"{label} (epoch {e})" for _, e in data["epochs"] for _, label in QUANTITIES]
    n = max(len(s["text_effect"]) for s in data["series"].values())
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for b in range(n):
        cells = [str(b + 1)]
        for _, epoch in data["epochs"]:
            for q, _ in QUANTITIES:
                values = data["series"][epoch][q]
                cells.append(_fmt(values[b] if b < len(values) else None))
        lines.append("| " + " | ".join(cells) + " |")
    keys = (("text_log_effect", "ln Δε text"), ("image_log_effect", "ln Δε image"), ("hypergrad_norm", "‖∇φ‖ raw"))
    lines += ["", "| epoch | " + " | ".join(f"{label} min / median / max" for _, label in keys) + " | upper steps clipped |",
              "|" + "---|" * 5]
    for r in data.get("ranges", []):
        cells = [" / ".join(f"{v:.3g}" for v in r[k]) if k in r else "–" for k, _ in keys]
        cells.append(f"{100 * r['clipped_share']:.0f} %" if "clipped_share" in r else "–")
        lines.append(f"| {r['epoch']} | " + " | ".join(cells) + " |")
    notes = [f"epoch {asked} was not reached; epoch {used} is shown" for asked, used in data["epochs"] if asked != used]
    return "\n".join(lines + ([""] + [f"- {n}" for n in notes] if notes else [])) + "\n"


def figure4_png(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 6), sharex=True)
    for ax, (q, label) in zip(axes.flat, QUANTITIES):
        for _, epoch in data["epochs"]:
            values = [v for v in data["series"][epoch][q] if v is not None]
            ax.plot(range(1, len(values) + 1), values, marker="o", label=f"epoch {epoch}")
        if q.endswith("effect"):
            ax.axhline(1.0, color="grey", lw=0.8, ls="--")  # Δε = 1: selected features neither help nor hurt
        ax.set_title(label)
        ax.legend(fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("batch")
    fig.suptitle("CMCS Figure 4: causal effects and scheduling weights")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def render(run_dir: Path, out: Path | None = None, epochs: tuple[int, ...] = (1, 15), batches: int = 16) -> tuple[Path, Path]:
    out = Path(out or run_dir)
    data = figure4_data(run_dir, epochs, batches)
    table = out / "figure4.md"
    store.atomic_write_text(table, "### CMCS Figure 4: causal effects and scheduling weights\n\n" + figure4_table(data))
    png = out / "figure4.png"
    figure4_png(data, png)
    return table, png


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 15])
    parser.add_argument("--batches", type=int, default=16)
    args = parser.parse_args(argv)
    for path in render(args.run_dir, args.out, tuple(args.epochs), args.batches):
        print(path)


if __name__ == "__main__":
    main()
