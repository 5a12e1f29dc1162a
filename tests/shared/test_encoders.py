import pytest
import torch

from mmbench.encoders.image import TINY_IMAGE_SIZE, load_image_encoder
from mmbench.encoders.text import load_text_encoder
from mmbench.encoders.tiny import tiny_tokenizer
from mmbench.errors import WeightsNotFound


def test_tiny_tokenizers_encode_pairs_like_bert_and_roberta():
    bert = tiny_tokenizer("bert")("alice is great", "alice")
    assert bert.tokens()[0] == "[CLS]" and bert.tokens().count("[SEP]") == 2 and 1 in bert["token_type_ids"]
    roberta = tiny_tokenizer("roberta")("alice is great", "alice")
    assert roberta.tokens().count("[SEP]") == 3  # <s> a </s></s> b </s>
    # the vocabulary is fixed in code: a known synthetic word has one id, ids never depend on training
    tok = tiny_tokenizer("bert")
    assert tok.convert_ids_to_tokens(tok("alice")["input_ids"]) == ["[CLS]", "alice", "[SEP]"]


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-roberta"])
def test_tiny_text_encoders_run(name):
    model, tokenizer = load_text_encoder(name)
    batch = tokenizer(["bob looks great"], ["bob"], return_tensors="pt")
    assert model(**batch).last_hidden_state.shape[-1] == 32


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-clip", "tiny-resnet"])
def test_tiny_image_encoders_run(name):
    import numpy as np

    model, processor = load_image_encoder(name)
    model.eval()
    pixels = processor(images=[np.zeros((40, 48, 3), dtype=np.uint8)], return_tensors="pt")["pixel_values"]
    assert pixels.shape[-2:] == (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    with torch.no_grad():
        out = model.vision_model(pixel_values=pixels) if name == "tiny-clip" else model(pixel_values=pixels)
    assert out.last_hidden_state.shape[0] == 1


def test_missing_weights_give_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(WeightsNotFound, match=r"text_encoder=bert-base-uncased: weights not available offline.*--set model.text_encoder="):
        load_text_encoder("bert-base-uncased")
    with pytest.raises(WeightsNotFound, match="config.json missing"):
        load_text_encoder(str(tmp_path / "nowhere"))
    with pytest.raises(WeightsNotFound, match="image_encoder=google/vit-base-patch16-224-in21k"):
        load_image_encoder("google/vit-base-patch16-224-in21k")
