"""Every row of the README's "Errors" table, run through the command line: exit status
2, exactly one line on stderr, no traceback, and no file written or changed anywhere
under the test's folder (a snapshot before and after). Plus the error boundary itself
(--debug, unexpected errors), and the table and these cases staying in step."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from tiny import ROOT, tiny_model

from replaceme.cli import cli
from replaceme.outputs import record_tree
from replaceme.plugin import Compensator, Method, temporary_plugin


def snapshot(root: Path) -> dict[str, object]:
    """Every path under ``root``: file bytes and mode, or the mode of a directory."""
    out: dict[str, object] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            body = open(full, "rb").read() if os.path.isfile(full) and not os.path.islink(full) else None
            out[os.path.relpath(full, root)] = (st.st_mode, body)
    return out


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line(result, fragment: str, code: int = 2, progress: bool = False) -> str:
    """One line on stderr (``progress``: log lines of work done before the error may precede it)."""
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if progress:
        lines = [line for line in lines if not line.startswith("INFO ")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines[0]
    assert re.search(fragment, lines[0]), (fragment, lines[0])
    assert "Traceback" not in result.output
    assert result.stdout == ""
    return lines[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizer):
    """A folder with a model, data, earlier outputs and broken inputs of every kind."""
    root = tmp_path_factory.mktemp("world")
    model = root / "model"
    tiny_model("llama").save_pretrained(model)
    tokenizer.save_pretrained(model)
    (root / "calib.txt").write_text("\n\n".join(f"The cat sat on mat {i}." for i in range(40)) + "\n")
    (root / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (root / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (root / "broken.jsonl").write_text('{"text": "a"}\n{"text": "b"\n')
    (root / "broken.json").write_text('[{"text": "a"}, ')
    (root / "scalar.json").write_text("42")
    (root / "corrupt.parquet").write_bytes(b"PAR1" + os.urandom(64))
    (root / "later_row.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n{"body": "c"}\n')
    user = root / "user"
    user.mkdir()
    (user / "thesis.tex").write_text("years of work")
    ours = root / "ours"
    ours.mkdir()
    (ours / "model.safetensors").write_text("old")
    (ours / "pruning.json").write_text(json.dumps({"method": "uidl"}))
    record_tree(ours, "pruned-model")
    ours_plus = root / "ours_plus"
    ours_plus.mkdir()
    (ours_plus / "pruning.json").write_text(json.dumps({"method": "uidl"}))
    record_tree(ours_plus, "pruned-model")
    (ours_plus / "notes.md").write_text("the user's notes")
    cmp_plus = root / "cmp_plus"
    (cmp_plus / "rows").mkdir(parents=True)
    (cmp_plus / "manifest.json").write_text(json.dumps({"shared_hash": "x"}))
    record_tree(cmp_plus, "comparison")
    (cmp_plus / "report.docx").write_text("the user's report")
    cmp_clean = root / "cmp_clean"
    (cmp_clean / "rows").mkdir(parents=True)
    (cmp_clean / "manifest.json").write_text(json.dumps({"shared_hash": "x"}))
    record_tree(cmp_clean, "comparison")
    (root / "table.csv").write_text("precious,csv\n")
    # models that are not what they claim
    post_norm = root / "olmo2"  # the MLP writes into the residual stream through a post-norm
    tiny_model("olmo2").save_pretrained(post_norm)
    tokenizer.save_pretrained(post_norm)
    more = root / "more_layers"
    tiny_model("llama").save_pretrained(more)
    tokenizer.save_pretrained(more)
    config = json.loads((more / "config.json").read_text())
    config["num_hidden_layers"] += 1
    (more / "config.json").write_text(json.dumps(config))
    corrupt = root / "corrupt_weights"
    tiny_model("llama").save_pretrained(corrupt)
    tokenizer.save_pretrained(corrupt)
    weights = corrupt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    unloadable = root / "unloadable"  # passes every check before loading, then fails to load
    tiny_model("llama").save_pretrained(unloadable)
    tokenizer.save_pretrained(unloadable)
    config = json.loads((unloadable / "config.json").read_text())
    config["model_type"] = "no-such-architecture"
    (unloadable / "config.json").write_text(json.dumps(config))
    shape = root / "wrong_shape"
    tiny_model("llama").save_pretrained(shape)
    tokenizer.save_pretrained(shape)
    config = json.loads((shape / "config.json").read_text())
    config["intermediate_size"] *= 2
    (shape / "config.json").write_text(json.dumps(config))
    hidden = root / "wrong_hidden"
    tiny_model("llama").save_pretrained(hidden)
    tokenizer.save_pretrained(hidden)
    config = json.loads((hidden / "config.json").read_text())
    config["hidden_size"] *= 2
    (hidden / "config.json").write_text(json.dumps(config))
    fifo = root / "fifo_weights"  # a FIFO named like the weights: opening it would block forever
    fifo.mkdir()
    tokenizer.save_pretrained(fifo)
    tiny_model("llama").config.save_pretrained(fifo)
    os.mkfifo(fifo / "model.safetensors")
    sharded = root / "wrongly_sharded"  # the index sends a tensor to a shard that does not hold it
    tiny_model("llama").save_pretrained(sharded, max_shard_size="40KB")
    tokenizer.save_pretrained(sharded)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    names = sorted(index["weight_map"])
    first, last = names[0], next(n for n in names if index["weight_map"][n] != index["weight_map"][names[0]])
    index["weight_map"][first], index["weight_map"][last] = index["weight_map"][last], index["weight_map"][first]
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    bad_value = root / "bad_config_value"
    tiny_model("llama").save_pretrained(bad_value)
    tokenizer.save_pretrained(bad_value)
    config = json.loads((bad_value / "config.json").read_text())
    config["hidden_size"] = "big"
    (bad_value / "config.json").write_text(json.dumps(config))
    (root / "not_a_model").mkdir()
    (root / "not_a_model" / "readme.txt").write_text("hello")
    no_tok = root / "no_tokenizer"
    tiny_model("llama").save_pretrained(no_tok)
    # configs and plans
    (root / "cfg_string_bool.yaml").write_text(
        f"model: {model}\nmethod: uidl\nlayers: 1\ncalib: {root / 'calib.txt'}\noutput: {ours}\noverwrite: 'false'\n")
    (root / "cfg_wrong_type.yaml").write_text(f"model: {model}\nmethod: uidl\nlayers: two\noutput: {root / 'o'}\n")
    (root / "cfg_unknown.yaml").write_text(f"model: {model}\nmethd: uidl\n")
    (root / "cfg_options_list.yaml").write_text(f"model: {model}\nmethod: uidl\noptions: [1, 2]\n")
    (root / "cfg_bad_yaml.yaml").write_text("model: [unclosed\n")
    (root / "cfg_binary.yaml").write_bytes(b"\xff\xfe\x00junk")
    (root / "plan_unknown.yaml").write_text(f"model: {model}\nmethds: [uidl]\n")
    (root / "plan_wrong_type.yaml").write_text(f"model: {model}\nppl: 3\n")
    (root / "plan_method_type.yaml").write_text(f"model: {model}\nmethods:\n  - name: uidl\n    options: fast\n")
    bomb = "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 9 if p else ['lol'] * 9)}]\n"
                   for p, c in zip(["", *"abcdefgh"], "abcdefghi"))  # a 9**9 alias bomb in 300 bytes
    (root / "cfg_duplicate.yaml").write_text(f"model: {model}\nmethod: uidl\nlayers: 1\nlayers: 2\n")
    (root / "cfg_bomb.yaml").write_text(f"model: {model}\n{bomb}")
    (root / "cfg_huge_int.yaml").write_text(f"model: {model}\nmethod: uidl\nlayers: {'9' * 5000}\n")
    (root / "plan_bomb.yaml").write_text(f"model: {model}\n{bomb}")
    # a pruned model fine-tuned and saved back in place; a card edited by hand; an older record
    tuned = root / "tuned"
    tuned.mkdir()
    (tuned / "model.safetensors").write_text("pruned weights")
    (tuned / "README.md").write_text("card")
    record_tree(tuned, "pruned-model")
    (tuned / "model.safetensors").write_text("fine-tuned weights")
    carded = root / "carded"
    carded.mkdir()
    (carded / "README.md").write_text("card")
    record_tree(carded, "pruned-model")
    (carded / "README.md").write_text("the user's own card")
    legacy = root / "legacy"
    legacy.mkdir()
    (legacy / "pruning.json").write_text(json.dumps({"replaceme_output": {"tool": "replaceme", "kind": "pruned-model",
                                                                           "files": ["*"]}}))
    # a lock held by a live process (our parent) on ./locked; one of another host on ./elsewhere
    (root / ".locked.replaceme.lock").write_text(
        json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "started": time.time()}))
    (root / ".elsewhere.replaceme.lock").write_text(json.dumps({"pid": 4242, "host": "node-17", "started": time.time()}))
    busy = root / "busy_card"  # a pruned model whose folder another run is writing
    shutil.copytree(model, busy)
    (busy / "README.md").write_text("card")
    record_tree(busy, "pruned-model")
    (root / ".busy_card.replaceme.lock").write_text(
        json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "started": time.time()}))
    return root


def _prune(world, *extra, model="model", calib="calib.txt", output="out"):
    args = ["prune", world / model, "-m", "uidl", "-n", "1", "--calib-samples", "8", "--max-length", "16"]
    if calib:
        args += ["--calib", world / calib]
    return args + ["--output", output if isinstance(output, Path) else world / output, *extra]


#: id -> (arguments given the world folder, regex the one line must match)
CASES = {
    # outputs: never over, above or into an input; only replaceme's own directories are replaced
    "output-is-source-model": (lambda w: _prune(w, "--overwrite", output=w / "model"), "is the input"),
    "output-is-parent-of-source": (lambda w: _prune(w, "--overwrite", output=w), "contains the input"),
    "output-via-dotdot": (lambda w: _prune(w, "--overwrite", output=w / "model" / "x" / ".." / ".." / "model"), "is the input"),
    "output-inside-source": (lambda w: _prune(w, output=w / "model" / "pruned"), "is inside the input"),
    "output-is-calibration-file": (lambda w: _prune(w, "--overwrite", output=w / "calib.txt"), "is the input|is a file"),
    "output-not-written-by-replaceme": (lambda w: _prune(w, "--overwrite", output=w / "user"), "not written by replaceme"),
    "output-holds-foreign-files": (lambda w: _prune(w, "--overwrite", output=w / "ours_plus"), "did not write .*notes.md"),
    "output-is-another-kind": (lambda w: _prune(w, "--overwrite", output=w / "cmp_clean"),
                               "holds a replaceme comparison, not a pruned model"),
    "output-exists": (lambda w: _prune(w, output=w / "ours"), "exists \\(use --overwrite"),
    "output-under-a-file": (lambda w: _prune(w, output=w / "table.csv" / "out"), "is not a directory"),
    "output-locked-by-another-run": (lambda w: _prune(w, output=w / "locked"), "another replaceme run"),
    "output-locked-by-another-host": (lambda w: _prune(w, output=w / "elsewhere"),
                                      "pid 4242 on node-17.*lock file .*elsewhere.replaceme.lock.*--break-lock"),
    "output-changed-since-written": (lambda w: _prune(w, "--overwrite", output=w / "tuned"),
                                     "changed since replaceme wrote them \\(model.safetensors\\)"),
    "output-of-an-older-version": (lambda w: _prune(w, "--overwrite", output=w / "legacy"), "older replaceme"),
    "spill-dir-inside-source": (lambda w: _prune(w, "--spill-dir", w / "model" / "spill"),
                                "--spill-dir .* is inside the input"),
    "model-card-edited": (lambda w: ["evaluate", w / "carded", "--ppl", w / "calib.txt", "--model-card"],
                          "--model-card: .*README.md was not written by replaceme, or was changed"),
    "model-card-locked": (lambda w: ["evaluate", w / "busy_card", "--ppl", w / "calib.txt", "--model-card"],
                          "another replaceme run .* is writing .*busy_card \\(lock file"),
    "distances-csv-not-replacemes": (
        lambda w: ["distances", w / "model", "-n", "1", "--calib", w / "calib.txt", "--csv", w / "table.csv",
                   "--overwrite"], "--csv .*table.csv was not written by replaceme"),
    "compare-overwrite-foreign-files": (
        lambda w: ["compare", w / "model", "-m", "uidl", "--calib", w / "calib.txt", "--ppl", w / "calib.txt",
                   "--output", w / "cmp_plus", "--overwrite"], "did not write .*report.docx"),
    "distances-csv-exists": (
        lambda w: ["distances", w / "model", "-n", "1", "--calib", w / "calib.txt", "--csv", w / "table.csv"],
        "--csv .*exists \\(use --overwrite"),
    "distances-plot-unwritable": (
        lambda w: ["distances", w / "model", "-n", "1", "--calib", w / "calib.txt", "--plot", w / "table.csv" / "d.png"],
        "is not a directory"),
    # option values
    "option-nan": (lambda w: _prune(w, "-m", "replaceme-lstsq", "-o", "alpha", "nan"), "alpha.*finite"),
    "option-inf": (lambda w: _prune(w, "-m", "replaceme-lstsq", "-o", "alpha", "inf"), "alpha.*finite"),
    "option-int-overflow": (lambda w: _prune(w, "-o", "num_blocks", "9" * 30), "num_blocks.*too large"),
    "option-wrong-type": (lambda w: _prune(w, "-o", "num_blocks", "two"), "num_blocks.*expected int"),
    "seed-overflow": (lambda w: _prune(w, "--seed", "9" * 25), "--seed"),
    "layers-overflow": (lambda w: _prune(w, "-n", "9" * 25), "--layers"),
    "limit-nan": (lambda w: ["evaluate", w / "model", "--ppl", w / "calib.txt", "--limit", "nan"], "--limit"),
    "layers-zero-before-loading": (lambda w: _prune(w, "-n", "0", model="unloadable"),
                                   "--layers must be between 1 and 5 for a model with 6 layers, got 0"),
    "layers-too-many-before-loading": (lambda w: _prune(w, "-n", "6", model="unloadable"),
                                       "--layers must be between 1 and 5 for a model with 6 layers, got 6"),
    "memory-budget-not-a-size": (lambda w: _prune(w, "--memory-budget", "2X", model="unloadable"),
                                 "--memory-budget: '2X' is not a size"),
    "memory-budget-too-small": (lambda w: _prune(w, "-m", "replaceme-lstsq", "--memory-budget", "1K"),
                                r"the statistics need .* in memory even with the sample on disk .* --memory-budget is 1\.0 KB"),
    "disk-budget-too-small-for-sample": (lambda w: _prune(w, "-m", "replaceme-cosine", "--memory-budget", "1K",
                                                          "--disk-budget", "1K"),
                                         r"the activation sample needs at least .* on disk .* --disk-budget is 1\.0 KB"),
    "gram-device-unknown": (lambda w: _prune(w, "--gram-device", "tpu", model="unloadable"),
                            "invalid --gram-device 'tpu'; choose from"),
    "unknown-device": (lambda w: _prune(w, "--device", "tpu:0", model="unloadable"), "invalid --device .tpu:0.; choose from"),
    # combinations refused before any weights load (replaceme.preflight; "unloadable" shows it)
    "offload-cosine-refit": (lambda w: _prune(w, "-m", "replaceme-cosine", "-o", "refit", "true", "--offload",
                                              model="unloadable"), "cosine refit re-runs the partly pruned model"),
    "offload-healing": (lambda w: _prune(w, "--heal", "lora", "--offload", model="unloadable"),
                        "uidl\\+lora: healing needs the whole model in memory, not --offload"),
    "offload-hub-id": (lambda w: ["prune", "org/model", *_prune(w, "--offload")[2:]],
                       "--offload needs a local model directory \\(got 'org/model'\\); download it first"),
    "calib-4bit-offload": (lambda w: _prune(w, "--calib-4bit", "--offload", model="unloadable"),
                           "--calib-4bit needs a model path and cannot be combined with --offload"),
    "stats-passes-2-scoring-selector": (lambda w: _prune(w, "-m", "sleb", "--stats-passes", "2", model="unloadable"),
                                        "--stats-passes 2 needs selectors that choose from distance tables alone"),
    "dense-map-behind-post-norm": (lambda w: _prune(w, "-m", "replaceme-lstsq", model="olmo2"),
                                   "compensator 'lstsq': on 'olmo2' the MLP writes into the residual stream through "
                                   "the post-norm 'post_feedforward_layernorm'.*use -o diag true"),
    "compare-method-refused": (
        lambda w: ["compare", w / "olmo2", "-m", "uidl", "-m", "replaceme-lstsq", "--calib", w / "calib.txt",
                   "--ppl", w / "calib.txt"], "replaceme-lstsq at --layers 1: compensator 'lstsq': on 'olmo2'"),
    "blocks-do-not-fit": (lambda w: _prune(w, "-m", "replaceme-lstsq", "-n", "4", "-o", "num_blocks", "4"),
                          "only 5 layers after layer 0 of a 6-layer model: 4 non-overlapping blocks of 1 layers"),
    "heal-target-modules-unknown": (lambda w: _prune(w, "--heal", "lora", "-o", "heal.target_modules", "no_such_proj"),
                                    "healer 'lora': no linear layer of the decoder matches target_modules 'no_such_proj'"),
    "scoring-without-holdout": (lambda w: ["distances", w / "unloadable", "-n", "1", "--loss", "--calib", w / "calib.txt",
                                           "--calib-samples", "8"],
                                "scoring plans needs held-out calibration batches, and 1 batch\\(es\\) at "
                                "--holdout-fraction 0.1 hold none out"),
    "cuda-not-available": (lambda w: _prune(w, "--device", "cuda"),
                           "--device cuda was asked for, but no CUDA device is available"),
    # --config and --plan
    "config-string-is-not-bool": (lambda w: ["prune", "--config", w / "cfg_string_bool.yaml"], "'overwrite' must be true or false, got the string"),
    "config-wrong-type": (lambda w: ["prune", "--config", w / "cfg_wrong_type.yaml"], "'layers' must be an integer"),
    "config-unknown-key": (lambda w: ["prune", "--config", w / "cfg_unknown.yaml"], "unknown key 'methd'.*did you mean 'method'"),
    "config-options-not-mapping": (lambda w: ["prune", "--config", w / "cfg_options_list.yaml"], "'options' must be a mapping"),
    "config-invalid-yaml": (lambda w: ["prune", "--config", w / "cfg_bad_yaml.yaml"], "not valid YAML"),
    "config-not-text": (lambda w: ["prune", "--config", w / "cfg_binary.yaml"], "not a text file"),
    "config-duplicate-key": (lambda w: ["prune", "--config", w / "cfg_duplicate.yaml"], "duplicate key 'layers'"),
    "config-alias-bomb": (lambda w: ["prune", "--config", w / "cfg_bomb.yaml"], "aliases expand to more than"),
    "config-huge-integer": (lambda w: ["prune", "--config", w / "cfg_huge_int.yaml"], "integer of 5000 digits"),
    "plan-alias-bomb": (lambda w: ["compare", "--plan", w / "plan_bomb.yaml"], "aliases expand to more than"),
    "plan-unknown-key": (lambda w: ["compare", "--plan", w / "plan_unknown.yaml"], "unknown key 'methds'.*did you mean 'methods'"),
    "plan-wrong-type": (lambda w: ["compare", "--plan", w / "plan_wrong_type.yaml"], "'ppl' must be a string or a list of strings"),
    "plan-method-wrong-type": (lambda w: ["compare", "--plan", w / "plan_method_type.yaml"], "methods\\[1\\].*'options' must be a mapping"),
    # inputs, checked before the model is loaded (this model cannot be loaded: a later error would say so)
    "calib-binary": (lambda w: _prune(w, model="unloadable", calib="binary.txt"), "binary data"),
    "calib-not-utf8": (lambda w: _prune(w, model="unloadable", calib="latin1.txt"), "not UTF-8"),
    "calib-broken-jsonl": (lambda w: _prune(w, model="unloadable", calib="broken.jsonl"), "line 2 is not valid JSON"),
    "calib-broken-json": (lambda w: _prune(w, model="unloadable", calib="broken.json"), "not valid JSON"),
    "calib-json-not-records": (lambda w: _prune(w, model="unloadable", calib="scalar.json"), "expected a list of records"),
    "calib-corrupt-parquet": (lambda w: _prune(w, model="unloadable", calib="corrupt.parquet"), "parquet"),
    "calib-later-row-without-column": (lambda w: _prune(w, model="unloadable", calib="later_row.jsonl"), "record 3 has no column 'text'"),
    "ppl-missing-before-loading": (lambda w: ["evaluate", w / "unloadable", "--ppl", w / "nope.txt"], "text file not found"),
    "compare-ppl-broken-before-loading": (
        lambda w: ["compare", w / "unloadable", "-m", "uidl", "--calib", w / "calib.txt", "--ppl", w / "broken.jsonl",
                   "--output", w / "cmp_new"], "--ppl: .*line 2 is not valid JSON"),
    # models
    "model-more-layers-than-weights": (lambda w: _prune(w, model="more_layers"),
                                       "config.json says 7 layers but the checkpoint holds 6 .*missing from the checkpoint"),
    "model-corrupt-safetensors": (lambda w: _prune(w, model="corrupt_weights"), "model.safetensors: corrupt safetensors file"),
    "model-corrupt-safetensors-offload": (lambda w: _prune(w, "--offload", model="corrupt_weights"),
                                          "model.safetensors: corrupt safetensors file"),
    "model-more-layers-offload": (lambda w: _prune(w, "--offload", model="more_layers"),
                                  "config.json says 7 layers but the checkpoint holds 6"),
    "model-hidden-size-mismatch": (lambda w: _prune(w, model="wrong_hidden"),
                                   "config.json says hidden size 64 but the checkpoint's embedding has width 32"),
    "model-config-bad-value": (lambda w: _prune(w, model="bad_config_value"),
                               "cannot load model .*: config.json: .*field 'hidden_size'.*expected int"),
    "model-fifo-weights": (lambda w: _prune(w, model="fifo_weights"), "model.safetensors is a FIFO, not a file"),
    "model-index-wrongly-sharded": (lambda w: _prune(w, model="wrongly_sharded"), "index.json is wrongly sharded: tensor"),
    "model-index-wrongly-sharded-offload": (lambda w: _prune(w, "--offload", model="wrongly_sharded"),
                                            "index.json is wrongly sharded: tensor"),
    "model-shape-mismatch-offload": (lambda w: _prune(w, "--offload", model="wrong_shape"),
                                     "checkpoint does not match the model's config: size mismatch"),
    "failed-run-leaves-no-folders": (lambda w: _prune(w, model="unloadable", output=w / "new" / "deeper" / "out"),
                                     "cannot load model"),
    "model-shape-mismatch": (lambda w: _prune(w, model="wrong_shape"), "cannot load model .*weights of a different shape"),
    "model-not-a-model-folder": (lambda w: _prune(w, model="not_a_model"), "not a model directory"),
    "model-without-tokenizer": (lambda w: _prune(w, model="no_tokenizer"), "no tokenizer files"),
}
SLOW = {"unknown-task"}
#: errors raised once the statistics pass has begun, after its plan is printed (INFO)
DURING_WORK = {"model-shape-mismatch-offload"}
CASES["unknown-task"] = (lambda w: ["evaluate", w / "unloadable", "--tasks", "boolqq"], "unknown lm-eval task 'boolqq'")


#: cases that only this machine's lack of a device can show
WITHOUT_CUDA = {"cuda-not-available"}


def _param(case: str):
    import torch

    marks = [pytest.mark.slow] if case in SLOW else []
    if case in WITHOUT_CUDA:
        marks.append(pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device"))
    return pytest.param(case, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_error_case(case, world):
    build, fragment = CASES[case]
    before = snapshot(world)
    result = run(*build(world))
    # the task index logs that it is being built; the statistics plan is printed before the pass
    assert_one_line(result, fragment, progress=case in SLOW | DURING_WORK)
    assert snapshot(world) == before, "an error case wrote or changed files"


def test_the_readme_table_lists_exactly_these_cases():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Errors", 1)[1].split("\n## ", 1)[0]
    ids = re.findall(r"^\| `([a-z0-9-]+)` \|", section, flags=re.M)
    assert sorted(ids) == sorted(CASES), set(ids) ^ set(CASES)


class Broken(Compensator):
    """A compensator with a bug: an unexpected exception."""

    name = "broken"
    description = "test"

    def compensate(self, plan, ctx):
        raise ZeroDivisionError("a bug")


@pytest.fixture
def buggy():
    with temporary_plugin("buggy-test", compensators=[Broken],
                          methods=[Method("buggy", "angular-distance", "broken", "remove")]):
        yield


def test_unexpected_errors_exit_1_with_a_hint_and_debug_shows_the_traceback(world, buggy, tmp_path):
    args = ["prune", world / "model", "-m", "buggy", "-n", "1", "--calib", world / "calib.txt", "--calib-samples", "4",
            "--max-length", "16", "--output", tmp_path / "out"]
    line = assert_one_line(run(*args), "unexpected ZeroDivisionError: a bug", code=1, progress=True)
    assert "--debug" in line and "report" in line
    debug = run("--debug", *args)
    assert debug.exit_code == 1 and "Traceback" in debug.stderr and "ZeroDivisionError" in debug.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())


def test_usage_errors_are_one_line_too():
    assert_one_line(run("prune", "--no-such-flag"), "No such option")
    assert_one_line(run("no-such-command"), "No such command")
    assert run("--help").exit_code == 0
