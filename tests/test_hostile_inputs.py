"""Hostile or careless inputs are refused early, in one line, or distrusted (GUIDE §6):
statistics caches holding another model's statistics, model folders with special
files or headers that contradict their config, giant calibration records, bad counts."""

from __future__ import annotations

import logging
import os
import shutil

import pytest
import torch
from tiny import calibration_text, make_tokenizer, tiny_model

from replaceme.api import prune
from replaceme.calibration import CalibrationSpec
from replaceme.paths import cache_dir


def _blocks(result) -> list[tuple[int, int]]:
    return [(b.start, b.end) for b in result.outcome.plan.blocks]


def test_a_cache_entry_of_another_model_under_this_models_key_is_refused(tmp_path, caplog):
    tok = make_tokenizer()
    spec = CalibrationSpec(str(calibration_text(tmp_path / "calib.txt")), samples=8, max_length=16, batch_size=4)

    def run(model):
        return prune(model, "replaceme-lstsq", 2, spec, tokenizer=tok, device="cpu", dtype="float32")

    folder = cache_dir("stats")
    block_b = _blocks(run(tiny_model("llama", seed=0, layers=6)))
    (entry_b,) = folder.iterdir()
    kept_b = entry_b.rename(tmp_path / "b.pt")
    block_a = _blocks(run(tiny_model("llama", seed=1, layers=9)))
    assert block_a != block_b  # otherwise the planted entry could not steer B's choice
    (entry_a,) = folder.iterdir()
    planted = torch.load(entry_a, weights_only=True)  # a valid entry of model A, filed under B's key
    planted["key"] = entry_b.stem
    torch.save(planted, entry_b)
    entry_a.unlink()
    with caplog.at_level(logging.WARNING, logger="replaceme"):
        again = run(tiny_model("llama", seed=0, layers=6))
    assert _blocks(again) == block_b
    assert "does not fit this model" in caplog.text and "9 layers" in caplog.text
    assert torch.load(entry_b, weights_only=True)["stats"]["num_layers"] == 6  # recomputed and stored anew
    assert kept_b.exists()


def test_statistics_that_do_not_fit_the_model_or_request_are_named():
    from replaceme.stats.fit import misfit
    from replaceme.stats.request import StatsRequest
    from replaceme.stats.store import ActivationSample, ActivationStats, BatchActivations, GramKey, GramSums

    def stats(L=4, h=3, gram=3, state=3):
        batch = BatchActivations(mask=torch.ones(2, 5, dtype=torch.bool), boundaries={1: torch.zeros(2, 5, state)})
        return ActivationStats(L, h, angular={2: torch.zeros(L - 1)}, token_cosine={2: torch.zeros(L - 1)},
                               gram={GramKey(1, 3): GramSums(torch.zeros(gram, gram), torch.zeros(gram, gram), 0.0, 10)},
                               sample=ActivationSample(train=[batch]))

    request = StatsRequest(block_sizes={2}, gram_blocks={(1, 3)}, sample_boundaries={1})
    assert misfit(stats(), 4, 3, request) is None
    assert "width 5" in misfit(stats(), 4, 5)
    assert "Gram xtx" in misfit(stats(gram=2), 4, 3)
    assert "boundary 1 of shape (2, 5, 4)" in misfit(stats(state=4), 4, 3)
    assert "no distances for block size 3" in misfit(stats(), 4, 3, StatsRequest(block_sizes={3}))
    assert "no Gram sums for block 2..4" in misfit(stats(), 4, 3, StatsRequest(gram_blocks={(2, 4)}))
    assert "lacks the states [2]" in misfit(stats(), 4, 3, StatsRequest(sample_boundaries={2}))


@pytest.fixture
def model_dir(tmp_path, tokenizer):
    path = tmp_path / "m"
    tiny_model("llama", layers=5).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _alarm(seconds: int):
    """Fail (instead of hanging forever) if the block does not end within ``seconds``."""
    import contextlib
    import signal

    @contextlib.contextmanager
    def guard():
        def fail(*_):
            raise TimeoutError(f"blocked for more than {seconds} s")

        previous = signal.signal(signal.SIGALRM, fail)
        signal.alarm(seconds)
        try:
            yield
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)

    return guard()


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "model.safetensors.index.json", "tokenizer.json",
                                  "model-00002-of-00002.safetensors"])
@pytest.mark.parametrize("kind", ["fifo", "device", "socket"])
def test_special_files_in_a_model_folder_are_refused_without_opening_them(model_dir, name, kind):
    import socket

    from replaceme.errors import ReplacemeError
    from replaceme.loading import check_model_source

    target = model_dir / name
    target.unlink(missing_ok=True)
    server = None
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "device":
        target.symlink_to("/dev/zero")  # endless bytes: reading it whole never ends
    else:
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(target))
    try:
        with _alarm(20), pytest.raises(ReplacemeError, match=f"{name} is a (FIFO|character device|socket), not a file"):
            check_model_source(str(model_dir))
    finally:
        if server is not None:
            server.close()


