"""`tiny-*` encoders: random-init models built from small configs, with an offline tokenizer whose
vocabulary is fixed in code (special tokens, characters, the synthetic generator's words), so tests
and smoke runs need no download and give the same ids on every machine."""

from __future__ import annotations

import string
from functools import lru_cache

TINY_TEXT = {"tiny-bert": "bert", "tiny-roberta": "roberta"}
TINY_HIDDEN = 32


@lru_cache(maxsize=None)
def tiny_vocab() -> tuple[str, ...]:
    from mmbench.data.synthetic import vocabulary

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "$t$"]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    words = [w for w in vocabulary() if w not in chars]
    return tuple(dict.fromkeys(specials + chars + ["##" + c for c in chars] + words))


def tiny_tokenizer(kind: str):
    """A WordPiece tokenizer; `kind` picks BERT ([CLS] a [SEP] b [SEP]) or RoBERTa-style pairs
    (<s> a </s></s> b </s>, with [CLS]/[SEP] standing in for <s>/</s>)."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(tiny_vocab())}
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=50))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    cls_id, sep_id = vocab["[CLS]"], vocab["[SEP]"]
    pair = "[CLS] $A:0 [SEP]:0 $B:1 [SEP]:1" if kind == "bert" else "[CLS] $A:0 [SEP]:0 [SEP]:0 $B:0 [SEP]:0"
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A:0 [SEP]:0", pair=pair, special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=512,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"] if kind == "bert" else ["input_ids", "attention_mask"],
    )


def tiny_text_model(kind: str):
    from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

    common = dict(
        vocab_size=len(tiny_vocab()), hidden_size=TINY_HIDDEN, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=256,
    )
    if kind == "bert":
        return BertModel(BertConfig(**common))
    # RoBERTa offsets positions by padding_idx + 1; pad id 0 matches the tiny vocab.
    return RobertaModel(RobertaConfig(**common, pad_token_id=0, bos_token_id=2, eos_token_id=3, type_vocab_size=1))
