import json

import pytest

from mmbench.recipes.loader import resolve
from mmbench.report.tables import report
from mmbench.results.aggregate import Aggregate, aggregate
from mmbench.results.store import atomic_write_json, run_dir

PAPER = """
paper: demo
title: Demo paper
tolerances: {accuracy: 1.0}
tables:
  - id: t1
    title: "Table 1: demo"
    columns:
      - {dataset: twitter15, metric: accuracy, header: "T15 Acc"}
      - {dataset: twitter17, metric: accuracy, header: "T17 Acc"}
    rows:
      - {group: Text, label: Other, paper: [70.0, 60.0]}
      - {group: Text, label: Ours, recipe: "demo/{dataset}", paper: [75.0, 65.0], aggregation: mean of 3 runs}
      - {group: Text, label: Ours-lr, recipe: "demo/{dataset}", overrides: ["train.optimizers.main.lr=0.5"], paper: [75.0, null]}
"""
RECIPE = """
paper: demo
method: text_tmsc
dataset: {ds}
model: {{text_encoder: tiny-bert}}
train: {{epochs: 1, batch_size: 4, optimizers: {{main: {{lr: 0.001}}}}}}
deviations: ["a documented deviation"]
smoke: {{train.epochs: 1}}
"""


@pytest.fixture
def demo(tmp_path, monkeypatch):
    recipes = tmp_path / "recipes" / "demo"
    recipes.mkdir(parents=True)
    (recipes / "paper.yaml").write_text(PAPER)
    for ds in ("twitter15", "twitter17"):
        (recipes / f"{ds}.yaml").write_text(RECIPE.format(ds=ds))
    monkeypatch.setenv("MMBENCH_RECIPES", str(tmp_path / "recipes"))
    monkeypatch.setenv("MMBENCH_RUNS", str(tmp_path / "runs"))
    return tmp_path


def fake_run(name, seed, accuracy, overrides=(), smoke=False):
    resolved = resolve(name, list(overrides), smoke=smoke)
    atomic_write_json(run_dir(resolved, seed) / "metrics.json", {
        "recipe": resolved.name, "config_hash": resolved.config_hash, "seed": seed, "smoke": smoke,
        "subset": None, "reportable": True, "metrics": {"test": {"accuracy": accuracy}, "dev": {}}})


def test_cells_show_mean_std_n_paper_delta_and_tolerance_marks(demo):
    for seed, acc in enumerate([74.0, 75.0, 76.0]):
        fake_run("demo/twitter15", seed, acc)
    fake_run("demo/twitter17", 0, 62.0)
    text = report("demo")
    assert "| Method | T15 Acc | T17 Acc |" in text
    ours = next(line for line in text.splitlines() if line.startswith("| Ours |"))
    assert "75.00±1.00 (3) / 75.00 (Δ +0.00 ✓)" in ours
    assert "62.00 (1) / 65.00 (Δ -3.00 ✗)" in ours
    other = next(line for line in text.splitlines() if line.startswith("| Other"))
    assert "— / 70.00" in other
    assert "not run / 75.00" in next(line for line in text.splitlines() if line.startswith("| Ours-lr"))
    assert "[^1]: a documented deviation" in text
    assert "Notes for every mmbench row of this table: [^1]" in text  # shared notes cited once
    assert "ddof=1" in text


def test_paper_std_is_shown_beside_the_paper_number(demo, tmp_path):
    paper_yaml = demo / "recipes" / "demo" / "paper.yaml"
    paper_yaml.write_text(PAPER.replace("paper: [75.0, 65.0], aggregation", "paper: [75.0, 65.0], std: [0.28, null], aggregation")
                          .replace("paper: [70.0, 60.0]}", "paper: [70.0, 60.0], std: [0.5, 0.25]}"))
    for seed, acc in enumerate([74.0, 76.0]):
        fake_run("demo/twitter15", seed, acc)
    text = report("demo")
    ours = next(line for line in text.splitlines() if line.startswith("| Ours |"))
    assert "75.00±1.41 (2) / 75.00±0.28 (Δ +0.00 ✓)" in ours  # ours ± s / paper ± s
    assert "not run / 65.00 |" in ours  # no ± printed for that column
    assert "— / 70.00±0.50" in next(line for line in text.splitlines() if line.startswith("| Other"))
    assert "76.50" not in report("demo", fmt="csv") and report("demo", fmt="csv").splitlines()[0].endswith(",paper_std")
    assert "(75.00$\\pm$0.28)" in report("demo", fmt="latex")
    paper_yaml.write_text(PAPER.replace("paper: [70.0, 60.0]}", "paper: [70.0, 60.0], std: [0.5]}"))
    with pytest.raises(Exception, match="std values"):
        report("demo")


def test_row_overrides_select_their_own_runs(demo):
    fake_run("demo/twitter15", 0, 50.0, overrides=["train.optimizers.main.lr=0.5"])
    fake_run("demo/twitter15", 0, 80.0)
    lines = report("demo").splitlines()
    assert "50.00 (1)" in next(l for l in lines if l.startswith("| Ours-lr"))
    assert "80.00 (1)" in next(l for l in lines if l.startswith("| Ours |"))


def test_smoke_runs_never_mix_with_full_runs(demo):
    fake_run("demo/twitter15", 0, 10.0, smoke=True)
    full = report("demo")
    assert "10.00" not in full and "SMOKE" not in full
    smoke = report("demo", smoke=True)
    assert "10.00 (1)" in smoke and "SMOKE" in smoke and "✓" not in smoke and "✗" not in smoke


def test_csv_and_latex(demo):
    fake_run("demo/twitter15", 0, 76.5)
    csv_text = report("demo", fmt="csv")
    header, *rows = csv_text.strip().splitlines()
    assert header.startswith("paper,table,row")
    assert any(r.startswith("demo,t1,Ours,Text,twitter15,test,accuracy,76.5,,1,75.0,1.5,False") for r in rows)
    latex = report("demo", fmt="latex")
    assert "\\toprule" in latex and "76.50 (75.00)" in latex


def test_aggregate_uses_sample_std():
    agg = Aggregate((1.0, 2.0, 3.0, 4.0))
    assert agg.mean == 2.5 and agg.n == 4 and agg.std == pytest.approx(1.2909944, rel=1e-6)
    assert Aggregate((5.0,)).std is None
    runs = [{"metrics": {"test": {"accuracy": 1.0}}}, {"metrics": {"test": {}}}]
    assert aggregate(runs, "test", "accuracy").values == (1.0,)
    assert aggregate(runs, "dev", "accuracy") is None


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    import os

    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"a": 1})

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp file left


def test_sweep_tables_are_plotted_when_runs_exist(demo, tmp_path):
    from mmbench.report.plots import row_x

    assert row_x("α = 1/3", 0) == pytest.approx(1 / 3) and row_x("K = 10", 0) == 10 and row_x("Ours", 4) == 4
    paper = (demo / "recipes" / "demo" / "paper.yaml")
    paper.write_text(PAPER.replace('    rows:\n      - {group: Text, label: Other', '    plot: true\n    rows:\n      - {group: Text, label: Other'))
    out = tmp_path / "tables"
    assert "written by `mmbench report --out DIR` once runs exist" in report("demo", plot_dir=out)
    assert not out.exists()  # nothing ran: no empty figure
    fake_run("demo/twitter15", 0, 76.5)
    text = report("demo", plot_dir=out)
    assert "![Table 1: demo](demo-t1.png)" in text
    assert (out / "demo-t1.png").read_bytes()[:4] == b"\x89PNG"
