"""Run directories and their files, all written atomically (temp file + rename).

runs/<paper>/<dataset>/<recipe>/seed<k>-<confighash>/
  recipe.yaml        the fully resolved recipe (overrides applied)
  metrics.json       the results schema below (written last: its presence means the run is done)
  log.jsonl          one line per epoch
  predictions-<split>.jsonl
  checkpoints/{last,best}.pt
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from mmbench import __version__
from mmbench.paths import REPO_ROOT, runs_root

SCHEMA_VERSION = 1
METRICS_FILE = "metrics.json"


def run_dir(resolved, seed: int, root: Path | None = None) -> Path:
    recipe_leaf = resolved.name.split("/")[-1] + ("-smoke" if resolved.smoke else "")
    base = (root or runs_root()) / resolved.recipe.paper / resolved.recipe.dataset / recipe_leaf
    return base / f"seed{seed}-{resolved.config_hash}"


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(row, default=str) + "\n" for row in rows))


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def git_state() -> dict[str, Any]:
    from mmbench.paths import checkout_root

    if checkout_root() is None:  # an installed wheel: a git repository around site-packages is not ours
        return {"git_commit": None, "git_dirty": None}

    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return {"git_commit": commit.stdout.strip() or None, "git_dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}


def environment(device, precision: str, world_size: int) -> dict[str, Any]:
    import torch
    import transformers

    env = {
        **git_state(),
        "mmbench": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "precision": precision,
        "world_size": world_size,
        "torch_threads": torch.get_num_threads(),
    }
    return env


def load_metrics(path: Path) -> dict | None:
    file = path / METRICS_FILE if path.is_dir() else path
    if not file.exists():
        return None
    return json.loads(file.read_text())


def find_runs(root: Path | None = None) -> list[dict]:
    """Every finished run (metrics.json) below the runs root, with its directory."""
    root = root or runs_root()
    found = []
    for file in sorted(root.glob(f"*/*/*/*/{METRICS_FILE}")):
        data = json.loads(file.read_text())
        data["run_dir"] = str(file.parent)
        found.append(data)
    return found
