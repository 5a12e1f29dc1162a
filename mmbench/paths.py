"""Where recipes, benchmarks, data, runs and results live — in a checkout and in an installed wheel.

Built-in recipes and benchmarks: the wheel carries the repository's `recipes/` and `benchmarks/` as
package data (`mmbench/_recipes`, `mmbench/_benchmarks`, mapped at build time by setup.py, read
through importlib.resources); a checkout (editable install or source tree) reads the folders
themselves. User recipe folders come after the built-in ones: `--recipes DIR` or `MMBENCH_RECIPES`
(several, separated by os.pathsep).

Outputs go under the current directory unless an environment variable says otherwise (the same in a
checkout and when installed): `MMBENCH_DATA` (default ./data), `MMBENCH_RUNS` (./runs),
`MMBENCH_RESULTS` (the checkout's results/, else ./results). A reproduction is a project folder the
user works in, like a Hydra `outputs/` or an lm-eval `--output_path`: runs are large, are the user's
results and must be easy to find, copy and delete, so they do not go to a hidden cache. The goldens
(results/goldens) are a developer artefact of the repository and do not ship in the wheel.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.resources
import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPES_ENV = "MMBENCH_RECIPES"
BUILTIN = "built-in"

_extracted = contextlib.ExitStack()  # only used if the package were imported from a zip archive
atexit.register(_extracted.close)


def checkout_root() -> Path | None:
    """The repository this package runs from (editable install or source tree); None for a wheel."""
    if (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "recipes").is_dir():
        return REPO_ROOT
    return None


def _package_data(name: str) -> Path | None:
    resource = importlib.resources.files("mmbench").joinpath(name)
    if not resource.is_dir():
        return None
    if isinstance(resource, Path):
        return resource
    return _extracted.enter_context(importlib.resources.as_file(resource))


def _builtin(package_name: str, repo_name: str) -> Path:
    packaged = _package_data(package_name)
    if packaged is not None:
        return packaged
    root = checkout_root()
    if root is None:
        from mmbench.errors import MmbenchError

        raise MmbenchError(f"mmbench/{package_name}: the installed package carries no {repo_name}; reinstall mmbench "
                           "from a wheel built by `pip wheel .` (setup.py maps the folder into the package)")
    return root / repo_name


def builtin_recipes_dir() -> Path:
    return _builtin("_recipes", "recipes")


def benchmarks_dir() -> Path:
    return _builtin("_benchmarks", "benchmarks")


def user_recipe_dirs() -> list[Path]:
    """Folders named by MMBENCH_RECIPES (the `--recipes` option prepends to it), in order."""
    dirs = [Path(p).expanduser() for p in os.environ.get(RECIPES_ENV, "").split(os.pathsep) if p.strip()]
    for folder in dirs:
        if not folder.is_dir():
            from mmbench.errors import RecipeError

            raise RecipeError(f"{folder}: recipe folder (from --recipes / {RECIPES_ENV}) does not exist")
    return dirs


def recipe_roots() -> list[tuple[Path, str]]:
    """(folder, origin) in search order: the built-in recipes, then each user folder."""
    builtin = builtin_recipes_dir().resolve()
    roots = [(builtin, BUILTIN)]
    for folder in user_recipe_dirs():
        if folder.resolve() != builtin:  # naming the checkout's recipes/ again is not a second definition
            roots.append((folder.resolve(), str(folder)))
    return roots


def recipes_dir() -> Path:
    """The built-in recipes folder (kept for callers that need one folder, e.g. to copy a paper)."""
    return builtin_recipes_dir()


@dataclass(frozen=True)
class RecipeFile:
    name: str     # path under its root without .yaml: "itm/twitter15", "itm/paper", "itm/_itm"
    path: Path
    origin: str   # "built-in" or the user folder as given

    @property
    def kind(self) -> str:
        stem = self.name.rsplit("/", 1)[-1]
        return "paper" if stem == "paper" else "base" if stem.startswith("_") else "recipe"


def recipe_files() -> dict[str, RecipeFile]:
    """Every recipe, base and paper.yaml on the search path by name. A runnable recipe or a paper
    defined in two folders is an error naming both files; bases are found next to the file that
    extends them, so two folders may each have their own `_base.yaml`."""
    from mmbench.errors import RecipeError

    found: dict[str, RecipeFile] = {}
    for root, origin in recipe_roots():
        for path in sorted(root.rglob("*.yaml")):
            entry = RecipeFile(path.relative_to(root).with_suffix("").as_posix(), path, origin)
            if entry.name in found and entry.kind != "base":
                raise RecipeError(f"{entry.kind} {entry.name!r} is defined twice: {found[entry.name].path} and {path}")
            found.setdefault(entry.name, entry)
    return found


def env_path(name: str) -> Path | None:
    """A folder named by an environment variable; None when unset. Set but empty (`MMBENCH_RUNS=`) is an
    error: Path("") is the current directory, and runs or data would land wherever the command ran."""
    if name not in os.environ:
        return None
    value = os.environ[name]
    if not value.strip() or "\x00" in value:
        from mmbench.errors import MmbenchError

        raise MmbenchError(f"{name}={value!r}: an empty folder name; unset {name} for the default or name a folder")
    return Path(value)


def data_root() -> Path:
    """Raw and prepared data: <root>/raw/<dataset>, <root>/prepared/<dataset>[-synthetic]."""
    return env_path("MMBENCH_DATA") or Path.cwd() / "data"


def runs_root() -> Path:
    return env_path("MMBENCH_RUNS") or Path.cwd() / "runs"


def results_dir() -> Path:
    """Goldens and committed tables in a checkout; ./results when installed."""
    if env_path("MMBENCH_RESULTS") is not None:
        return env_path("MMBENCH_RESULTS")
    root = checkout_root()
    return root / "results" if root is not None else Path.cwd() / "results"


def bench_results_dir() -> Path:
    """Where benchmarks write their JSON: the checkout's benchmarks/results (committed evidence), or
    ./benchmarks/results when installed (never inside site-packages); MMBENCH_BENCH_RESULTS overrides."""
    if env_path("MMBENCH_BENCH_RESULTS") is not None:
        return env_path("MMBENCH_BENCH_RESULTS")
    root = checkout_root()
    return (root if root is not None else Path.cwd()) / "benchmarks" / "results"
