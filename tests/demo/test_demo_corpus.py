"""The synthetic language of the demo model: deterministic, disjoint, structured."""

from __future__ import annotations

import random

import pytest

from replaceme.demo import corpus


def test_generation_is_deterministic():
    assert corpus.generate("train", 30, seed=0) == corpus.generate("train", 30, seed=0)
    assert corpus.generate("train", 30, seed=0) != corpus.generate("train", 30, seed=1)
    # a prefix of a longer run is the shorter run
    assert corpus.generate("validation", 40)[:10] == corpus.generate("validation", 10)


def test_splits_are_disjoint_and_differ():
    splits = corpus.generate_splits({"train": 400, "calibration": 60, "validation": 60})
    assert {k: len(v) for k, v in splits.items()} == {"train": 400, "calibration": 60, "validation": 60}
    sets = {k: set(v) for k, v in splits.items()}
    assert all(len(sets[k]) == len(splits[k]) for k in splits)  # no repeats inside a split
    assert not sets["train"] & sets["calibration"]
    assert not sets["train"] & sets["validation"]
    assert not sets["calibration"] & sets["validation"]


def test_excluded_documents_are_skipped():
    first = corpus.generate("calibration", 5)
    again = corpus.generate("calibration", 5, exclude=first[:2])
    assert again[:3] == first[2:]
    assert not set(again) & set(first[:2])


def test_unknown_split():
    with pytest.raises(ValueError, match="unknown split"):
        corpus.generate("test", 1)
    with pytest.raises(ValueError, match="unknown split"):
        corpus.generate_splits({"dev": 1})


def test_closed_vocabulary_and_single_line_documents():
    vocab = corpus.vocabulary()
    assert len(vocab) == len(set(vocab))
    known = set(vocab)
    for doc in corpus.generate("train", 200, seed=3):
        assert "\n" not in doc and doc == doc.strip()
        words = doc.split(" ")
        assert all(words) and set(words) <= known
        assert len(words) <= corpus.MAX_WORDS


def test_structure_is_consistent():
    """Determined words really are determined by the context."""
    rng = random.Random(7)
    for _ in range(200):
        words, tags = corpus.generate_tagged(rng)
        assert len(words) == len(tags)
        text = " ".join(words)
        # the cast introduced at the start is listed again at the end
        intro = text.split(" . ")[: corpus.CAST_SIZE]
        cast = [(s.split()[-9], s.split()[-6]) for s in intro]
        ending = text[text.rindex("the end : ") + len("the end : ") :].rstrip(" .").split(" , ")
        assert [tuple(e.split(" the ")) for e in ending] == cast
        # copies are exact, reversals reversed, brackets balanced, sums right
        for i, w in enumerate(words):
            if w in ("copy", "reverse") and tags[i] == "free" and words[i + 1] == ":":
                end = words.index(";", i)
                seq = words[i + 2 : end]
                out = words[end + 1 : end + 1 + len(seq)]
                assert out == (seq if w == "copy" else seq[::-1])
            if w == "plus":
                a, b = corpus.NUMBERS.index(words[i - 1]), corpus.NUMBERS.index(words[i + 1])
                assert words[i + 3] == corpus.NUMBERS[a + b]
        stack = []
        pairs = dict(corpus.BRACKETS)
        for w in words:
            if w in pairs:
                stack.append(pairs[w])
            elif w in pairs.values():
                assert stack.pop() == w
        assert not stack
        assert set(tags) <= {"free", "form", "cast", "agree", "bracket", "copy", "reverse", "count", "sum"}


def test_determined_share():
    rng = random.Random(0)
    tags = [t for _ in range(300) for t in corpus.generate_tagged(rng)[1]]
    share = sum(t not in ("free", "form") for t in tags) / len(tags)
    assert 0.1 < share < 0.6
