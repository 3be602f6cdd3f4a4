"""Chat-template calibration: conversation records go through the tokenizer's
template (or a plain ``role: content`` rendering without one), end to end."""

from __future__ import annotations

import json

import pytest
from tiny import make_tokenizer, tiny_model

import replaceme
from replaceme.calibration import CalibrationSpec, build_calibration
from replaceme.errors import ReplacemeError

CONVERSATIONS = [
    [{"from": "human", "value": "Hi there"}, {"from": "gpt", "value": "Hello, Lily"}],
    [{"role": "user", "content": "A cat?"}, {"role": "assistant", "content": "A red cat sat."}],
]
TEMPLATE = "{% for m in messages %}{{ m.role }}, {{ m.content }}\n{% endfor %}"
#: the test tokenizer has no ':' (an unknown character, dropped when decoding)


@pytest.fixture
def chat_file(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps({"conversations": c}) + "\n" for c in CONVERSATIONS))
    return path


def decoded(calib, tokenizer) -> list[str]:
    return sorted(tokenizer.decode(ids[mask], skip_special_tokens=True)
                  for batch, masks in zip(calib.input_ids, calib.masks) for ids, mask in zip(batch, masks))


def test_conversations_go_through_the_tokenizers_template(chat_file):
    tokenizer = make_tokenizer()
    tokenizer.chat_template = TEMPLATE
    spec = CalibrationSpec(str(chat_file), column="conversations", samples=2, max_length=64, batch_size=2, chat_template="on")
    assert decoded(build_calibration(spec, tokenizer), tokenizer) == sorted(
        ["user, Hi there\nassistant, Hello, Lily\n", "user, A cat?\nassistant, A red cat sat.\n"])


def test_without_a_template_roles_are_written_out_and_off_keeps_the_raw_record(chat_file):
    tokenizer = make_tokenizer()
    spec = CalibrationSpec(str(chat_file), column="conversations", samples=2, max_length=64, batch_size=2)
    assert decoded(build_calibration(spec, tokenizer), tokenizer) == sorted(
        ["user Hi there\nassistant Hello, Lily", "user A cat?\nassistant A red cat sat."])
    with pytest.raises(ReplacemeError, match="not conversations"):
        text = chat_file.with_suffix(".txt")
        text.write_text("plain text\n\nmore text\n")
        build_calibration(CalibrationSpec(str(text), samples=2, chat_template="on"), tokenizer)


def test_prune_calibrates_on_conversations(chat_file):
    tokenizer = make_tokenizer()
    tokenizer.chat_template = TEMPLATE
    spec = CalibrationSpec(str(chat_file), column="conversations", samples=2, max_length=64, batch_size=2, chat_template="on")
    result = replaceme.prune(tiny_model("llama"), method="replaceme-lstsq", layers=1, calibration=spec,
                             tokenizer=tokenizer, use_cache=False)
    tokens = sum(int(m.sum()) for m in build_calibration(spec, tokenizer).masks)
    assert result.outcome.compensations[0].diagnostics["tokens"] + result.outcome.compensations[0].diagnostics.get(
        "heldout_tokens", 0) == tokens
