"""What CI guards: every golden smoke run re-runs and must stay inside its band."""

import copy

import pytest

from mmbench.reproduce import run_golden
from mmbench.results.goldens import compare, golden_papers, load_goldens

ENTRIES = [(paper, entry) for paper in golden_papers() for entry in load_goldens(paper)["entries"]]


def test_goldens_exist_for_the_foundation_slice():
    recipes = {entry["recipe"] for _, entry in ENTRIES}
    assert {"baselines/twitter15-bert", "baselines/twitter17-roberta"} <= recipes


@pytest.mark.slow
@pytest.mark.parametrize("paper,entry", ENTRIES, ids=[f"{p}:{e['recipe']}{'+' if e['overrides'] else ''}" for p, e in ENTRIES])
def test_smoke_run_stays_in_its_golden_band(paper, entry, mm_env):
    drifts = compare(paper, entry, run_golden(entry, mm_env / "runs"))
    assert not drifts, "\n".join(map(str, drifts))


def test_a_changed_number_is_reported_with_paper_dataset_metric_and_values():
    paper, entry = ENTRIES[0]
    result = {"metrics": {"dev": {}, "test": {}}, "final_train": {}}
    for key, golden in entry["metrics"].items():
        split, metric = key.split(".", 1)
        (result["metrics"][split] if split in ("dev", "test") else result["final_train"])[metric] = golden["value"]
    assert compare(paper, entry, result) == []
    moved = copy.deepcopy(result)
    key = next(k for k in entry["metrics"] if k.startswith("test."))
    moved["metrics"]["test"][key.split(".", 1)[1]] += 1.0
    (drift,) = compare(paper, entry, moved)
    message = str(drift)
    assert f"paper={paper}" in message and f"dataset={entry['dataset']}" in message and key in message
    assert f"golden={entry['metrics'][key]['value']:.6g}" in message and "mmbench regress --update" in message