def test_a_config_claiming_a_million_layers_is_refused_from_the_headers_at_once(model_dir):
    import json
    import time

    from replaceme.errors import ReplacemeError
    from replaceme.loading import load_model

    config = json.loads((model_dir / "config.json").read_text())
    config["num_hidden_layers"] = 1_000_000
    (model_dir / "config.json").write_text(json.dumps(config))
    began = time.perf_counter()
    with pytest.raises(ReplacemeError, match="says 1000000 layers but the checkpoint holds 5 .*layer 5 are missing"):
        load_model(str(model_dir), device="cpu")
    assert time.perf_counter() - began < 5


def test_an_index_naming_a_missing_shard_or_a_foreign_tensor_is_refused_before_work(tmp_path, tokenizer):
    import json

    from replaceme.errors import ReplacemeError
    from replaceme.loading import check_model_source
    from replaceme.model_files import checkpoint_layout

    folder = tmp_path / "sharded"
    tiny_model("llama").save_pretrained(folder, max_shard_size="40KB")
    tokenizer.save_pretrained(folder)
    index_file = folder / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    layout = checkpoint_layout(folder)  # the sound folder: every tensor of the index, from its shard's header
    assert set(layout) == set(index["weight_map"]) and len(set(index["weight_map"].values())) > 1
    name = sorted(index["weight_map"])[0]
    index["weight_map"][name] = "model-99999-of-99999.safetensors"
    index_file.write_text(json.dumps(index))
    with pytest.raises(ReplacemeError, match="names a shard that is missing: model-99999"):
        check_model_source(str(folder))
    index["weight_map"][name] = "../elsewhere.safetensors"
    index_file.write_text(json.dumps(index))
    with pytest.raises(ReplacemeError, match="lies outside the model folder"):
        check_model_source(str(folder))


def test_a_tilde_model_path_is_expanded_by_the_loader(model_dir, monkeypatch):
    from replaceme.loading import load_model

    monkeypatch.setenv("HOME", str(model_dir.parent))
    model, _ = load_model("~/m", device="cpu")
    assert model.config.num_hidden_layers == 5


