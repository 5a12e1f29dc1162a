"""Synthetic ITM data in the exact upstream forms: `VG_{split}.pkl` / `{split}.pkl` plain dicts and one
`{iid}.jpg.npz` per image (`x` [dim, 100], `bbox` [100, 4], `image_h`, `image_w`).

The signal (learnable by every part of ITM):
- text: the tweets of `mmbench.data.synthetic` (a polarity phrase after each target, 80% informative);
- relevance: a related target has its GT box in the image, and the 3 proposals that overlap it
  (IoU > 0.5) carry the target name's identity vector plus its polarity vector; an unrelated
  target's name appears in no proposal (other, distractor names do);
- alignment: the GT box's overlapping proposals are the only ones with the target's vector.
Feature dim is `SYNTHETIC_DIM` (not 2048) to keep tests small; the 100 proposals are kept.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np

from mmbench.papers.itm.regions import write_region_file
from mmbench.data.synthetic import NAMES, make_tweets

SYNTHETIC_DIM = 64
NUM_REGIONS = 100
IMAGE_SIZE = (480, 640)  # (h, w)
VG_TWEETS = {"train": 80, "dev": 28, "test": 28}
TMSC_TWEETS = {"train": 96, "dev": 28, "test": 28}


def _vectors(seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    names = {name: rng.normal(0, 1, SYNTHETIC_DIM) for name in NAMES}
    polarity = rng.normal(0, 1, (3, SYNTHETIC_DIM))
    return names, polarity


def _jitter(box: np.ndarray, rng: np.random.Generator, scale: float) -> np.ndarray:
    w, h = box[2] - box[0], box[3] - box[1]
    return box + rng.uniform(-scale, scale, 4) * np.array([w, h, w, h])


def _random_box(rng: np.random.Generator) -> np.ndarray:
    h, w = IMAGE_SIZE
    bw, bh = rng.uniform(60, 250), rng.uniform(60, 250)
    x1, y1 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
    return np.array([x1, y1, x1 + bw, y1 + bh])


def write_image(path: Path, related: list[tuple[str, int, np.ndarray]], distractors: list[str], rng: np.random.Generator,
                names: dict[str, np.ndarray], polarity: np.ndarray) -> None:
    """100 proposals of background noise; 3 proposals around each related target's GT box carry its
    name and polarity vectors; 3 random proposals per distractor name carry that name."""
    features = np.abs(rng.normal(0, 0.5, (NUM_REGIONS, SYNTHETIC_DIM)))
    boxes = np.stack([_random_box(rng) for _ in range(NUM_REGIONS)])
    slots = list(rng.permutation(NUM_REGIONS))
    for name, label, gt in related:
        for _ in range(3):
            slot = slots.pop()
            boxes[slot] = _jitter(gt, rng, 0.05)  # IoU with the GT box stays above 0.5
            features[slot] += 2.0 * names[name] + 1.5 * polarity[label]
    for name in distractors:
        for _ in range(3):
            features[slots.pop()] += 2.0 * names[name]
    h, w = IMAGE_SIZE
    boxes = np.clip(boxes, 0, [w, h, w, h])
    write_region_file(path, features, boxes, IMAGE_SIZE)


def _write(raw_dir: Path, images_dir: Path, split_tweets: dict[str, int], file_name: str, with_relation: bool, seed: int) -> None:
    rng, np_rng = random.Random(seed), np.random.default_rng(seed)
    names, polarity = _vectors(7)  # the same name/polarity vectors for every synthetic ITM dataset
    raw_dir.mkdir(parents=True, exist_ok=True)
    images_dir.mkdir(parents=True, exist_ok=True)
    next_image = 0
    for split, n in split_tweets.items():
        examples = {}
        for tweet in make_tweets(n, rng):
            iid = f"syn_{seed}_{next_image}"
            next_image += 1
            related, items = [], []
            for (position, target), label in zip(tweet["spans"], tweet["labels"]):
                words = list(tweet["words"])
                words[position] = "$T$"
                is_related = rng.random() < 0.5
                gt = _random_box(np_rng) if is_related else None
                if is_related:
                    related.append((target, label, gt))
                boxes = [tuple(int(round(v)) for v in gt)] if is_related else []
                if is_related and rng.random() < 0.15:  # a second annotated box, as some real examples have
                    boxes.append(tuple(int(round(v)) for v in _random_box(np_rng)))
                relation = ("2" if rng.random() < 0.1 else "1") if is_related else "0"
                items.append({"iid": iid, "sentence": " ".join(words), "aspect": target, "sentiment": str(label),
                              "relation": relation if with_relation else None, "boxes": boxes if with_relation else []})
            in_tweet = {t for _, t in tweet["spans"]}
            distractors = rng.sample([m for m in NAMES if m not in in_tweet], 2)
            write_image(images_dir / f"{iid}.jpg.npz", related, distractors, np_rng, names, polarity)
            for item in items:
                examples[str(len(examples) + 1)] = item
        with open(raw_dir / file_name.format(split=split), "wb") as handle:
            pickle.dump(examples, handle, protocol=2)


def write_vg(raw_dir: Path, images_dir: Path, seed: int = 21, split_tweets: dict[str, int] | None = None) -> None:
    _write(raw_dir, images_dir, split_tweets or VG_TWEETS, "VG_{split}.pkl", True, seed)


def write_tmsc(raw_dir: Path, images_dir: Path, seed: int = 22, split_tweets: dict[str, int] | None = None) -> None:
    _write(raw_dir, images_dir, split_tweets or TMSC_TWEETS, "{split}.pkl", False, seed)
