"""The numbers-only file that parity fixtures use (mmbench.results.numbers)."""

import pytest
import torch

from mmbench.errors import DataError
from mmbench.results.numbers import load_numbers, save_numbers


def test_round_trip_keeps_structure_types_and_exact_values(tmp_path):
    value = {"a": torch.arange(6, dtype=torch.float64).view(2, 3) / 7, "b": [1, 2.5, "x", None, True],
             "c": (torch.tensor(3), {"d": torch.zeros(0, dtype=torch.bool)}), "e": {},
             "f": torch.randn(4, 5, dtype=torch.float32) / 3}
    save_numbers(value, tmp_path / "f.json")
    back = load_numbers(tmp_path / "f.json")
    assert list(back) == list(value) and back["b"] == value["b"] and back["e"] == {}
    assert back["a"].dtype == torch.float64 and torch.equal(back["a"], value["a"])
    assert back["f"].dtype == torch.float32 and torch.equal(back["f"], value["f"])  # bit for bit
    assert isinstance(back["c"], tuple) and torch.equal(back["c"][0], value["c"][0]) and back["c"][1]["d"].dtype == torch.bool


def test_refuses_objects_and_truncated_files(tmp_path):
    with pytest.raises(TypeError, match="object"):
        save_numbers({"x": object()}, tmp_path / "o.json")
    save_numbers({"x": torch.ones(100)}, tmp_path / "f.json")
    data = (tmp_path / "f.json").read_bytes()
    (tmp_path / "t.json").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="t.json: not a numbers file"):
        load_numbers(tmp_path / "t.json")
