"""Golden smoke results: what CI guards. `results/goldens/<paper>.json` lists smoke runs
(recipe, overrides, seed) with, per metric, the value and a tolerance band. `make test` re-runs them
and fails when a metric leaves its band; `mmbench regress --update --reason ...` rewrites them."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from mmbench.errors import MmbenchError
from mmbench.paths import results_dir
from mmbench.results.store import atomic_write_json

# Bands: smoke runs are deterministic on CPU, so bands only absorb float noise across machines.
METRIC_BAND = 0.01  # absolute, in percentage points (×100 metrics)
LOSS_BAND = 1e-3  # relative, on the last epoch's mean training losses


@dataclass
class Drift:
    paper: str
    dataset: str
    recipe: str
    metric: str
    golden: float
    new: float | None
    band: float

    def __str__(self) -> str:
        return (f"golden band left: paper={self.paper} dataset={self.dataset} recipe={self.recipe} "
                f"metric={self.metric} golden={self.golden:.6g} new={self.new if self.new is None else f'{self.new:.6g}'} "
                f"(band ±{self.band:.3g}); if the change is intended run "
                f"`mmbench regress --update --paper {self.paper} --reason \"...\"`")


def goldens_path(paper: str) -> Path:
    return results_dir() / "goldens" / f"{paper}.json"


def load_goldens(paper: str) -> dict:
    path = goldens_path(paper)
    if not path.exists():
        raise MmbenchError(f"{path}: no goldens for {paper}; create them with `mmbench regress --update --paper {paper} --reason ...`")
    return json.loads(path.read_text())


def golden_papers() -> list[str]:
    return sorted(p.stem for p in (results_dir() / "goldens").glob("*.json"))


def flatten(result: dict) -> dict[str, float]:
    """The guarded numbers of one run: dev/test metrics and the final epoch's training losses."""
    flat = {}
    for split in ("dev", "test"):
        for metric, value in (result["metrics"].get(split) or {}).items():
            flat[f"{split}.{metric}"] = float(value)
    for key, value in (result.get("final_train") or {}).items():
        flat[f"final_train.{key}"] = float(value)
    return flat


def band_for(key: str, value: float) -> float:
    if key.startswith("final_train."):
        return max(abs(value) * LOSS_BAND, 1e-6)
    return METRIC_BAND


def entry_from_result(result: dict, overrides: list[str]) -> dict:
    return {
        "recipe": result["recipe"],
        "dataset": result["dataset"],
        "overrides": overrides,
        "seed": result["seed"],
        "config_hash": result["config_hash"],
        "metrics": {k: {"value": v, "band": band_for(k, v)} for k, v in flatten(result).items()},
    }


def write_goldens(paper: str, entries: list[dict], reason: str) -> Path:
    """Replace (or add) these entries, keyed by recipe and overrides; other entries stay."""
    path = goldens_path(paper)
    history = []
    if path.exists():
        old = json.loads(path.read_text())
        history = old.get("history", []) + [{"updated": old.get("updated"), "reason": old.get("reason")}]
        fresh = {(e["recipe"], tuple(e["overrides"])) for e in entries}
        entries = [e for e in old["entries"] if (e["recipe"], tuple(e["overrides"])) not in fresh] + entries
    atomic_write_json(path, {"paper": paper, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "reason": reason,
                             "history": history[-20:], "entries": entries})
    return path


def compare(paper: str, entry: dict, result: dict) -> list[Drift]:
    new = flatten(result)
    drifts = []
    for key, golden in entry["metrics"].items():
        value = new.get(key)
        if value is None or abs(value - golden["value"]) > golden["band"]:
            drifts.append(Drift(paper, entry["dataset"], entry["recipe"], key, golden["value"], value, golden["band"]))
    return drifts
