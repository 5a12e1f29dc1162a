"""A numbers-only file for nested results (parity fixtures): plain JSON, with each tensor written as
{"__tensor__": {"dtype", "shape", "values"}} (values flattened, floats in shortest round-trip form, so
float32 and float64 tensors come back bit for bit) and tuples as {"__tuple__": [...]}.

Why not `torch.save` or a tensor container: a `.pt` file is a pickle, the format of checkpoints, and
`.safetensors` is the format of weights; a fixture that holds only numbers should be a text file that no
loader can execute, that a reviewer can read, and that no one mistakes for a checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mmbench.errors import DataError
from mmbench.results.store import atomic_write_text

_TENSOR, _TUPLE = "__tensor__", "__tuple__"
_DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float64, torch.float32, torch.float16, torch.bfloat16,
                                                       torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)}


def save_numbers(value, path: Path) -> None:
    def encode(x):
        if isinstance(x, torch.Tensor):
            name = str(x.dtype).removeprefix("torch.")
            if name not in _DTYPES:
                raise TypeError(f"save_numbers: tensors of {x.dtype} are not supported")
            flat = x.detach().cpu().reshape(-1)
            values = flat.double().tolist() if flat.is_floating_point() else flat.tolist()
            return {_TENSOR: {"dtype": name, "shape": list(x.shape), "values": values}}
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

    atomic_write_text(Path(path), json.dumps(encode(value), separators=(",", ":")) + "\n")


def load_numbers(path: Path):
    try:
        structure = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # a truncated or foreign file: one line naming it
        raise DataError(f"{path}: not a numbers file ({type(err).__name__}: {err})") from None

    def decode(x):
        if isinstance(x, dict):
            if set(x) == {_TENSOR}:
                spec = x[_TENSOR]
                return torch.tensor(spec["values"], dtype=_DTYPES[spec["dtype"]]).reshape(spec["shape"])
            if set(x) == {_TUPLE}:
                return tuple(decode(v) for v in x[_TUPLE])
            return {k: decode(v) for k, v in x.items()}
        if isinstance(x, list):
            return [decode(v) for v in x]
        return x

    try:
        return decode(structure)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise DataError(f"{path}: not a numbers file ({type(err).__name__}: {err})") from None
