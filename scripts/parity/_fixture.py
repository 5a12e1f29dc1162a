"""What every parity script does after running the released code: save the numbers-only fixture, then
run our official variant on it (the test module's `compare`) and print the worst difference per check."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Callable

import torch

from mmbench.results.numbers import load_numbers, save_numbers

ROOT = Path(__file__).resolve().parents[2]


def load_module(name: str, path: Path):
    """Import one released source file, unmodified, under a private module name."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def fixture_main(doc: str, paper: str, official_folder: str, run_official: Callable[[Path], dict]) -> None:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--official", type=Path, default=ROOT.parent / "shared" / "official" / official_folder)
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "parity" / f"{paper}.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    fixture = run_official(args.official)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_numbers(fixture, args.out)
    torch.set_default_dtype(torch.float32)
    sys.path.insert(0, str(ROOT / "tests" / "papers" / paper))
    compare = __import__(f"test_parity_{paper}").compare  # our official variant on the same fixture

    worst = compare(load_numbers(args.out))
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB); largest |ours - released| per check:")
    for key, value in worst.items():
        print(f"  {key:32s} {value:.2e}")
