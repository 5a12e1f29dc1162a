import json
import re

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


def row(text, label):
    """The table line of row `label` (its label may carry footnote markers and an R-link)."""
    return next(line for line in text.splitlines() if re.match(rf"\| {re.escape(label)}(\[\^\d+\])*( \[R\d+\]\(#r\d+\))? \|", line))


def fake_run(name, seed, accuracy, overrides=(), smoke=False):
    resolved = resolve(name, list(overrides), smoke=smoke)
    atomic_write_json(run_dir(resolved, seed) / "metrics.json", {
        "recipe": resolved.name, "config_hash": resolved.config_hash, "seed": seed, "smoke": smoke,
        "subset": None, "reportable": True, "metrics": {"test": {"accuracy": accuracy}, "dev": {}}})


def test_cells_show_mean_std_n_paper_delta_and_verdicts(demo):
    for seed, acc in enumerate([74.0, 75.0, 76.0]):
        fake_run("demo/twitter15", seed, acc)
    fake_run("demo/twitter17", 0, 62.0)
    text = report("demo")
    assert "| Method | T15 Acc | T17 Acc |" in text
    ours = row(text, "Ours")
    assert "75.00±1.00 (3) / 75.00 (Δ +0.00, ✓ in CI)" in ours
    assert "62.00 (1) / 65.00 (Δ -3.00, 1 seed: no verdict)" in ours
    other = row(text, "Other")
    assert "— / 70.00" in other
    assert "not run / 75.00" in row(text, "Ours-lr")
    # a note no `footnotes:` names is listed once in the recipes section, linked from the rows
    assert "[^" not in text and text.count("a documented deviation") == 1
    assert "| Ours [R1](#r1) |" in text and '<a id="r1"></a>' in text
    assert "ddof=1" in text


def test_paper_std_is_shown_beside_the_paper_number(demo, tmp_path):
    paper_yaml = demo / "recipes" / "demo" / "paper.yaml"
    paper_yaml.write_text(PAPER.replace("paper: [75.0, 65.0], aggregation", "paper: [75.0, 65.0], std: [0.28, null], aggregation")
                          .replace("paper: [70.0, 60.0]}", "paper: [70.0, 60.0], std: [0.5, 0.25]}"))
    for seed, acc in enumerate([74.0, 76.0]):
        fake_run("demo/twitter15", seed, acc)
    text = report("demo")
    ours = row(text, "Ours")
    assert "75.00±1.41 (2) / 75.00±0.28 (Δ +0.00, ✓ in CI)" in ours  # ours ± s / paper ± s
    assert "not run / 65.00 |" in ours  # no ± printed for that column
    assert "— / 70.00±0.50" in row(text, "Other")
    assert "76.50" not in report("demo", fmt="csv") and report("demo", fmt="csv").splitlines()[0].endswith(",paper_std")
    assert "(75.00$\\pm$0.28)" in report("demo", fmt="latex")
    paper_yaml.write_text(PAPER.replace("paper: [70.0, 60.0]}", "paper: [70.0, 60.0], std: [0.5]}"))
    with pytest.raises(Exception, match="std values"):
        report("demo")


def test_row_overrides_select_their_own_runs(demo):
    fake_run("demo/twitter15", 0, 50.0, overrides=["train.optimizers.main.lr=0.5"])
    fake_run("demo/twitter15", 0, 80.0)
    text = report("demo")
    assert "50.00 (1)" in row(text, "Ours-lr")
    assert "80.00 (1)" in row(text, "Ours")


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
    assert any(r.startswith("demo,t1,Ours,Text,twitter15,test,accuracy,76.5,,1,75.0,1.5,1 seed,,,ok") for r in rows)
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


# -- verdicts (mmbench.report.verdict) -------------------------------------------------------------------
def test_verdict_is_a_t_interval_on_the_seed_mean_widened_by_the_paper_std():
    from mmbench.report.verdict import OUTSIDE, ONE_SEED, REPRODUCED, verdict

    seeds = Aggregate((74.0, 75.0, 76.0))  # mean 75, s = 1, t(0.975, 2) = 4.303: 75 ± 2.484
    assert verdict(seeds, 77.4, None).status == REPRODUCED
    assert verdict(seeds, 77.6, None).status == OUTSIDE and verdict(seeds, 72.4, None).status == OUTSIDE
    assert (verdict(seeds, 77.6, None).low, verdict(seeds, 77.6, None).high) == pytest.approx((72.516, 77.484), abs=1e-3)
    wide = verdict(seeds, 77.6, 1.0)  # 75 ± 4.303 · sqrt(1/3 + 1) = 75 ± 4.969
    assert wide.status == REPRODUCED and wide.high == pytest.approx(79.969, abs=1e-3)
    assert verdict(Aggregate((75.0,)), 75.0, 0.3).status == ONE_SEED and verdict(Aggregate((75.0,)), 75.0, None).low is None
    assert verdict(None, 75.0, None) is None and verdict(seeds, None, None) is None


