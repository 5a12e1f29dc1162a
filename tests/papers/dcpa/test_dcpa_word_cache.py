"""The frozen word-feature cache is keyed by the captions it encodes: a `data.subset=N` run over the
same captions file must not leave a short cache that a later full run reads (it did: the full smoke
run then indexed caption 44 of a 16-caption cache)."""

import torch

from mmbench.papers.dcpa.text import word_features

CAPTIONS = [f"a dog number {i} runs on the grass" + " fast" * (i % 4) for i in range(24)]


def _words(captions):
    return word_features(captions, {"dataset": "flickr30k", "split": "train", "captions": "same-file-sha"},
                         "tiny-bert", 32, "float32", torch.device("cpu"))


def test_a_subset_cache_never_serves_the_full_captions(mm_env):
    subset = _words(CAPTIONS[:16])
    full = _words(CAPTIONS)
    assert len(subset) == 16 and len(full) == len(CAPTIONS)
    words, mask = full.batch([20, 3], torch.device("cpu"))
    assert words.shape[0] == 2 and mask.sum(1).tolist() == [int(full.length[20]), int(full.length[3])]
    # the first 16 captions encode the same either way (frozen encoder, fixed seed)
    assert torch.equal(subset.batch([5], torch.device("cpu"))[0], full.batch([5], torch.device("cpu"))[0])


def test_changed_captions_get_their_own_cache(mm_env):
    before = _words(CAPTIONS[:8])
    changed = _words(["a cat sleeps"] + CAPTIONS[1:8])
    assert int(changed.length[0]) != int(before.length[0])
