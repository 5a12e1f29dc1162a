import pytest

from mmbench.errors import RecipeError
from mmbench.recipes.loader import load_raw, recipe_names, resolve


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


BASE = """
paper: demo
method: text_tmsc
dataset: twitter15
model: {text_encoder: tiny-bert}
train:
  epochs: 1
  batch_size: 4
  optimizers: {main: {lr: 0.001}}
assumptions: ["base assumption"]
"""


@pytest.fixture
def recipes(tmp_path, monkeypatch):
    monkeypatch.setenv("MMBENCH_RECIPES", str(tmp_path))
    write(tmp_path / "demo" / "_base.yaml", BASE)
    return tmp_path


def test_unknown_key_names_file_and_key_path_with_hint(recipes):
    write(recipes / "demo" / "bad.yaml", "extends: _base.yaml\ntrain:\n  epocs: 3\n")
    with pytest.raises(RecipeError) as err:
        resolve("demo/bad")
    message = str(err.value)
    assert "bad.yaml" in message and "train.epocs" in message and "did you mean train.epochs" in message


def test_unknown_model_key_is_checked_by_the_method_config(recipes):
    write(recipes / "demo" / "bad.yaml", "extends: _base.yaml\nmodel:\n  dropuot: 0.3\n")
    with pytest.raises(RecipeError, match=r"model\.dropuot: unknown key \(did you mean model\.dropout\?\)"):
        resolve("demo/bad")


def test_extends_merges_one_level_and_concatenates_notes(recipes):
    write(recipes / "demo" / "child.yaml", "extends: _base.yaml\ntrain: {epochs: 5}\nassumptions: [child]\n")
    resolved = resolve("demo/child")
    assert resolved.recipe.train.epochs == 5
    assert resolved.recipe.train.batch_size == 4  # inherited
    assert resolved.recipe.assumptions == ["base assumption", "child"]


def test_two_levels_of_extends_are_rejected(recipes):
    write(recipes / "demo" / "_mid.yaml", "extends: _base.yaml\n")
    path = write(recipes / "demo" / "deep.yaml", "extends: _mid.yaml\n")
    with pytest.raises(RecipeError, match="at most one level"):
        load_raw(path)


def test_overrides_are_validated_and_recorded(recipes):
    write(recipes / "demo" / "ok.yaml", "extends: _base.yaml\n")
    resolved = resolve("demo/ok", ["train.optimizers.main.lr=0.5", "model.dropout=0.2"])
    assert resolved.recipe.train.optimizers["main"].lr == 0.5
    assert resolved.model_config.dropout == 0.2
    assert resolved.overrides == ["train.optimizers.main.lr=0.5", "model.dropout=0.2"]
    with pytest.raises(RecipeError, match="train.epochs"):
        resolve("demo/ok", ["train.epochs=many"])
    with pytest.raises(RecipeError, match="unknown key"):
        resolve("demo/ok", ["train.nope=1"])
    with pytest.raises(RecipeError, match="expected key.path=value"):
        resolve("demo/ok", ["train.epochs"])


def test_config_hash_tracks_training_changes_only(recipes):
    write(recipes / "demo" / "ok.yaml", "extends: _base.yaml\n")
    base = resolve("demo/ok").config_hash
    assert resolve("demo/ok", ["train.optimizers.main.lr=0.5"]).config_hash != base
    assert resolve("demo/ok", ["description=changed words"]).config_hash == base
    assert resolve("demo/ok", ["train.seeds=[5,6]"]).config_hash == base


def test_unknown_recipe_suggests_close_names(recipes):
    write(recipes / "demo" / "twitter15.yaml", "extends: _base.yaml\n")
    with pytest.raises(RecipeError, match="did you mean 'demo/twitter15'"):
        resolve("demo/twiter15")


def test_every_shipped_recipe_resolves_with_and_without_smoke():
    names = recipe_names()
    assert "baselines/twitter15-bert" in names
    for name in names:
        assert resolve(name).recipe.method
        assert resolve(name, smoke=True).recipe.data.synthetic


def test_smoke_overrides_apply_before_user_overrides():
    resolved = resolve("baselines/twitter15-bert", ["train.epochs=1"], smoke=True)
    assert resolved.model_config.text_encoder == "tiny-bert"
    assert resolved.recipe.train.epochs == 1
    assert resolved.overrides == ["train.epochs=1"] and resolved.smoke


def test_an_edited_recipe_is_read_again_and_a_parsed_copy_cannot_leak(recipes):
    """read_yaml caches parses by the file's text: a same-size edit within one mtime tick is still seen,
    and changing what one caller got does not change the next read."""
    path = write(recipes / "demo" / "edit.yaml", "extends: _base.yaml\ntrain:\n  epochs: 1\n")
    assert resolve("demo/edit").recipe.train.epochs == 1
    path.write_text("extends: _base.yaml\ntrain:\n  epochs: 2\n")  # same size
    assert resolve("demo/edit").recipe.train.epochs == 2
    first = load_raw(path)
    first["train"]["epochs"] = 99
    assert load_raw(path)["train"]["epochs"] == 2
