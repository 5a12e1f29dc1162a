"""Load a recipe: YAML → one `extends:` level → `--set` overrides → schema → method config.

A recipe's name is its path under `recipes/` without `.yaml` (e.g. `baselines/twitter15-bert`).
Files whose name starts with `_` are bases for `extends:` and are not runnable; `paper.yaml` holds a
paper's tables. The resolved recipe and its config hash identify a run.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from mmbench.errors import RecipeError, located
from mmbench.paths import recipe_files
from mmbench.recipes.schema import PaperCfg, Recipe
from mmbench.registry import method_registry

# Lists that a child recipe adds to instead of replacing.
_CONCAT_KEYS = ("deviations", "assumptions", "footnotes")


@dataclass
class ResolvedRecipe:
    name: str
    path: Path
    recipe: Recipe
    model_config: BaseModel
    overrides: list[str] = field(default_factory=list)
    smoke: bool = False

    def as_dict(self) -> dict[str, Any]:
        data = self.recipe.model_dump(mode="json")
        data["model"] = self.model_config.model_dump(mode="json")
        return data

    @property
    def config_hash(self) -> str:
        """Hash of everything that changes training except the seed (the seed is in the run dir)."""
        data = self.as_dict()
        data["train"].pop("seeds", None)
        for key in ("description", "sources", "deviations", "assumptions", "footnotes", "smoke", "extends"):
            data.pop(key, None)
        blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    @property
    def reportable(self) -> bool:
        return self.recipe.reportable and not self.smoke and self.recipe.data.subset is None


def recipe_names(root: Path | None = None) -> list[str]:
    """Runnable recipes on the search path (built-in, then user folders), or under one folder."""
    if root is None:
        return sorted(name for name, entry in recipe_files().items() if entry.kind == "recipe")
    names = []
    for path in sorted(root.rglob("*.yaml")):
        if path.name.startswith("_") or path.name == "paper.yaml":
            continue
        names.append(path.relative_to(root).with_suffix("").as_posix())
    return names


def paper_names(root: Path | None = None) -> list[str]:
    if root is None:
        return sorted(name.rsplit("/", 1)[0] for name, entry in recipe_files().items() if entry.kind == "paper")
    return sorted(p.parent.name for p in root.glob("*/paper.yaml"))


def _read_recipe_text(path: Path) -> str:
    if not path.exists():
        raise RecipeError(f"{path}: file not found")
    if path.is_dir():
        raise RecipeError(f"{path}: is a folder, expected a YAML file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if b"\x00" in data:
        raise RecipeError(located(path, data[: data.index(b"\x00")].count(b"\n") + 1, "NUL byte in the file"))
    try:
        return data.decode("utf-8-sig")  # YAML allows a leading byte-order mark
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise RecipeError(located(path, line, f"not UTF-8 (byte 0x{data[exc.start]:02x}); save the recipe as UTF-8")) from None


# A recipe is a few hundred values; aliases may share a node, but the tree they expand to is bounded
# (a "billion laughs" block of nested aliases expands to 10^9 values when it is merged and dumped).
MAX_YAML_NODES = 100_000
_PLAIN = (str, int, float, bool, type(None))


# Parsed recipes by (path, text): a plan resolves each of its rows, and every row re-reads the same few
# bases (pure-Python YAML parsing was 14 of `mmbench validate`'s 19 s). Reading the bytes is cheap; keying
# on them (not on mtime) means an edit is always seen. A copy goes out, so a caller may change what it gets.
_PARSED: dict[tuple[str, str], dict[str, Any]] = {}


def read_yaml(path: Path) -> dict[str, Any]:
    text = _read_recipe_text(path)
    key = (str(path), text)
    if key not in _PARSED:
        if len(_PARSED) > 512:
            _PARSED.clear()
        _PARSED[key] = _parse_yaml(path, text)
    return copy.deepcopy(_PARSED[key])


def _parse_yaml(path: Path, text: str) -> dict[str, Any]:
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            _check_expanded_size(path, node)
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = mark.line + 1 if mark else None
        raise RecipeError(located(path, where, f"invalid YAML: {getattr(exc, 'problem', exc)}")) from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping at the top level")
    _check_plain(path, data)
    return data


def _check_expanded_size(path: Path, root) -> None:
    """The node count the document expands to with every alias copied out (memoised per node, so a
    shared node costs one visit); over MAX_YAML_NODES is refused before anything is built from it."""
    sizes: dict[int, int] = {}
    stack = [(root, False)] if root is not None else []
    while stack:
        node, done = stack.pop()
        if id(node) in sizes:
            continue
        children = [c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode) else (
            node.value if isinstance(node, yaml.SequenceNode) else [])
        if not done:
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
            continue
        sizes[id(node)] = min(1 + sum(sizes.get(id(c), 1) for c in children), MAX_YAML_NODES + 1)
        if sizes[id(node)] > MAX_YAML_NODES:
            raise RecipeError(located(path, node.start_mark.line + 1, f"expands to over {MAX_YAML_NODES} values "
                                                                      "(nested aliases?); a recipe is a few hundred"))


def _check_plain(path: Path, value: Any, key: str = "") -> None:
    """Only what JSON can hold: YAML's dates, sets and binary values are no recipe value (they break the
    config hash and the smoke overrides far from the file that holds them)."""
    if isinstance(value, dict):
        for name, item in value.items():
            where = f"{key}.{name}" if key else str(name)
            if not isinstance(name, _PLAIN):
                raise RecipeError(located(path, key or None, f"key {name!r} is a {type(name).__name__}; keys are plain names"))
            _check_plain(path, item, where)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_plain(path, item, f"{key}[{i}]")
    elif not isinstance(value, _PLAIN):
        raise RecipeError(located(path, key, f"a YAML {type(value).__name__} is not a recipe value "
                                             "(use a string, number, boolean, list or mapping)"))


def deep_merge(base: dict, child: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in child.items():
        if key in _CONCAT_KEYS and isinstance(out.get(key), list) and isinstance(value, list):
            out[key] = out[key] + value
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_raw(path: Path) -> dict[str, Any]:
    """Read a recipe and merge it onto its `extends:` base (one level at most)."""
    data = read_yaml(path)
    parent_ref = data.get("extends")
    if parent_ref is None:
        return data
    _check_extends(path, parent_ref)
    if isinstance(parent_ref, str) and not parent_ref.endswith(".yaml"):
        return _extend_by_name(path, data, parent_ref)
    parent_path = (path.parent / parent_ref).resolve()
    if isinstance(parent_ref, str) and not parent_path.exists() and parent_ref[:-5] in recipe_files():
        raise RecipeError(located(path, "extends", f"{parent_ref}: no such file next to {path.name}; a built-in recipe is "
                                                   f"extended by name, without .yaml: extends: {parent_ref[:-5]}"))
    parent = read_yaml(parent_path)
    if parent.get("extends") is not None:
        raise RecipeError(
            located(path, "extends", f"{parent_ref} itself extends {parent['extends']}; recipes inherit at most one level")
        )
    merged = deep_merge(parent, data)
    return merged


def _check_extends(path: Path, ref: Any) -> None:
    if not isinstance(ref, str) or not ref.strip():
        raise RecipeError(located(path, "extends", f"expected a recipe name or a .yaml file name, found {ref!r}"))
    if "\x00" in ref or not ref.isprintable():
        raise RecipeError(located(path, "extends", f"{ref!r} holds a control character (NUL?); expected a file name"))


def _extend_by_name(path: Path, data: dict, parent_name: str) -> dict:
    """`extends: itm/twitter15` (no .yaml): a recipe on the search path, e.g. a user recipe on a built-in
    one. The named recipe keeps its own one `extends:` level; it may not itself extend by name."""
    entry = recipe_files().get(parent_name)
    if entry is None or entry.kind == "paper":
        from mmbench.registry import unknown_name_message

        raise RecipeError(located(path, "extends", unknown_name_message("recipe", parent_name, recipe_names())))
    parent = read_yaml(entry.path)
    if isinstance(parent.get("extends"), str) and not parent["extends"].endswith(".yaml"):
        raise RecipeError(located(path, "extends", f"{parent_name} itself extends {parent['extends']} by name; "
                                                   "a recipe may extend a named recipe only if that one does not"))
    base = load_raw(entry.path)
    merged = deep_merge(base, data)
    merged["smoke"] = _smoke_keeping_own_keys(base.get("smoke") or {}, data)
    if not merged["smoke"]:
        merged.pop("smoke")
    return merged


def _smoke_keeping_own_keys(inherited: dict, own: dict) -> dict:
    """The named recipe's smoke block minus the keys the extending recipe sets itself (`--smoke` must not
    silently undo them), plus the extending recipe's own smoke block."""
    paths = set(_key_paths({k: v for k, v in own.items() if k not in ("smoke", "extends")}))
    def overlaps(key: str) -> bool:
        return any(key == p or key.startswith(p + ".") or p.startswith(key + ".") for p in paths)
    return {**{k: v for k, v in inherited.items() if not overlaps(k)}, **(own.get("smoke") or {})}


