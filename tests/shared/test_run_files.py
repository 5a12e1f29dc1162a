"""The files of a run dir read well: real unicode in recipe.yaml and `mmbench show`, one way of counting
epochs (console, log.jsonl, metrics.json), example counts explained, predictions that name their example."""

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmbench.cli import app


def test_show_prints_real_unicode(mm_env):
    out = CliRunner().invoke(app, ["show", "itm/twitter15"]).stdout
    assert "§4.1" in out and "λ1 = 1" in out and "\\x" not in out and "\\u" not in out


@pytest.fixture(scope="module")
def itm_run(tmp_path_factory, shared_data_root):
    """One tiny ITM smoke run (2 epochs of 16 examples per split): its aux ITM-VG set joins dev/test."""
    from mmbench.engine.trainer import fit
    from mmbench.recipes.loader import resolve

    lines = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MMBENCH_DATA", str(shared_data_root))
        result = fit(resolve("itm/twitter15", ["train.epochs=2", "data.subset=16"], smoke=True), 0,
                     root=tmp_path_factory.mktemp("runs"), log=lines.append)
    return Path(result["run_dir"]), lines


def test_run_recipe_yaml_is_real_unicode(itm_run):
    text = (itm_run[0] / "recipe.yaml").read_text(encoding="utf-8")
    assert "§5.1: λ1 = 1" in text and "\\x" not in text and "\\u" not in text


def test_epochs_are_counted_from_one_everywhere(itm_run):
    run, console = itm_run
    printed = [int(m.group(1)) for line in console for m in [re.search(r"\] epoch (\d+)/2 ", line)] if m]
    logged = [json.loads(line)["epoch"] for line in (run / "log.jsonl").read_text().splitlines()]
    metrics = json.loads((run / "metrics.json").read_text())
    assert printed == logged == [1, 2]
    chosen = next(line for line in console if line.rstrip().endswith(" *") and f"epoch {metrics['selected_epoch']}/2 " in line)
    assert chosen  # the console marks the epoch metrics.json says it selected
    dev = [json.loads(line)["dev"]["accuracy"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert metrics["selected_epoch"] == dev.index(max(dev)) + 1  # log row `epoch` N is the N-th line (ties: earlier)


def test_metrics_json_says_why_its_counts_are_not_the_manifests(itm_run):
    metrics = json.loads((itm_run[0] / "metrics.json").read_text())
    manifest = metrics["data_manifest"]["counts"]
    assert metrics["examples"]["test"] != manifest["test"]
    assert "itm-vg" in metrics["examples_note"] and "itm-twitter15 only" in metrics["examples_note"]


def test_predictions_carry_the_example_id(itm_run):
    from mmbench.data.prepare import load_prepared

    preds = [json.loads(line) for line in (itm_run[0] / "predictions-test.jsonl").read_text().splitlines()]
    twitter, _ = load_prepared("itm-twitter15", synthetic=True)
    main = [p for p in preds if p["source"] == "tmsc"]
    assert [p["id"] for p in main] == list(twitter["test"]["id"][: len(main)])
    assert all(p["id"].startswith("test-") for p in preds if p["source"] == "itm")
    assert len({(p["source"], p["id"]) for p in preds}) == len(preds)  # an id is unique within its dataset
