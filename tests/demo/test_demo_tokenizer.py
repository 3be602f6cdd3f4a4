"""The demo tokenizer: word level, BOS in front, a pad token, saves and reloads."""

from __future__ import annotations

import pytest

from replaceme.demo import corpus

pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

from replaceme.demo.tokenizer import BOS, EOS, PAD, UNK, build_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def test_special_tokens(tokenizer):
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token) == (BOS, EOS, PAD, UNK)
    ids = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id}
    assert len(ids) == 4 and None not in ids
    assert len(tokenizer) == len(corpus.vocabulary()) + 4


def test_round_trip_and_bos(tokenizer):
    docs = corpus.generate("validation", 20)
    for doc in docs:
        ids = tokenizer(doc)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id
        assert len(ids) == len(doc.split()) + 1
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == doc


def test_unknown_words_and_case(tokenizer):
    ids = tokenizer("Alice sees the zebra .")["input_ids"]
    assert ids[1] == tokenizer.convert_tokens_to_ids("alice")
    assert ids[4] == tokenizer.unk_token_id


def test_padding(tokenizer):
    batch = tokenizer(["alice runs .", "bob"], padding=True, return_tensors="pt")
    assert batch["input_ids"].shape == (2, 4)
    assert batch["input_ids"][1, -1].item() == tokenizer.pad_token_id
    assert batch["attention_mask"][1].tolist() == [1, 1, 0, 0]


def test_save_and_reload(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    again = transformers.AutoTokenizer.from_pretrained(tmp_path)
    doc = corpus.generate("calibration", 1)[0]
    assert again(doc)["input_ids"] == tokenizer(doc)["input_ids"]
    assert again(doc)["input_ids"][0] == again.bos_token_id
    assert again.pad_token == PAD
    assert again(["a b", "a"], padding=True)["input_ids"][1][-1] == again.pad_token_id
