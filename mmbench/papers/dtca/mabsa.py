"""Joint multimodal aspect-sentiment extraction (MABSA) examples built from TomBERT's TMSC rows.

TomBERT gives one row per (tweet, target): the sentence with `$T$`, the target, its polarity and
the image. DTCA's released code (official-code.md §2b) substitutes the target back, groups rows by
the resulting whitespace-tokenised sentence, and labels every word with 5 tags (DTCA §2.2):

    O = 0, I = 1, B-NEG = 2, B-NEU = 3, B-POS = 4        (B tag = polarity + 2, polarity 0/1/2)

Gold aspects are (start word, end word, polarity) triples. The decoding rule of the released
`cal_f1` (§2f) turns tags back into triples: a B tag closes any open span and opens one, I extends
the open span (ignored when none is open), O closes it; polarity comes only from the B tag.

Rows whose sentences are identical after substitution are merged even when their images differ (the
first image is kept), exactly as the released code does: Twitter-2015 gives 2100/727/674 sentences
and 3179/1122/1037 aspects (DTCA Table 1). Where two targets of one sentence claim the same words
(one case in Twitter-2015 train: "tesco" labelled neutral and negative under two images), the later
row's tag wins, and both gold triples stay in the recall denominator.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mmbench.data.formats.tombert import PLACEHOLDER
from mmbench.errors import DataError

TAG_NAMES = ("O", "I", "B-NEG", "B-NEU", "B-POS")
O_TAG, I_TAG, B_OFFSET = 0, 1, 2
NUM_TAGS = len(TAG_NAMES)

Triple = tuple[int, int, int]  # (start word, end word inclusive, polarity 0 neg / 1 neu / 2 pos)


@dataclass
class Sentence:
    """One sequence-labelling example: the words, their tags and the gold (span, polarity) triples."""

    id: str
    words: list[str]
    image_id: str
    tags: list[int]
    gold: list[Triple] = field(default_factory=list)
    image_ids: list[str] = field(default_factory=list)  # every image of the merged rows


def substitute(row: dict) -> tuple[list[str], int, int]:
    """The sentence's words with `$T$` replaced by the target's words, and the target's word span."""
    words = row["sentence"].split()
    if words.count(PLACEHOLDER) != 1:
        raise DataError(f"row {row.get('id')}: sentence must contain {PLACEHOLDER} as one word exactly once")
    target = row["target"].split()
    if not target:
        raise DataError(f"row {row.get('id')}: empty target")
    start = words.index(PLACEHOLDER)
    return words[:start] + target + words[start + 1 :], start, start + len(target) - 1


def triples_to_tags(n_words: int, triples: list[Triple]) -> list[int]:
    """Word tags of a sentence; later triples overwrite earlier ones where they overlap."""
    tags = [O_TAG] * n_words
    for start, end, polarity in triples:
        tags[start] = B_OFFSET + polarity
        for position in range(start + 1, end + 1):
            tags[position] = I_TAG
    return tags


def tags_to_triples(tags: list[int]) -> list[Triple]:
    """The released `cal_f1` span rule (official-code.md §2f) on one sentence's word tags."""
    triples: list[Triple] = []
    open_span: list[int] | None = None  # [start, end, polarity]
    for position, tag in enumerate(tags):
        if tag >= B_OFFSET:
            if open_span is not None:
                triples.append(tuple(open_span))
            open_span = [position, position, tag - B_OFFSET]
        elif tag == I_TAG:
            if open_span is not None:
                open_span[1] = position
        else:
            if open_span is not None:
                triples.append(tuple(open_span))
            open_span = None
    if open_span is not None:
        triples.append(tuple(open_span))
    return triples


def group_rows(rows: list[dict]) -> list[Sentence]:
    """TMSC rows (one per target) → MABSA sentences (all targets of a tweet), in first-seen order."""
    by_text: dict[str, Sentence] = {}
    triples: dict[str, list[Triple]] = {}
    for row in rows:
        words, start, end = substitute(row)
        key = " ".join(words)
        if key not in by_text:
            by_text[key] = Sentence(id=f"s{len(by_text)}", words=words, image_id=row["image_id"], tags=[])
            triples[key] = []
        sentence = by_text[key]
        if row["image_id"] not in sentence.image_ids:
            sentence.image_ids.append(row["image_id"])
        triples[key].append((start, end, int(row["label"])))
    for key, sentence in by_text.items():
        sentence.gold = triples[key]
        sentence.tags = triples_to_tags(len(sentence.words), triples[key])
    return list(by_text.values())


def statistics(sentences: list[Sentence]) -> dict[str, float]:
    """DTCA Table 1's columns: #S, #A, polarity counts, MA, MS, mean and max length in words."""
    polarities = [p for s in sentences for *_, p in s.gold]
    lengths = [len(s.words) for s in sentences]
    return {
        "sentences": len(sentences),
        "aspects": len(polarities),
        "positive": polarities.count(2),
        "neutral": polarities.count(1),
        "negative": polarities.count(0),
        "multi_aspect": sum(len(s.gold) > 1 for s in sentences),
        "multi_sentiment": sum(len({p for *_, p in s.gold}) > 1 for s in sentences),
        "mean_length": sum(lengths) / max(1, len(lengths)),
        "max_length": max(lengths, default=0),
    }


# Published statistics (DTCA Table 1), checked by tests on the real files and shown in the report.
PUBLISHED_STATISTICS = {
    "twitter15": {
        "train": {"sentences": 2100, "aspects": 3179, "positive": 928, "neutral": 1883, "negative": 368, "multi_aspect": 800, "multi_sentiment": 278, "max_length": 35},
        "dev": {"sentences": 727, "aspects": 1122, "positive": 303, "neutral": 670, "negative": 149, "multi_aspect": 286, "multi_sentiment": 119, "max_length": 40},
        "test": {"sentences": 674, "aspects": 1037, "positive": 317, "neutral": 607, "negative": 113, "multi_aspect": 258, "multi_sentiment": 104, "max_length": 37},
    },
    "twitter17": {
        "train": {"sentences": 1745, "aspects": 3562, "positive": 1508, "neutral": 1638, "negative": 416, "multi_aspect": 1159, "multi_sentiment": 733, "max_length": 39},
        "dev": {"sentences": 577, "aspects": 1176, "positive": 515, "neutral": 517, "negative": 144, "multi_aspect": 375, "multi_sentiment": 242, "max_length": 31},
        "test": {"sentences": 587, "aspects": 1234, "positive": 493, "neutral": 573, "negative": 168, "multi_aspect": 399, "multi_sentiment": 263, "max_length": 38},
    },
}
