"""What a rehearsal's steady-state speed means for a real run: the wall time of one epoch of the
recipe's dataset and of the whole paper plan (every distinct table row, every seed), on the device
the rehearsal ran on.

Assumptions (written into every estimate): training examples per epoch are the dataset's published
train count (mmbench.data.catalog); every run of the plan costs the rehearsed recipe's seconds per
training example (rows that swap an encoder or a dataset are scaled by their own epochs × examples
only); evaluation, data preparation and feature extraction are not included.
"""

from __future__ import annotations

ASSUMES = ("epoch = published train examples / steady-state samples/s; every plan run costs this recipe's "
           "seconds per training example (its own epochs × examples × seeds); evaluation and preparation excluded")


def _train_examples(dataset: str) -> int | None:
    from mmbench.data.catalog import get_dataset

    return get_dataset(dataset).published_counts.get("train")


def estimate(resolved, samples_per_s: float | None) -> dict:
    """Epoch and plan seconds at `samples_per_s` (None when no steady-state speed was measured)."""
    from mmbench.report.tables import plan

    recipe = resolved.recipe
    examples = _train_examples(recipe.dataset)
    out: dict = {"assumes": ASSUMES, "train_examples": examples, "epochs": recipe.train.epochs,
                 "seeds": len(recipe.train.seeds), "epoch_seconds": None, "run_seconds": None,
                 "plan_runs": None, "plan_seconds": None}
    if not samples_per_s or not examples:
        return out
    per_example = 1.0 / samples_per_s
    out["epoch_seconds"] = round(examples * per_example, 1)
    out["run_seconds"] = round(examples * per_example * recipe.train.epochs, 1)
    paper = resolved.name.split("/", 1)[0]
    try:
        runs = plan(paper, None, smoke=False)
    except Exception as error:  # a name outside recipes/<paper>/paper.yaml (e.g. a user's recipe): no plan
        out["plan_error"] = f"{type(error).__name__}: {error}"
        return out
    total = 0.0
    for run in runs:
        n = _train_examples(run.recipe.dataset) or 0
        total += n * run.recipe.train.epochs * len(run.recipe.train.seeds) * per_example
    out["plan_runs"] = sum(len(run.recipe.train.seeds) for run in runs)
    out["plan_seconds"] = round(total, 1)
    return out