def test_three_seeds_get_verdicts_and_the_paper_a_summary_line(demo):
    for seed, acc in enumerate([74.0, 75.0, 76.0]):  # inside: the paper's 75.0
        fake_run("demo/twitter15", seed, acc)
    for seed, acc in enumerate([61.0, 61.5, 62.0]):  # paper 65.0 is outside 61.5 ± 1.24
        fake_run("demo/twitter17", seed, acc)
    fake_run("demo/twitter15", 0, 74.0, overrides=["train.optimizers.main.lr=0.5"])  # one seed
    text = report("demo")
    assert "Verdict: 1 of 3 cells reproduced, 1 outside, 1 without verdict (1 seed)." in text
    ours = row(text, "Ours")
    assert "75.00±1.00 (3) / 75.00 (Δ +0.00, ✓ in CI)" in ours and "61.50±0.50 (3) / 65.00 (Δ -3.50, ✗ outside CI)" in ours
    assert "74.00 (1) / 75.00 (Δ -1.00, 1 seed: no verdict)" in row(text, "Ours-lr")
    assert "✓" not in row(text, "Other")  # a row mmbench does not run is never judged
    csv_rows = report("demo", fmt="csv").splitlines()
    assert any(",reproduced,72.5159,77.4841,ok," in r for r in csv_rows)
    assert any(",outside," in r for r in csv_rows) and any(",1 seed,,,ok," in r for r in csv_rows)


# -- notes (mmbench.report.notes) ------------------------------------------------------------------------
def test_only_notes_that_change_a_compared_number_become_footnotes(demo):
    recipe_dir = demo / "recipes" / "demo"
    for ds in ("twitter15", "twitter17"):
        (recipe_dir / f"{ds}.yaml").write_text(RECIPE.format(ds=ds) + 'assumptions: ["we chose 7 layers", "a metric definition"]\n'
                                              'footnotes: ["we chose"]\nsources: {train.epochs: "§5: one epoch"}\n')
    (recipe_dir / "paper.yaml").write_text(PAPER.replace('paper: [75.0, null]}', 'paper: [null, null], note: "a sweep point"}'))
    text = report("demo")
    assert row(text, "Ours").startswith("| Ours[^1] [R1](#r1) |")  # the named note, on the row it changes
    assert row(text, "Ours-lr").startswith("| Ours-lr[^2] [R1](#r1) |")  # no paper number: only its own row note
    assert "[^1]: we chose 7 layers" in text and "[^2]: a sweep point" in text
    section = text.split('<a id="r1"></a>', 1)[1]
    assert "- footnote [^1]" in section and "- a metric definition" in section and "- a documented deviation" in section
    assert "- `train.epochs`: §5: one epoch" in section
    assert text.count("we chose 7 layers") == 1 and text.count("a metric definition") == 1


def test_a_footnote_must_name_exactly_one_note(demo):
    from mmbench.errors import MmbenchError

    path = demo / "recipes" / "demo" / "twitter15.yaml"
    path.write_text(RECIPE.format(ds="twitter15") + 'footnotes: ["no such note"]\n')
    with pytest.raises(MmbenchError, match=r"twitter15.yaml.*footnotes\[0\].*opens 0 of"):
        resolve("demo/twitter15")
    path.write_text(RECIPE.format(ds="twitter15"))
    before = resolve("demo/twitter15").config_hash
    path.write_text(RECIPE.format(ds="twitter15") + 'footnotes: ["a documented deviation"]\n')
    assert resolve("demo/twitter15").config_hash == before  # notes never change a run's identity