def _key_paths(data: dict, prefix: str = ""):
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from _key_paths(value, path + ".")
        else:
            yield path


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise RecipeError(f"--set {text!r}: expected key.path=value")
    key, raw_value = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise RecipeError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw_value) if raw_value != "" else ""
    except yaml.YAMLError:
        value = raw_value
    return key.split("."), value


def apply_override(data: dict, keys: list[str], value: Any) -> None:
    node = data
    for part in keys[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise RecipeError(f"--set {'.'.join(keys)}: {part!r} is not a section")
        node = child
    node[keys[-1]] = value


def _known_keys(model_cls: type[BaseModel], loc: tuple) -> list[str]:
    """Field names at a location of a schema, for 'did you mean' hints."""
    cls = model_cls
    for part in loc[:-1]:
        field_info = cls.model_fields.get(str(part)) if hasattr(cls, "model_fields") else None
        annotation = getattr(field_info, "annotation", None)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            cls = annotation
        else:
            return []
    return list(getattr(cls, "model_fields", {}))


def validation_message(source: str, exc: ValidationError, schema: type[BaseModel], prefix: str = "") -> str:
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    key = prefix + ".".join(str(p) for p in loc)
    if err["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(loc[-1]), _known_keys(schema, loc), n=1, cutoff=0.6)
        hint = f" (did you mean {'.'.join([*(prefix.rstrip('.').split('.') if prefix else []), *map(str, loc[:-1]), close[0]])}?)" if close else ""
        return located(source, key, f"unknown key{hint}")
    return located(source, key, err["msg"])


def resolve(name_or_path: str, overrides: list[str] | None = None, smoke: bool = False) -> ResolvedRecipe:
    path, name = _locate(name_or_path)
    data = load_raw(path)
    overrides = list(overrides or [])
    # the smoke block applies first, so a user's --set still wins; only user overrides are recorded
    if not isinstance(data.get("smoke") or {}, dict):
        raise RecipeError(located(path, "smoke", f"expected a mapping of key.path: value, found {type(data['smoke']).__name__}"))
    smoke_sets = ["data.synthetic=true", *(f"{k}={json.dumps(v)}" for k, v in (data.get("smoke") or {}).items())] if smoke else []
    for text in [*smoke_sets, *overrides]:
        keys, value = parse_override(text)
        apply_override(data, keys, value)
    applied = [*(["--smoke"] if smoke else []), *overrides]
    source = f"{path}" + (f" (with {', '.join(applied)})" if applied else "")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(validation_message(source, exc, Recipe)) from None
    method_cls = method_registry.get(recipe.method)
    try:
        model_config = method_cls.Config.model_validate(recipe.model)
    except ValidationError as exc:
        raise RecipeError(validation_message(source, exc, method_cls.Config, prefix="model.")) from None
    for opt in method_cls.optimizer_names:
        if opt not in recipe.train.optimizers:
            raise RecipeError(located(source, "train.optimizers", f"method {recipe.method} needs an optimiser named {opt!r}"))
    check_values(source, data, {**recipe.model_dump(mode="python"), "model": model_config.model_dump(mode="python")})
    check_ranges(source, recipe)
    return ResolvedRecipe(name, path, recipe, model_config, overrides, smoke)


def check_values(source: str, raw: Any, validated: Any, key: str = "") -> None:
    """What the schema's lax coercion would let through: `true` where a number belongs (pydantic turns
    it into 1) and NaN/inf anywhere. `raw` is the recipe as written (overrides applied)."""
    if isinstance(raw, dict) and isinstance(validated, dict):
        for name, value in raw.items():
            if name in validated and name not in ("smoke", "sources"):
                check_values(source, value, validated[name], f"{key}.{name}" if key else str(name))
    elif isinstance(raw, (list, tuple)) and isinstance(validated, (list, tuple)) and len(raw) == len(validated):
        for i, (value, checked) in enumerate(zip(raw, validated)):
            check_values(source, value, checked, f"{key}[{i}]")
    elif isinstance(raw, bool) and not isinstance(validated, bool) and isinstance(validated, (int, float)):
        raise RecipeError(located(source, key, f"expected a number, found {str(raw).lower()}"))
    elif isinstance(validated, float) and not math.isfinite(validated):
        raise RecipeError(located(source, key, f"must be a finite number, found {raw}"))


def check_ranges(source: str, recipe: Recipe) -> None:
    """Values the schema types allow but no run can use."""
    train = recipe.train
    if not train.seeds:
        raise RecipeError(located(source, "train.seeds", "needs at least one seed"))
    for seed in train.seeds:
        check_seed(seed, located(source, "train.seeds", ""))
    if len(set(train.seeds)) != len(train.seeds):
        raise RecipeError(located(source, "train.seeds", f"duplicate seeds {train.seeds}"))
    if recipe.data.subset is not None and recipe.data.subset < 1:
        raise RecipeError(located(source, "data.subset", f"must be at least 1 (examples per split), found {recipe.data.subset}"))
    if train.patience is not None and train.patience < 1:
        raise RecipeError(located(source, "train.patience", f"must be at least 1 epoch, found {train.patience}"))
    if train.grad_clip is not None and not train.grad_clip > 0:
        raise RecipeError(located(source, "train.grad_clip", f"must be positive (or null for none), found {train.grad_clip}"))
    for name, opt in train.optimizers.items():
        if not opt.lr > 0:
            raise RecipeError(located(source, f"train.optimizers.{name}.lr", f"must be a positive number, found {opt.lr}"))
        if opt.weight_decay < 0:
            raise RecipeError(located(source, f"train.optimizers.{name}.weight_decay", f"must be ≥ 0, found {opt.weight_decay}"))
    notes = [*recipe.deviations, *recipe.assumptions]
    for i, opening in enumerate(recipe.footnotes):
        matches = sum(note.startswith(opening) for note in notes) if opening.strip() else 0
        if matches != 1:
            raise RecipeError(located(source, f"footnotes[{i}]", f"{opening!r} opens {matches} of the recipe's deviations/assumptions; "
                                      "expected exactly one (quote the opening words of the note)"))


MAX_SEED = 2**32  # numpy's seed range; torch's generators take seed * 100_003 + epoch (engine.batching)


def check_seed(seed: int, where: str) -> None:
    """`where` names the file and key (or the option) the seed comes from."""
    if not 0 <= seed < MAX_SEED:
        raise RecipeError(f"{where.rstrip(': ')}: seed {seed} is outside 0 ≤ seed < 2**32")


def _locate(name_or_path: str) -> tuple[Path, str]:
    files = recipe_files()
    candidate = Path(name_or_path)
    if candidate.suffix == ".yaml" and candidate.exists():
        path = candidate.resolve()
        # a file on the search path keeps its name there; any other file is named by its stem
        name = next((n for n, e in files.items() if e.path.resolve() == path), path.stem)
        return path, name
    entry = files.get(name_or_path)
    if entry is None or entry.kind == "paper":
        from mmbench.registry import unknown_name_message

        raise RecipeError(unknown_name_message("recipe", name_or_path, recipe_names()))
    return entry.path, name_or_path


def load_paper(paper: str) -> PaperCfg:
    entry = recipe_files().get(f"{paper}/paper")
    path = entry.path if entry is not None else Path(paper, "paper.yaml")
    if entry is None:
        from mmbench.registry import unknown_name_message

        raise RecipeError(unknown_name_message("paper", paper, paper_names()))
    try:
        return PaperCfg.model_validate(read_yaml(path))
    except ValidationError as exc:
        raise RecipeError(validation_message(str(path), exc, PaperCfg)) from None
