"""Every unsupported combination is refused before any weights load (replaceme.preflight).

The table of combinations is generated from the registry: every registered method (a
plugin's too) with its defaults and with each of its stages' options moved off its default
(a flag flipped, each other choice of a ``Literal``), in memory and with ``--offload``, on a
model whose MLP writes into the residual stream directly (Llama) and on one behind a
post-norm (OLMo 2). Each runs through the command line with a spy on every weight read
(``transformers``' loader, tensor bytes of the safetensors files):

- fast tier: the spy aborts at the first weight read; a combination either exits 2 with one
  line and nothing read, or gets as far as reading weights (it passed the preflight); the
  combinations known to be unsupported (written out below, not derived from the code) are
  among the refused ones, those known to work among the others;
- full tier (``slow``, ``exhaustive``: every 8th combination with ``--full``, all with
  ``--exhaustive``): a combination runs to the end; one that fails with a refusal
  (exit 2) must have read no weights, and every other one succeeds: nothing the options,
  the config and the registry could decide is left until after loading.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Literal, get_args, get_origin

import pytest
from click.testing import CliRunner
from tiny import calibration_text, tiny_model
from weight_spy import WeightSpy, WeightsRead

from replaceme.cli import cli
from replaceme.registry import registry, stage_classes


def _alternatives(tp, default) -> list:
    """The values of an option other than its default that change what runs: a flag flipped,
    every other choice of a ``Literal`` (also inside ``Optional``)."""
    if tp is bool:
        return [not default]
    if get_origin(tp) is typing.Union or type(tp).__name__ == "UnionType":
        choices = [a for a in get_args(tp) if a is not type(None)]
        return _alternatives(choices[0], default) if len(choices) == 1 else []
    if get_origin(tp) is Literal:
        return [v for v in get_args(tp) if v != default]
    return []


def option_variants() -> list[tuple[str, dict]]:
    """``(method, options)``: every registered method with its defaults, and with each option
    of its stages moved off its default (one at a time)."""
    reg = registry()
    out: list[tuple[str, dict]] = []
    for name in sorted(reg.methods):
        out.append((name, {}))
        for stage, cls in stage_classes(reg, reg.method(name)).items():
            hints = typing.get_type_hints(cls.Options)
            for f in dataclasses.fields(cls.Options):
                for value in _alternatives(hints[f.name], f.default):
                    if (name, {f.name: value}) not in out:
                        out.append((name, {f.name: value}))
    return out


ARCHS = ("llama", "olmo2")
COMBOS = [(arch, offload, name, opts) for arch in ARCHS for offload in (False, True) for name, opts in option_variants()]


def combo_id(combo) -> str:
    arch, offload, name, opts = combo
    return "-".join([arch, "offload" if offload else "memory", name, *(f"{k}={v}" for k, v in opts.items())])


#: unsupported, from what each method does (not from the code that refuses it):
#: a dense map folded before a post-norm is undone by the norm; cosine refit re-runs the
#: partly pruned model, which --offload never holds
KNOWN_REFUSED = {
    ("olmo2", off, "replaceme-lstsq", ()) for off in (False, True)} | {
    ("olmo2", off, "replaceme-cosine", ()) for off in (False, True)} | {
    ("llama", True, "replaceme-cosine", (("refit", True),))}
#: supported: must get past the preflight
KNOWN_SUPPORTED = {
    ("llama", True, "replaceme-cosine", ()), ("llama", True, "sleb", ()), ("llama", True, "replaceme-lstsq", ()),
    ("olmo2", False, "replaceme-lstsq", (("diag", True),)), ("olmo2", True, "uidl", ()),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("preflight")
    for arch in ARCHS:
        tiny_model(arch).save_pretrained(root / arch)
        tokenizer.save_pretrained(root / arch)
    calibration_text(root / "calib.txt", records=16)
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    other = root / "other_tokenizer"  # a model pruned elsewhere, with another vocabulary
    tiny_model("llama", layers=3).save_pretrained(other)
    words = Tokenizer(models.WordLevel({"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "a": 4}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=words, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(other)
    from transformers import MambaConfig, MambaForCausalLM

    mamba = root / "mamba"  # a causal LM whose layers no adapter knows
    MambaForCausalLM(MambaConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, state_size=4,
                                 num_hidden_layers=2)).save_pretrained(mamba)
    tokenizer.save_pretrained(mamba)
    return root


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def prune_args(world, arch, name, opts, *extra):
    options = [x for k, v in opts.items() for x in ("-o", k, str(v).lower() if isinstance(v, bool) else v)]
    return ["prune", world / arch, "-m", name, "-n", "1", *options, "--calib", world / "calib.txt", "--calib-samples",
            "4", "--max-length", "16", "--batch-size", "2", "--output", world / "out", "--overwrite", *extra]


def assert_refused(result, spy) -> str:
    """Exit 2, exactly one line on stderr, and no weight read."""
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith(("INFO ", "WARNING "))]
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert not spy.reads, f"refused only after reading weights ({spy.reads[0]}): {lines[0]}"
    return lines[0]


def outcome(monkeypatch, args) -> tuple[str, str]:
    """``("refused", line)`` or ``("loads", what was read first)`` with the aborting spy."""
    spy = WeightSpy(abort=True).install(monkeypatch)
    try:
        result = run(*args)
    except WeightsRead as read:
        return "loads", str(read)
    return "refused", assert_refused(result, spy)


@pytest.mark.parametrize("combo", COMBOS, ids=combo_id)
def test_every_combination_is_refused_before_weights_load_or_gets_there(combo, world, monkeypatch):
    arch, offload, name, opts = combo
    verdict, detail = outcome(monkeypatch, prune_args(world, arch, name, opts, *(["--offload"] if offload else [])))
    key = (arch, offload, name, tuple(opts.items()))
    if key in KNOWN_REFUSED:
        assert verdict == "refused", detail
    if key in KNOWN_SUPPORTED:
        assert verdict == "loads", detail


def test_the_table_covers_every_registered_method_and_the_known_cases():
    names = {name for _, _, name, _ in COMBOS}
    assert names == set(registry().methods)  # a plugin's method (the test plugin's too) is in the table
    keys = {(a, o, n, tuple(opts.items())) for a, o, n, opts in COMBOS}
    assert KNOWN_REFUSED <= keys and KNOWN_SUPPORTED <= keys


def run_to_the_end(monkeypatch, args, output) -> None:
    """Run ``args`` whole (the spy only records): a refusal read no weights; anything else succeeds."""
    spy = WeightSpy().install(monkeypatch)
    args[args.index("--output") + 1] = output
    result = run(*args)
    if result.exit_code == 2:
        assert_refused(result, spy)
    else:
        assert result.exit_code == 0, result.output


@pytest.mark.slow
@pytest.mark.exhaustive
@pytest.mark.parametrize("combo", COMBOS, ids=combo_id)
def test_a_combination_that_passes_the_preflight_runs_and_one_refused_later_read_nothing(combo, world, monkeypatch,
                                                                                           tmp_path):
    arch, offload, name, opts = combo
    run_to_the_end(monkeypatch, prune_args(world, arch, name, opts, *(["--offload"] if offload else [])), tmp_path / "o")


@pytest.fixture(scope="module")
def every_arch(tmp_path_factory, tokenizer):
    """Every architecture the built-in adapters know, saved once each."""
    from tiny import ARCHS as ALL

    root = tmp_path_factory.mktemp("archs")
    for arch in ALL:
        tiny_model(arch).save_pretrained(root / arch)
        tokenizer.save_pretrained(root / arch)
    calibration_text(root / "calib.txt", records=16)
    return root


def _all_archs() -> list[str]:
    from tiny import ARCHS as ALL

    return list(ALL)


@pytest.mark.slow
@pytest.mark.exhaustive
@pytest.mark.parametrize("offload", [False, True], ids=["memory", "offload"])
@pytest.mark.parametrize("name", sorted(registry().methods))
@pytest.mark.parametrize("arch", _all_archs())
def test_every_method_on_every_architecture_is_refused_before_weights_load_or_runs(arch, name, offload, every_arch,
                                                                                   monkeypatch, tmp_path):
    args = prune_args(every_arch, arch, name, {}, *(["--offload"] if offload else []))
    run_to_the_end(monkeypatch, args, tmp_path / "o")


def stage_mixes() -> list[tuple[str, str]]:
    """Every registered selector with every registered compensator (its default merger)."""
    reg = registry()
    return [(s, c) for s in sorted(reg.selectors) for c in sorted(reg.compensators)]


@pytest.mark.parametrize("offload", [pytest.param(False, marks=pytest.mark.slow), True], ids=["memory", "offload"])
@pytest.mark.parametrize("mix", stage_mixes(), ids="+".join)
def test_every_stage_mix_is_refused_before_weights_load_or_gets_there(mix, offload, world, monkeypatch):
    selector, compensator = mix
    args = prune_args(world, "llama", "uidl", {}, "--selector", selector, "--compensator", compensator,
                      *(["--offload"] if offload else []))
    verdict, detail = outcome(monkeypatch, args)
    if compensator == "trained-layer" and selector in ("sleb", "lowest-influence", "laco"):
        # they remove exactly --layers layers (single ones, or collapsed): none can be written back
        assert verdict == "refused" and "writes layers back" in detail, detail
    if (selector, compensator) == ("angular-distance", "lstsq"):
        assert verdict == "loads", detail


@pytest.mark.slow
@pytest.mark.exhaustive
@pytest.mark.parametrize("offload", [False, True], ids=["memory", "offload"])
@pytest.mark.parametrize("mix", stage_mixes(), ids="+".join)
def test_a_stage_mix_that_passes_the_preflight_runs_and_one_refused_later_read_nothing(mix, offload, world, monkeypatch,
                                                                                         tmp_path):
    selector, compensator = mix
    args = prune_args(world, "llama", "uidl", {}, "--selector", selector, "--compensator", compensator,
                      *(["--offload"] if offload else []))
    run_to_the_end(monkeypatch, args, tmp_path / "o")


#: refusals of other options and commands: (id, arguments given the world folder, what the line says)
OTHER_REFUSALS = {
    "stats-passes-2-with-a-plan-scorer": (lambda w: prune_args(w, "llama", "sleb", {}, "--stats-passes", "2"),
                                          "--stats-passes 2 needs selectors that choose from distance tables"),
    "heal-with-offload": (lambda w: prune_args(w, "llama", "uidl", {}, "--heal", "lora", "--offload"),
                          "healing needs the whole model in memory"),
    "calib-4bit-with-offload": (lambda w: prune_args(w, "llama", "uidl", {}, "--calib-4bit", "--offload"),
                                "--calib-4bit .*--offload"),
    "offload-a-hub-id": (lambda w: prune_args(w, "llama", "uidl", {}, "--offload")[:1] + ["someone/some-model"]
                         + prune_args(w, "llama", "uidl", {}, "--offload")[2:], "--offload needs a local model directory"),
    "blocks-cannot-fit": (lambda w: prune_args(w, "llama", "replaceme-lstsq", {"num_blocks": 4}, "-n", "4"),
                          "4 non-overlapping blocks of 1 layers do not fit"),
    "laco-lowest-too-high": (lambda w: prune_args(w, "llama", "laco", {"lowest": 3}, "-n", "3"),
                             "laco: merges into layers >= 3 .*can remove at most 2"),
    "range-start-too-late": (lambda w: prune_args(w, "llama", "block-removal", {"start": 5}, "-n", "2"),
                             "does not fit a model with 6 layers"),
    "compare-method-on-post-norm": (
        lambda w: ["compare", w / "olmo2", "-m", "uidl", "-m", "replaceme-lstsq", "-n", "1,2", "--calib", w / "calib.txt",
                   "--calib-samples", "4", "--max-length", "16", "--ppl", w / "calib.txt"],
        "replaceme-lstsq at --layers 1: compensator 'lstsq': on 'olmo2' .*\\(and 1 more"),
    "compare-offload-cosine-refit": (
        lambda w: ["compare", w / "llama", "-m", "replaceme-cosine", "-o", "refit", "true", "--offload", "--calib",
                   w / "calib.txt", "--ppl", w / "calib.txt"], "cosine refit re-runs the partly pruned model"),
    "compare-offload-heal": (
        lambda w: ["compare", w / "llama", "-m", "uidl", "--heal", "lora", "--offload", "--calib", w / "calib.txt",
                   "--ppl", w / "calib.txt"], "uidl\\+lora.*healing needs the whole model in memory"),
    "compare-offload-include-hub-id": (
        lambda w: ["compare", w / "llama", "-m", "uidl", "--include-model", "other=someone/pruned", "--offload",
                   "--calib", w / "calib.txt", "--ppl", w / "calib.txt"], "--offload needs a local model directory"),
    "compare-include-another-tokenizer": (
        lambda w: ["compare", w / "llama", "-m", "uidl", "--include-model", f"x={w / 'other_tokenizer'}", "--calib",
                   w / "calib.txt", "--ppl", w / "calib.txt"], "--include-model x: .*vocabulary differs"),
    "compare-offload-include-unknown-architecture": (
        lambda w: ["compare", w / "llama", "-m", "uidl", "--include-model", f"m={w / 'mamba'}", "--offload", "--calib",
                   w / "calib.txt", "--ppl", w / "calib.txt"], "unsupported architecture 'mamba'"),
    "prune-unknown-architecture": (lambda w: ["prune", w / "mamba", *prune_args(w, "llama", "uidl", {})[2:]],
                                   "unsupported architecture 'mamba'"),
    "distances-loss-on-post-norm": (
        lambda w: ["distances", w / "olmo2", "-n", "2", "--loss", "-m", "replaceme-lstsq", "--calib", w / "calib.txt",
                   "--holdout-fraction", "0.5"],
        "compensator 'lstsq': on 'olmo2'"),
    "distances-loss-without-holdout": (  # 4 records in 2 batches: a tenth of them is no batch
        lambda w: ["distances", w / "llama", "-n", "1", "--loss", "--calib", w / "calib.txt", "--calib-samples", "4",
                   "--batch-size", "2"], "scoring plans needs held-out calibration batches, and 2 batch\\(es\\) at "
                                         "--holdout-fraction 0.1 hold none out"),
    "calibration-loss-without-fallback-or-holdout": (
        lambda w: prune_args(w, "llama", "replaceme-lstsq-loss", {"fallback_tokens": 0}),
        "scoring plans needs held-out calibration batches"),
    "distances-too-many-layers": (lambda w: ["distances", w / "llama", "-n", "6", "--calib", w / "calib.txt"],
                                  "--layers must be between 1 and 5"),
    "evaluate-offload-hub-id": (lambda w: ["evaluate", "someone/some-model", "--ppl", w / "calib.txt", "--offload"],
                                "--offload needs a local model directory"),
}


@pytest.mark.parametrize("case", OTHER_REFUSALS)
def test_other_options_and_commands_are_refused_before_weights_load(case, world, monkeypatch):
    build, fragment = OTHER_REFUSALS[case]
    verdict, line = outcome(monkeypatch, build(world))
    assert verdict == "refused", line
    assert __import__("re").search(fragment, line), (fragment, line)


def test_a_device_this_machine_lacks_is_refused_before_weights_load(world, monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    for extra in (["--device", "cuda"], ["--gram-device", "cuda:0"], ["--calib-4bit"]):
        verdict, line = outcome(monkeypatch, prune_args(world, "llama", "uidl", {}, *extra))
        assert verdict == "refused" and ("CUDA" in line), (extra, line)


def test_compare_leaves_out_the_default_methods_the_architecture_refuses(world, monkeypatch):
    import logging

    seen: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("replaceme.compare.runner")
    logger.addHandler(handler)
    try:
        verdict, _ = outcome(monkeypatch, ["compare", world / "olmo2", "-n", "1", "--calib", world / "calib.txt",
                                           "--calib-samples", "4", "--max-length", "16", "--ppl", world / "calib.txt"])
    finally:
        logger.removeHandler(handler)
    assert verdict == "loads"  # the other built-in methods run
    left_out = sorted(m.split(" left out")[0] for m in seen if " left out: " in m)
    assert left_out == ["replaceme-cosine", "replaceme-lstsq", "replaceme-lstsq-loss"]  # the dense maps


def test_supported_options_of_other_commands_pass_the_preflight(world, monkeypatch):
    for args in (["distances", world / "olmo2", "-n", "2", "--loss", "-m", "uidl", "--calib", world / "calib.txt",
                  "--holdout-fraction", "0.5"],
                 ["evaluate", world / "llama", "--ppl", world / "calib.txt", "--offload"],
                 ["compare", world / "olmo2", "-m", "replaceme-lstsq", "-o", "diag", "true", "--offload", "--calib",
                  world / "calib.txt", "--ppl", world / "calib.txt"]):
        verdict, detail = outcome(monkeypatch, args)
        assert verdict == "loads", (args[0], detail)


def test_healing_options_are_refused_before_weights_load(world, monkeypatch):
    verdict, line = outcome(monkeypatch, prune_args(world, "llama", "uidl", {}, "--heal", "lora", "-o",
                                                    "heal.target_modules", "no_such_proj"))
    assert verdict == "refused" and "no linear layer of the decoder matches target_modules 'no_such_proj'" in line, line
    verdict, detail = outcome(monkeypatch, prune_args(world, "llama", "uidl", {}, "--heal", "lora", "-o",
                                                      "heal.target_modules", "down_proj"))
    assert verdict == "loads", detail


def test_a_healing_batch_that_torchrun_processes_cannot_share_is_refused_before_weights_load(world, monkeypatch):
    for name, value in (("WORLD_SIZE", "3"), ("RANK", "0"), ("LOCAL_RANK", "0")):  # what torchrun sets
        monkeypatch.setenv(name, value)
    verdict, line = outcome(monkeypatch, prune_args(world, "llama", "uidl", {}, "--heal", "lora", "-o",
                                                    "heal.batch_size", "8"))
    assert verdict == "refused" and "batch_size 8 is not a multiple of the 3 processes" in line, line


def command_combos() -> list[tuple[str, str, bool, str]]:
    """``compare -m METHOD`` for every registered method and ``distances --loss --compensator C``
    for every registered compensator, in memory and offloaded, on both architectures."""
    reg = registry()
    return ([("compare", arch, off, name) for arch in ARCHS for off in (False, True) for name in sorted(reg.methods)]
            + [("distances", arch, off, comp) for arch in ARCHS for off in (False, True) for comp in sorted(reg.compensators)])


def command_args(world, combo, output):
    command, arch, offload, name = combo
    common = ["--calib", world / "calib.txt", "--calib-samples", "4", "--max-length", "16", "--batch-size", "2",
              *(["--offload"] if offload else [])]
    if command == "compare":
        return ["compare", world / arch, "-m", name, "-n", "1", *common, "--ppl", world / "calib.txt", "--max-ppl-tokens",
                "64", "--output", output, "--overwrite"]
    return ["distances", world / arch, "-n", "1", "--loss", "-m", "uidl", "--compensator", name, *common,
            "--holdout-fraction", "0.25", "--calib-samples", "8", "--csv",
            output / "d.csv" if output else world / "d.csv", "--overwrite"]


def command_id(combo) -> str:
    command, arch, offload, name = combo
    return f"{command}-{arch}-{'offload' if offload else 'memory'}-{name}"


@pytest.mark.parametrize("combo", command_combos(), ids=command_id)
def test_every_method_in_compare_and_distances_is_refused_before_weights_load_or_gets_there(combo, world, monkeypatch,
                                                                                              tmp_path):
    verdict, detail = outcome(monkeypatch, command_args(world, combo, tmp_path / "out"))
    command, arch, offload, name = combo
    if arch == "olmo2" and name in ("replaceme-lstsq", "lstsq", "cosine"):  # a dense map behind a post-norm
        assert verdict == "refused" and "post-norm" in detail, detail
    if arch == "llama" and name in ("uidl", "lstsq"):
        assert verdict == "loads", detail


@pytest.mark.slow
@pytest.mark.exhaustive
@pytest.mark.parametrize("combo", command_combos(), ids=command_id)
def test_compare_and_distances_that_pass_the_preflight_run_and_one_refused_later_read_nothing(combo, world, monkeypatch,
                                                                                              tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    args = command_args(world, combo, out)
    spy = WeightSpy().install(monkeypatch)
    result = run(*args)
    if result.exit_code == 2:
        assert_refused(result, spy)
    else:
        assert result.exit_code == 0, result.output


def test_calibration_records_that_cannot_give_what_the_options_ask_are_refused_before_weights_load(world, monkeypatch):
    verdict, line = outcome(monkeypatch, prune_args(world, "llama", "uidl", {}, "--chat-template", "on"))
    assert verdict == "refused" and "--chat-template on, but the calibration records are not conversations" in line
    args = prune_args(world, "llama", "uidl", {}, "--calib-drop-last", "--batch-size", "8")  # 4 records, batches of 8
    verdict, line = outcome(monkeypatch, args)
    assert verdict == "refused" and "4 records make no full batch of 8" in line, line


def test_a_perplexity_text_too_short_to_score_is_refused_before_weights_load(world, monkeypatch, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    model = tmp_path / "no_bos"  # a tokenizer without BOS: a window needs two tokens, one to predict from
    tiny_model("llama").save_pretrained(model)
    words = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1, "b": 2}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="<unk>", pad_token="<unk>").save_pretrained(model)
    short = tmp_path / "short.txt"
    short.write_text("a\n")  # one token
    for args in (["evaluate", model, "--ppl", short],
                 ["compare", model, "-m", "uidl", "--calib", world / "calib.txt", "--ppl", short]):
        verdict, line = outcome(monkeypatch, args)
        assert verdict == "refused" and "too few to score" in line, (args[0], line)
