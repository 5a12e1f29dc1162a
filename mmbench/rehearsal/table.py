"""`mmbench rehearse --all-recipes`: every recipe of every paper.yaml rehearsed, each in its own
process (a clean peak-memory reading, and one failure does not stop the walk), as a table.

By default each distinct recipe once, plus each table row whose overrides swap an encoder (a
different architecture); `every_row=True` walks every distinct (recipe, overrides) of the tables,
sweeps and ablations included."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Callable

JSON_PREFIX = "REHEARSAL "


def plan_rows(papers: list[str] | None = None, every_row: bool = False) -> list[tuple[str, list[str]]]:
    from mmbench.recipes.loader import paper_names
    from mmbench.report.tables import plan

    rows: list[tuple[str, list[str]]] = []
    for paper in papers or paper_names():
        for resolved in plan(paper, None, smoke=False):
            swaps_encoder = any("encoder" in o.split("=", 1)[0] for o in resolved.overrides)
            wanted = [(resolved.name, [])]
            if every_row or swaps_encoder:
                wanted.append((resolved.name, list(resolved.overrides)))
            rows += [row for row in wanted if row not in rows]
    return rows


def rehearse_one_process(recipe: str, overrides: list[str], args: list[str], timeout: float | None = None) -> dict:
    command = [sys.executable, "-m", "mmbench.cli", "rehearse", recipe, *args]
    for override in overrides:
        command += ["--set", override]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"recipe": recipe, "overrides": overrides, "ok": False, "error": f"timed out after {timeout:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(JSON_PREFIX):
            return json.loads(line[len(JSON_PREFIX):])
    tail = (done.stderr or done.stdout).strip().splitlines()
    return {"recipe": recipe, "overrides": overrides, "ok": False, "seconds": round(time.perf_counter() - started, 1),
            "error": tail[-1] if tail else f"exit {done.returncode}"}


def format_row(report: dict) -> str:
    name = report["recipe"] + (" " + " ".join(report["overrides"]) if report.get("overrides") else "")
    if "error" in report:
        return f"| {name} | – | – | – | – | error: {report['error']} |"
    params = report["parameters"]
    memory = report["memory"]
    mem = f"{memory.get('peak_cuda_mb', memory.get('peak_rss_mb'))} MB {'CUDA' if 'peak_cuda_mb' in memory else 'RSS'}"
    finite = "yes" if all(report["finite"].values()) else "NO " + ",".join(k for k, v in report["finite"].items() if not v)
    extra = f" unstepped: {','.join(report['unstepped_optimizers'])}" if report["unstepped_optimizers"] else ""
    return (f"| {name} | {params['total'] / 1e6:.1f}M / {params['trainable'] / 1e6:.1f}M | "
            f"{report['seconds_per_batch']['total']:.3f} | {report['requested_batch']} | {mem} | {finite}{extra} |")


HEADER = "| recipe | parameters (total / trainable) | s/step | batch | peak memory | finite |\n|---|---|---|---|---|---|"


def rehearse_all(args: list[str], papers: list[str] | None, every_row: bool, echo: Callable[[str], None],
                 timeout: float | None = None) -> list[dict]:
    echo(HEADER)
    reports = []
    for recipe, overrides in plan_rows(papers, every_row):
        report = rehearse_one_process(recipe, overrides, args, timeout)
        report.setdefault("overrides", overrides)
        reports.append(report)
        echo(format_row(report))
    return reports
