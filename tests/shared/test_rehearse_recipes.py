"""One recipe per paper rehearsed end to end at reduced width (1/16 of every encoder width; depths,
vocabularies, region counts/dims, image sizes and sequence lengths real): the code path of
`mmbench rehearse` in CI. Full width is `make rehearse` (minutes, not in CI)."""

from __future__ import annotations

import pytest

from mmbench.rehearsal.run import rehearse

RECIPES = ["itm/twitter15", "dtca/twitter15", "cmcs/twitter15", "sppscl/mvsa-single", "dcpa/flickr30k"]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_rehearsal_runs_every_optimiser_and_stays_finite(recipe):
    # ITM at batch 4: its one VG batch of 2 holds no related image-text pair, and L_ATT (eq 6) counts only
    # related pairs, so loss_att is exactly 0 there and the rehearsal rightly fails it (zero_loss_terms)
    report = rehearse(recipe, steps=1, batch=4 if recipe.startswith("itm/") else 2, device="cpu", width_scale=1 / 16)
    assert report["ok"], report
    assert report["finite"] == {"losses": True, "gradients": True, "predictions": True}
    assert report["unstepped_optimizers"] == [] and all(n >= 1 for n in report["optimizer_steps"].values())
    assert report["eval_batch"]["predictions"] > 0
    assert report["parameters"]["total"] >= report["parameters"]["trainable"] > 0
    assert report["samples_per_s"] > 0 and report["memory"]["peak_rss_mb"] > 0
    disk = report["checkpoint_bytes"]  # Adam-family optimisers: the full state is about 3x the trained weights
    assert disk["full_state"] > disk["weights"] > 0 and disk["finished_best_weights"] == disk["weights"]
    # every logged loss term moved off 0; a steady-state speed and the epoch / plan estimates from it
    assert report["loss_terms"] and report["zero_loss_terms"] == []
    assert report["steady_state"]["samples_per_s"] > 0 and report["estimate"]["epoch_seconds"] > 0
    assert report["estimate"]["plan_seconds"] >= report["estimate"]["run_seconds"] > 0
    # every encoder came from a built-in architecture (nothing was downloaded or read from a cache)
    assert report["encoders"] and all(v["init"] == "random" and v["parameters"] > 0 for v in report["encoders"].values())


def test_all_recipes_walks_every_paper_and_each_encoder_swap_once():
    from mmbench.recipes.loader import paper_names
    from mmbench.rehearsal.table import format_row, plan_rows

    rows = plan_rows()
    assert len(rows) == len(set((name, tuple(o)) for name, o in rows))
    for paper in paper_names():
        assert any(name.startswith(paper + "/") for name, _ in rows), paper
    swaps = [o for _, o in rows if any(s.startswith("model.image_encoder=facebook/deit") for s in o)]
    assert len(swaps) == 2  # DTCA Figure 5's DeiT row, on both datasets
    assert ("dtca/twitter15", []) in rows  # the plain recipe even though its first table row has overrides
    line = format_row({"recipe": "x/y", "overrides": ["a=1"], "error": "boom"})
    assert line.startswith("| x/y a=1 |") and "error: boom" in line
