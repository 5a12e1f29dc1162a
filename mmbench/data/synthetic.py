"""Small synthetic datasets written in the exact upstream raw formats, with a learnable signal in
both text and image. Tests, `--smoke` and `make demo` prepare them through the same code as real data.

The signal: each target is followed by a sentiment phrase drawn from a polarity lexicon (with 20%
of phrases swapped for a neutral filler, so text alone is not perfect), and the image's dominant
colour encodes the polarity of the tweet's first target (red/grey/green + noise).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

NAMES = ["Alice", "Bob", "Carol", "Dave", "Eve", "Frank", "Grace", "Heidi", "Ivan", "Judy",
         "Mallory", "Oscar", "Peggy", "Trent", "Victor", "Walter", "Boston", "Paris", "Texas", "NBA"]
POLARITY_WORDS = {
    0: ["is terrible", "looks awful", "was a disaster", "is so sad", "hates it"],
    1: ["is here", "was at the game", "spoke today", "is in town", "posted this"],
    2: ["is amazing", "looks great", "won again", "is so happy", "loves it"],
}
FILLER = ["today", "the", "news", "photo", "rt", "@", "#", "city", "game", "night", "new", "video", ":", "!"]
COLOURS = {0: (200, 40, 40), 1: (128, 128, 128), 2: (40, 200, 40)}
# split sizes in tweets (each tweet has 1-2 targets, so rows are ~1.5x this)
SPLIT_TWEETS = {"train": 200, "dev": 48, "test": 48}


def vocabulary() -> list[str]:
    """Every word the generator can emit (the tiny tokenizers are built from it)."""
    words = {w.lower() for w in NAMES} | set(FILLER)
    for phrases in POLARITY_WORDS.values():
        for phrase in phrases:
            words.update(phrase.split())
    return sorted(words)


def make_tweets(n: int, rng: random.Random) -> list[dict]:
    """Tweets with 1-2 targets; each target carries its own polarity."""
    tweets = []
    for _ in range(n):
        n_targets = 1 if rng.random() < 0.6 else 2
        targets = rng.sample(NAMES, n_targets)
        labels = [rng.choice([0, 1, 1, 2, 2]) for _ in targets]  # neutral/positive-heavy like Twitter
        words: list[str] = [rng.choice(FILLER) for _ in range(rng.randint(1, 3))]
        spans = []
        for target, label in zip(targets, labels):
            phrase = rng.choice(POLARITY_WORDS[label] if rng.random() < 0.8 else POLARITY_WORDS[1])
            spans.append((len(words), target))
            words += [target, *phrase.split(), rng.choice(FILLER)]
        tweets.append({"words": words, "spans": spans, "labels": labels})
    return tweets


def tweet_rows(tweets: list[dict], image_ids: list[str]) -> list[dict]:
    """One TMSC row per target: the sentence with that target replaced by $T$."""
    rows = []
    for tweet, image_id in zip(tweets, image_ids):
        for (position, target), label in zip(tweet["spans"], tweet["labels"]):
            words = list(tweet["words"])
            words[position] = "$T$"
            rows.append({"sentence": " ".join(words), "target": target, "label": label, "image_id": image_id})
    return rows


def write_image(path: Path, polarity: int, rng: np.random.Generator, size: int = 32) -> None:
    from PIL import Image

    base = np.array(COLOURS[polarity], dtype=np.float32)
    pixels = base + rng.normal(0, 40, size=(size, size, 3))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)


def write_twitter(raw_dir: Path, images_dir: Path, seed: int = 13, split_tweets: dict[str, int] | None = None) -> None:
    """Synthetic Twitter-15/17 in TomBERT's layout: {split}.tsv, {split}.txt and images/*.jpg."""
    from mmbench.data.formats.tombert import write_tsv, write_txt

    rng = random.Random(seed)
    np_rng = np.random.default_rng(seed)
    raw_dir.mkdir(parents=True, exist_ok=True)
    images_dir.mkdir(parents=True, exist_ok=True)
    next_image = 1000
    for split, n in (split_tweets or SPLIT_TWEETS).items():
        tweets = make_tweets(n, rng)
        image_ids = []
        for tweet in tweets:
            image_id = f"{next_image}.jpg"
            next_image += 1
            write_image(images_dir / image_id, tweet["labels"][0], np_rng)
            image_ids.append(image_id)
        rows = tweet_rows(tweets, image_ids)
        write_tsv(raw_dir / f"{split}.tsv", rows, with_label=split != "test")
        write_txt(raw_dir / f"{split}.txt", rows)
