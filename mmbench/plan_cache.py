"""The runs of a paper's plan (recipe, overrides, seed, dataset, run dir, epochs), remembered so that
`mmbench status` answers in about a second: resolving a plan imports every method (torch, sklearn)
and reads hundreds of YAML files, 4-6 s of CPU for a paper, while the run dirs it yields change only
when a recipe or the code does.

The cache key is everything the plan depends on: the arguments, the runs root, the recipe search path,
and the size and mtime of every recipe file and of every module of the installed mmbench (a method's
Config defaults enter the config hash, so any code change re-plans). Files live in <runs>/.plans/;
a cache that cannot be written or read is just not used.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import mmbench
from mmbench.paths import RECIPES_ENV, recipe_files, runs_root

FOLDER = ".plans"


def _fingerprint(args: dict) -> str:
    package = Path(mmbench.__file__).parent
    stamps = [(str(p.relative_to(package)), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(package.rglob("*.py"))]
    recipes = [(name, str(entry.path), entry.path.stat().st_size, entry.path.stat().st_mtime_ns)
               for name, entry in sorted(recipe_files().items())]
    blob = json.dumps([mmbench.__version__, args, str(runs_root().resolve()), os.environ.get(RECIPES_ENV, ""), stamps, recipes])
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cached_rows(args: dict, compute: Callable[[], list[dict]]) -> list[dict]:
    """The plan's rows for `args`, from <runs>/.plans/ when nothing they depend on changed."""
    path = runs_root() / FOLDER / f"{_fingerprint(args)}.json"
    try:
        return json.loads(path.read_text())["rows"]
    except (OSError, ValueError, KeyError):
        pass
    rows = compute()
    try:
        from mmbench.results.store import atomic_write_json

        atomic_write_json(path, {"args": args, "rows": rows})
    except OSError:  # a read-only runs root: status still works, only slower
        pass
    return rows
