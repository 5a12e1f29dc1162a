"""SPP-SCL switches not covered elsewhere: λ in eq (7) (5 hard-coded in the released code), the released
Linear-ReLU-Linear Hierarchical Attention (`ha_mlp_layers=2`), truncated-JPEG loading, the
fine-tune-layers-9-12 reading of §Text Encoder (`text_trained_layers`), and the official recipes'
schedule / seed / selection / evaluation batch."""

import io

import pytest
import torch

from mmbench.engine.method import StepControl
from mmbench.engine.precision import float64_compute
from mmbench.engine.trainer import build_session
from mmbench.errors import DataError, RecipeError
from mmbench.papers.sppscl.features import load_image
from mmbench.papers.sppscl.model import HierarchicalAttentionText
from mmbench.recipes.loader import resolve


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("MMBENCH_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("MMBENCH_RUNS", str(tmp_path / "runs"))
    torch.set_num_threads(1)
    with float64_compute():  # smoke sessions compute in float64, as the trainer runs them
        yield


def _one_step(overrides, seed=0):
    session = build_session(resolve("sppscl/hfm", overrides, smoke=True), seed=seed)
    method, model = session.method, session.model
    optimizer = torch.optim.SGD([p for _, p in method.parameters_for(model, "main")], lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    step = StepControl(model, {"main": optimizer}, {"main": scheduler}, None, "global", session.ctx)
    model.train()
    torch.manual_seed(0)
    return method.train_step(model, next(iter(method.train_batches(0))), step), session


def test_lambda_weights_cross_entropy_in_eq7():
    five, _ = _one_step(["model.lambda_ce=5", "model.use_inter=false"])
    ten, _ = _one_step(["model.lambda_ce=10", "model.use_inter=false"])
    assert five["ce"] == pytest.approx(ten["ce"])  # lr 0, same batch and weights: only λ differs
    assert ten["loss"] - five["loss"] == pytest.approx(5 * five["ce"], rel=1e-9)
    assert resolve("sppscl/hfm-official").recipe.model["lambda_ce"] == 5.0  # the released hard-coded 5·CE
    assert resolve("sppscl/hfm").recipe.model["lambda_ce"] == 10.0  # Table 2


def test_released_linear_relu_linear_hierarchical_attention():
    ha = HierarchicalAttentionText(layers=4, hidden=6, lstm_hidden=3, dim=4, dropout=0.0, mlp_layers=2).eval()
    first, relu, second = ha.layer_scores
    assert isinstance(relu, torch.nn.ReLU) and first.bias is None and second.bias is None
    cls = torch.randn(3, 4, 6)
    expected = torch.sigmoid(torch.relu(cls.mean(-1) @ first.weight.t()) @ second.weight.t())
    assert torch.allclose(ha.layer_weights(cls), expected)
    one = HierarchicalAttentionText(layers=4, hidden=6, lstm_hidden=3, dim=4, dropout=0.0, mlp_layers=1)
    assert len(one.layer_scores) == 1  # the paper's single FC
    _, session = _one_step(["model.ha_mlp_layers=2"])
    assert len(session.model.heads.text.layer_scores) == 3


def _truncated_jpeg(path):
    from PIL import Image

    buffer = io.BytesIO()
    noise = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (64, 64, 3), generator=noise, dtype=torch.uint8).numpy()
    Image.fromarray(pixels, "RGB").save(buffer, format="JPEG")  # noise: the scan data outweighs the headers
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) * 2 // 3])  # cut mid-scan


def test_truncated_images_error_or_load(tmp_path):
    _truncated_jpeg(tmp_path / "7.jpg")
    with pytest.raises(DataError, match=r"7\.jpg.*image_errors"):
        load_image(tmp_path, "7.jpg", "error", "error")
    image = load_image(tmp_path, "7.jpg", "error", "load_truncated")  # released Dataloader.py
    assert image.size == (64, 64) and image.mode == "RGB"
    assert load_image(tmp_path, "7.jpg", "error", "blank") is None
    from PIL import ImageFile

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # the global flag is restored


def test_text_trained_layers_reading():
    with pytest.raises(RecipeError, match="text_trained_layers"):
        resolve("sppscl/hfm", ["model.text_trained_layers=4"], smoke=True)  # no cache above the frozen layers
    _, session = _one_step(["model.text_trained_layers=2", "model.feature_cache=false"])
    model, method = session.model, session.method
    trained = {n for n, _ in method.parameters_for(model, "main") if n.startswith("extractor.")}
    layers = model.extractor.inner.text_model.encoder.layer
    assert trained and all(".encoder.layer.2." in n or ".encoder.layer.3." in n for n in trained)  # the last two of 4
    assert not any(p.requires_grad for p in layers[0].parameters())
    model.train()
    assert layers[3].training and not layers[0].training  # fine-tuned layers: dropout on; frozen ones: eval
    batch = next(iter(method.train_batches(0)))
    out = model(batch)
    out["logits"].sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in layers[3].parameters())
    assert all(p.grad is None for p in layers[0].parameters())
    _, frozen = _one_step(["model.feature_cache=false"])  # the default reading: BERT frozen
    assert not any(n.startswith("extractor.") for n, _ in frozen.method.parameters_for(frozen.model, "main"))


@pytest.mark.parametrize("dataset,batch", [("mvsa-single", 64), ("mvsa-multiple", 128), ("hfm", 256)])
def test_official_recipes_follow_the_released_train_py(dataset, batch):
    official = resolve(f"sppscl/{dataset}-official").recipe.train
    assert official.optimizers["main"].schedule.step_size == 10  # StepLR(step_size=10) for every dataset
    assert official.seeds == [42] and official.select_mode == "last" and official.precision == "fp32"
    assert official.batch_size == batch and official.eval_batch_size is None  # evaluation batches = training batches
    paper = resolve(f"sppscl/{dataset}").recipe.train
    assert paper.eval_batch_size is None and paper.batch_size == batch
    assert paper.optimizers["main"].schedule.step_size == {"mvsa-single": 10, "mvsa-multiple": 15, "hfm": 5}[dataset]