# -- plots and the files report writes -------------------------------------------------------------------
SWEEP = PAPER.replace('    rows:\n      - {group: Text, label: Other, paper: [70.0, 60.0]}', '    plot: true\n    rows:').replace(
    '      - {group: Text, label: Ours, recipe: "demo/{dataset}", paper: [75.0, 65.0], aggregation: mean of 3 runs}\n'
    '      - {group: Text, label: Ours-lr, recipe: "demo/{dataset}", overrides: ["train.optimizers.main.lr=0.5"], paper: [75.0, null]}',
    '      - {label: "lr = 0.001", recipe: "demo/{dataset}", paper: [75.0, 65.0]}\n'
    '      - {label: "lr = 0.5", recipe: "demo/{dataset}", overrides: ["train.optimizers.main.lr=0.5"], paper: [null, 66.0]}')


def test_sweep_plot_names_its_series_axes_and_keeps_colours(demo, tmp_path, monkeypatch):
    import matplotlib.figure

    (demo / "recipes" / "demo" / "paper.yaml").write_text(SWEEP)
    for seed, acc in enumerate([74.0, 76.0]):
        fake_run("demo/twitter15", seed, acc)
        fake_run("demo/twitter17", seed, acc - 10)
    fake_run("demo/twitter15", 0, 50.0, overrides=["train.optimizers.main.lr=0.5"])
    figures = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda self, *a, **k: figures.append(self))
    report("demo", plot_dir=tmp_path / "out")
    report("demo", plot_dir=tmp_path / "out", smoke=True)  # no smoke runs: nothing drawn
    fake_run("demo/twitter15", 0, 10.0, smoke=True)
    report("demo", plot_dir=tmp_path / "out", smoke=True)
    full, smoke = figures
    panels = full.axes
    assert [ax.get_xlabel() for ax in panels] == ["lr", "lr"] and panels[0].get_ylabel() == "accuracy (test)"
    legends = [[t.get_text() for t in ax.get_legend().get_texts()] for ax in panels]
    assert sorted(legends[0]) == ["ours (mean ± std over 1–2 seeds)", "paper"]
    assert sorted(legends[1]) == ["ours (mean ± std over 2 seeds)", "paper"]
    colour = [{line.get_label(): line.get_color() for line in ax.get_lines() if not line.get_label().startswith("_")} for ax in panels]
    assert colour[0]["paper"] == colour[1]["paper"]
    ours = [ax.containers[0].lines[0].get_color() for ax in panels]  # the error-bar series
    assert ours[0] == ours[1] != colour[0]["paper"]
    assert "SMOKE" in [t.get_text() for t in smoke.texts] and "SMOKE" not in [t.get_text() for t in full.texts]


def test_report_out_lists_every_file_and_a_table_option_renders_one_table(demo, tmp_path):
    from typer.testing import CliRunner

    from mmbench.cli import app

    (demo / "recipes" / "demo" / "paper.yaml").write_text(SWEEP + SWEEP[SWEEP.index("  - id: t1"):].replace("id: t1", "id: t2")
                                                          .replace("Table 1: demo", "Table 2: demo"))
    fake_run("demo/twitter15", 0, 76.5)
    result = CliRunner().invoke(app, ["report", "demo", "--out", str(tmp_path / "out")])
    written = sorted(line.removeprefix("wrote ") for line in result.stdout.splitlines() if line.startswith("wrote "))
    on_disk = sorted(str(p) for p in (tmp_path / "out").iterdir())
    assert written == on_disk and len(on_disk) == 3, result.stdout  # demo.md, demo-t1.png, demo-t2.png
    only = CliRunner().invoke(app, ["report", "demo", "--table", "t2"]).stdout
    assert "## Table 2: demo" in only and "Table 1: demo" not in only


def test_reproduce_table_prints_that_table_only(demo, monkeypatch, capsys):
    from mmbench import reproduce

    (demo / "recipes" / "demo" / "paper.yaml").write_text(PAPER + PAPER[PAPER.index("  - id: t1"):].replace("id: t1", "id: t2")
                                                          .replace("Table 1: demo", "Table 2: demo"))
    monkeypatch.setattr(reproduce, "_ensure_prepared", lambda dataset, smoke: None)
    trained = []
    monkeypatch.setattr(reproduce, "_run_local", lambda jobs, skip, device: trained.extend(jobs))
    reproduce.run_plan("demo", "twitter15", None, False, False, False, "cpu", tables=["t2"])
    out = capsys.readouterr().out
    assert trained and "## Table 2: demo" in out and "Table 1: demo" not in out
