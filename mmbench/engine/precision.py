"""Compute precision of a run: the autocast dtype on CUDA, and float64 for smoke runs.

Why float64 for smoke runs: CPUs round float32 differently by instruction set (torch picks
default/AVX2/AVX-512 kernels per machine, and thread counts change summation order), and a few hundred
training steps amplify a 1e-7 difference into whole points of accuracy. Computed in float64 the same
differences start near 1e-16 and stay far below any printed digit, so a smoke run gives the same numbers
on every x86-64 CPU, which is what lets `make test` guard them with tight golden bands
(`mmbench.results.goldens`).

`float64_compute()` makes a whole run float64: the default dtype (new tensors, modules built inside),
and a global forward pre-hook that casts floating inputs of every module to float64 (data read from
float32 files and caches enters the model through some module), while the trainer casts the model and
each batch. Integer tensors are left alone. Inside it, `Tensor.float()` means "at least float32": code
writes `x.float()` to leave bf16/fp16 before a loss or a CRF, and in a float64 run that upcast must not
become a downcast, so a float64 tensor's `.float()` returns it unchanged.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch.nn.modules.module import register_module_forward_pre_hook

FLOAT64 = "fp64"


def effective_precision(setting: str, smoke: bool) -> str:
    """Smoke runs always compute in fp64 (see module docstring), whatever the recipe states for real
    runs (official variants state fp32, paper variants bf16 or fp32); other runs keep the setting."""
    return FLOAT64 if smoke else setting


def to_float64(value):
    """Floating tensors (nested in dicts, lists, tuples) cast to float64; everything else as is."""
    if isinstance(value, torch.Tensor):
        return value.to(torch.float64) if value.is_floating_point() and value.dtype != torch.float64 else value
    if isinstance(value, dict):
        return {k: to_float64(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and any(isinstance(v, (torch.Tensor, dict, list, tuple)) for v in value):
        cast = [to_float64(v) for v in value]
        if hasattr(value, "_fields"):  # a namedtuple
            return type(value)(*cast)
        return cast if isinstance(value, list) else tuple(cast)
    return value


def _cast_module_inputs(module, args):
    return to_float64(args)


_TENSOR_FLOAT = torch.Tensor.float


def _at_least_float32(self, *args, **kwargs):
    if self.dtype == torch.float64:
        return self
    return _TENSOR_FLOAT(self, *args, **kwargs)


@contextmanager
def float64_compute(enabled: bool = True):
    if not enabled:
        yield
        return
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    handle = register_module_forward_pre_hook(_cast_module_inputs)
    torch.Tensor.float = _at_least_float32
    try:
        yield
    finally:
        torch.Tensor.float = _TENSOR_FLOAT
        handle.remove()
        torch.set_default_dtype(previous)
