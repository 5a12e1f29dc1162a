"""Golden smoke results: what CI guards. `results/goldens/<paper>.json` lists smoke runs
(recipe, overrides, seed) with, per metric, the value and a tolerance band. `make test` re-runs them
and fails when a metric leaves its band; `mmbench regress --update --reason ...` rewrites them.

Why the bands hold on every machine and still catch every real change:
- smoke runs compute in float64 (`mmbench.engine.precision`): float32 rounding differs between CPU
  instruction sets and thread counts, and training amplifies it into whole points; in float64 the
  same differences stay around 1e-10 after a smoke training;
- a band is measured, not guessed: `mmbench.regress.update_goldens` runs every row under each
  platform perturbation (`PLATFORMS`: ATEN_CPU_CAPABILITY default/avx2/avx512, 1 and 2
  threads) and sets band = SPREAD_FACTOR × the spread seen, at least a floor (`FLOORS`) that
  is orders of magnitude below a printed digit. Each file records how its bands were derived.
A deliberate change (a learning rate ×2, a loss term off, a changed constant) moves numbers by far more
than 1e-6, so it leaves the band; tests/shared/test_goldens.py proves each kind.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from mmbench.errors import MmbenchError
from mmbench.paths import results_dir
from mmbench.results.store import atomic_write_json

# The platform perturbations a golden must survive: every instruction-set level torch can pick on
# x86-64 (DEFAULT is plain C++, no SIMD) and one and two threads (other summation orders).
PLATFORMS = (
    {"ATEN_CPU_CAPABILITY": "default", "MMBENCH_THREADS": "1"},
    {"ATEN_CPU_CAPABILITY": "avx2", "MMBENCH_THREADS": "2"},
    {"ATEN_CPU_CAPABILITY": "avx512", "MMBENCH_THREADS": "1"},
)
SPREAD_FACTOR = 100.0
# Floors: metrics are percentages printed with 2 decimals, losses with 4 digits; float64 smoke runs
# agree to ~1e-10 across platforms, so a floor of 1e-6 is 4 orders above the noise and 4 below a digit.
FLOORS = {"metric": 1e-6, "loss_relative": 1e-7, "loss_absolute": 1e-9}


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


def band_for(key: str, values: list[float], spread_factor: float, floors: dict) -> float:
    """SPREAD_FACTOR × the spread of one metric across platforms, at least its floor."""
    spread = max(values) - min(values)
    if key.startswith("final_train."):
        floor = max(abs(values[0]) * floors["loss_relative"], floors["loss_absolute"])
    else:
        floor = floors["metric"]
    return max(spread * spread_factor, floor)


def entry_with_bands(results: list[dict], overrides: list[str], platforms) -> dict:
    """One golden entry from the same row run under each platform: value = the first platform's,
    band derived from the spread of all (see module docstring)."""
    flats = [flatten(r) for r in results]
    first = results[0]
    metrics = {}
    for key, value in flats[0].items():
        values = [flat.get(key) for flat in flats]
        if any(v is None for v in values):
            raise MmbenchError(f"golden {first['recipe']} {overrides}: metric {key} missing on some platform")
        metrics[key] = {"value": value, "band": band_for(key, values, SPREAD_FACTOR, FLOORS),
                        "spread": max(values) - min(values)}
    return {
        "recipe": first["recipe"],
        "dataset": first["dataset"],
        "overrides": overrides,
        "seed": first["seed"],
        "config_hash": first["config_hash"],
        "metrics": metrics,
    }


def write_goldens(paper: str, entries: list[dict], reason: str, replace_all: bool = False) -> Path:
    """Replace (or add) these entries, keyed by recipe and overrides; other entries stay unless
    `replace_all`. The reason and the earlier reasons are kept as history."""
    path = goldens_path(paper)
    history = []
    if path.exists():
        old = json.loads(path.read_text())
        history = old.get("history", []) + [{"updated": old.get("updated"), "reason": old.get("reason")}]
        if not replace_all:
            fresh = {(e["recipe"], tuple(e["overrides"])) for e in entries}
            entries = [e for e in old["entries"] if (e["recipe"], tuple(e["overrides"])) not in fresh] + entries
    derivation = {"precision": "fp64 (smoke)", "platforms": list(PLATFORMS), "spread_factor": SPREAD_FACTOR,
                  "floors": FLOORS, "band": "max(spread_factor × spread across platforms, floor)"}
    atomic_write_json(path, {"paper": paper, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "reason": reason,
                             "bands": derivation, "history": history[-20:], "entries": entries})
    return path


def compare(paper: str, entry: dict, result: dict) -> list[Drift]:
    new = flatten(result)
    drifts = []
    for key, golden in entry["metrics"].items():
        value = new.get(key)
        if value is None or abs(value - golden["value"]) > golden["band"]:
            drifts.append(Drift(paper, entry["dataset"], entry["recipe"], key, golden["value"], value, golden["band"]))
    return drifts
