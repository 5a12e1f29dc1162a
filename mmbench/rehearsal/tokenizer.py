"""An offline tokenizer with a checkpoint's real vocabulary size and special-token ids.

The vocabulary holds the special tokens at the checkpoint's ids (so RoBERTa's padding index 1, BERT's
[CLS]=101 and CLIP's end-of-text 49407 mean what the model expects), every character and its `##`
continuation, and `[unused{i}]` filler up to the real size: ids cover the whole embedding table.
Words split into characters, so a synthetic sentence gives at least as many tokens as real BPE or
WordPiece would (a rehearsal errs on the long side), truncated at the recipe's max_length.
"""

from __future__ import annotations

import string


def _vocab(layout: dict) -> dict[str, int]:
    size = layout["vocab_size"]
    vocab: dict[str, int] = {}
    taken: set[int] = set()
    for token, index in layout["specials"].values():
        vocab[token] = index
        taken.add(index)
    pieces = list(string.ascii_letters + string.digits + string.punctuation + "$")
    pieces += ["##" + c for c in pieces]
    free = (i for i in range(size) if i not in taken)
    for piece in dict.fromkeys(pieces):
        if piece not in vocab:
            vocab[piece] = next(free)
    for index in free:
        vocab[f"[unused{index}]"] = index
    return vocab


def offline_tokenizer(layout: dict):
    """A fast tokenizer (transformers' PreTrainedTokenizerFast) for a layout of
    mmbench.rehearsal.architectures (BERT_UNCASED, ROBERTA, ALBERT, CLIP_TOKENIZER)."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import PreTrainedTokenizerFast

    vocab = _vocab(layout)
    specials = {role: token for role, (token, _) in layout["specials"].items()}
    tok = Tokenizer(WordPiece(vocab, unk_token=specials["unk"], max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=layout["lowercase"])
    # no multi-character pieces exist, so WordPiece's longest match gives `c ##c ##c` per word
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    cls, sep = specials["cls"], specials["sep"]
    pair = {"bert": f"{cls} $A:0 {sep}:0 $B:1 {sep}:1", "roberta": f"{cls} $A:0 {sep}:0 {sep}:0 $B:0 {sep}:0",
            "clip": f"{cls} $A:0 {sep}:0 $B:0 {sep}:0"}[layout["style"]]
    tok.post_processor = processors.TemplateProcessing(single=f"{cls} $A:0 {sep}:0", pair=pair,
                                                       special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])])
    names = ["input_ids", "token_type_ids", "attention_mask"] if layout["style"] == "bert" else ["input_ids", "attention_mask"]
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token=specials["unk"], pad_token=specials["pad"], cls_token=cls, sep_token=sep,
        bos_token=cls, eos_token=sep, mask_token=specials.get("mask"), model_max_length=layout["model_max_length"],
        model_input_names=names,
    )