class _Recording:
    """A tokenizer that remembers the longest text it was given (everything else is the real tokenizer's)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.longest, self.calls = tokenizer, 0, 0

    def __call__(self, text, **kwargs):
        self.longest, self.calls = max(self.longest, len(text)), self.calls + 1
        return self.tokenizer(text, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_a_giant_record_is_cut_before_it_is_tokenized_and_keeps_the_same_tokens(tmp_path, tokenizer):
    from replaceme.calibration import build_calibration

    words = "the cat sat on a mat and ran far away "
    giant = (words * (120_000 // len(words) + 1))[:120_000]
    (tmp_path / "big.jsonl").write_text('{"text": "%s"}\n{"text": "a short record"}\n' % giant)
    recording = _Recording(tokenizer)
    calib = build_calibration(CalibrationSpec(str(tmp_path / "big.jsonl"), samples=2, max_length=64, order="file"),
                              recording)
    assert recording.longest <= 64 * 100  # not 120,000 characters
    truth = tokenizer(giant, truncation=True, max_length=64)["input_ids"]  # the whole record, tokenized and cut
    assert calib.input_ids[0][0].tolist() == truth and len(truth) == 64
    assert calib.input_ids[0][1][calib.masks[0][1]].tolist() == tokenizer("a short record")["input_ids"]


def test_records_of_long_tokens_grow_the_cut_until_it_holds_the_budget(tokenizer):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from replaceme.calibration import encode_truncated

    # one token per 40-character word: the first cut (8 characters a token) holds too few
    vocab = {"<unk>": 0, "x" * 40: 1, "y" * 40: 2}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    long_words = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    text = " ".join(("x" * 40, "y" * 40)[i % 3 == 0] for i in range(5000))
    recording = _Recording(long_words)
    got = encode_truncated(recording, text, 50)
    assert got == long_words(text, truncation=True, max_length=50)["input_ids"] and len(got) == 50
    assert recording.longest < len(text) // 10


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-8-sig"])
@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".csv"])
def test_text_in_utf16_and_other_unicode_encodings_is_decoded_not_called_binary(tmp_path, encoding, suffix):
    from replaceme.data.texts import load_texts

    records = ["Un café très noir.", "Ünïcödé — “quoted” text ☕", "plain ascii"]
    body = {".txt": "\n\n".join(records) + "\n",
            ".jsonl": "".join('{"text": "%s"}\n' % r for r in records),
            ".csv": "text\n" + "".join(f"{r}\n" for r in records)}[suffix]
    path = tmp_path / f"data{suffix}"
    path.write_bytes(body.encode(encoding))  # "utf-16"/"utf-32" write a byte-order mark, "-le"/"-be" none
    assert load_texts(str(path)) == records


def test_binary_and_undecodable_files_are_still_refused(tmp_path):
    from replaceme.data.texts import load_texts
    from replaceme.errors import ReplacemeError

    (tmp_path / "zeros.txt").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ReplacemeError, match="binary data, not text"):
        load_texts(str(tmp_path / "zeros.txt"))
    (tmp_path / "half.txt").write_bytes("\ufeffsome text".encode("utf-16-le") + b"\x00\xd8")  # a lone surrogate
    with pytest.raises(ReplacemeError, match="not UTF-16 text"):
        load_texts(str(tmp_path / "half.txt"))


@pytest.mark.parametrize("samples, held", [(16, 0), (40, 1)])
def test_a_calibration_set_too_small_to_hold_out_warns_and_pruning_json_says_so(tmp_path, caplog, samples, held):
    import json

    from replaceme.api import save_pruned

    spec = CalibrationSpec(str(calibration_text(tmp_path / "calib.txt")), samples=samples, max_length=16, batch_size=4)
    with caplog.at_level(logging.WARNING, logger="replaceme"):
        result = prune(tiny_model("llama"), "replaceme-lstsq", 1, spec, tokenizer=make_tokenizer(), device="cpu",
                       dtype="float32", use_cache=False)
    save_pruned(result, tmp_path / "out")
    recorded = json.loads((tmp_path / "out" / "pruning.json").read_text())["holdout"]
    assert recorded["batches"] == held and (recorded["tokens"] > 0) == (held > 0)
    assert ("too few to hold any out at --holdout-fraction 0.1" in caplog.text) == (held == 0)


def test_values_echoed_in_errors_are_cut(tmp_path):
    import errno

    from replaceme.errors import MAX_MESSAGE, ReplacemeError, explain, shorten
    from replaceme.loading import check_device_name, check_model_source

    with pytest.raises(ReplacemeError) as caught:
        check_model_source("./" + ("x" * 200 + "/") * 15)
    assert "model path not found: ./xxx" in str(caught.value) and len(str(caught.value)) < 300
    too_long = OSError(errno.ENAMETOOLONG, "File name too long", "x" * 100_000)
    message, code = explain(too_long)
    assert code == 2 and message.endswith(": File name too long") and len(message) < 300
    with pytest.raises(ReplacemeError) as caught:
        check_device_name("cuda" * 50_000, "--gram-device")
    assert str(caught.value).startswith("invalid --gram-device 'cudacuda") and len(str(caught.value)) < 300
    assert len(str(ReplacemeError("y" * 10**6))) <= MAX_MESSAGE + 10
    assert shorten(10**5000) == "<an integer of about 5001 digits>"  # str() of it would raise
    bomb: list = ["lol"]
    for _ in range(30):
        bomb = [bomb] * 9  # what a YAML alias bomb expands to: 9**30 strings by reference
    assert len(shorten(bomb)) <= 210


def test_a_model_folder_replaced_during_evaluation_is_told_apart_from_the_one_evaluated(model_dir):
    """The fingerprint evaluate --model-card takes before loading and again before writing the card."""
    import json

    from replaceme.model_files import folder_fingerprint

    (model_dir / "pruning.json").write_text(json.dumps({"method": "uidl", "created": "2026-01-01T00:00:00Z"}))
    evaluated = folder_fingerprint(model_dir)
    assert folder_fingerprint(str(model_dir)) == evaluated  # reading changes nothing
    (model_dir / "README.md").write_text("a card written meanwhile is not the model")
    assert folder_fingerprint(model_dir) == evaluated
    (model_dir / "pruning.json").write_text(json.dumps({"method": "uidl", "created": "2026-01-01T00:00:01Z"}))
    assert folder_fingerprint(model_dir) != evaluated  # another prune into the same folder
    now = folder_fingerprint(model_dir)
    weights = model_dir / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert folder_fingerprint(model_dir) != now  # the weights rewritten in place


@pytest.mark.parametrize("layers", [0, -3, 5])
def test_a_bad_layer_count_is_refused_before_the_model_loads(model_dir, layers):
    import json

    from replaceme.errors import ReplacemeError

    config = json.loads((model_dir / "config.json").read_text())
    config["model_type"] = "no-such-architecture"  # loading it would fail: the count must be refused first
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ReplacemeError, match=f"--layers must be between 1 and 4 for a model with 5 layers, got {layers}"):
        prune(str(model_dir), "uidl", layers, str(model_dir / "config.json"))
    with pytest.raises(ReplacemeError, match="--layers must be at least 1, got 0"):
        prune(tiny_model("llama"), "uidl", 0, "unused.txt", tokenizer=make_tokenizer())
