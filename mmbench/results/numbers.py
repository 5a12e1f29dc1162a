"""A numbers-only file for nested results (parity fixtures): tensors in safetensors, the structure
around them (dicts, lists, tuples, ints, floats, strings, None) as JSON in the file's metadata.

Why not `torch.save`: a `.pt` file is a pickle, the format of checkpoints and weights; a fixture that
holds only numbers should be a file that no loader can execute and that no one mistakes for weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from safetensors import safe_open

from mmbench.errors import DataError

_TENSOR, _TUPLE = "__tensor__", "__tuple__"


def save_numbers(value, path: Path) -> None:
    tensors: dict[str, torch.Tensor] = {}

    def encode(x):
        if isinstance(x, torch.Tensor):
            key = str(len(tensors))
            tensors[key] = x.detach().cpu().contiguous().clone()
            return {_TENSOR: key}
        if isinstance(x, dict):
            if not all(isinstance(k, str) for k in x):
                raise TypeError("save_numbers: dict keys must be strings")
            return {k: encode(v) for k, v in x.items()}
        if isinstance(x, tuple):
            return {_TUPLE: [encode(v) for v in x]}
        if isinstance(x, list):
            return [encode(v) for v in x]
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        raise TypeError(f"save_numbers: {type(x).__name__} is not a number, string or tensor")

    structure = json.dumps(encode(value))
    save_file(tensors, str(path), metadata={"structure": structure})


def load_numbers(path: Path):
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            structure = json.loads((handle.metadata() or {})["structure"])
    except Exception as err:  # a truncated or foreign file: one line naming it
        raise DataError(f"{path}: not a numbers file ({type(err).__name__}: {err})") from None

    def decode(x):
        if isinstance(x, dict):
            if set(x) == {_TENSOR}:
                return tensors[x[_TENSOR]]
            if set(x) == {_TUPLE}:
                return tuple(decode(v) for v in x[_TUPLE])
            return {k: decode(v) for k, v in x.items()}
        if isinstance(x, list):
            return [decode(v) for v in x]
        return x

    return decode(structure)
