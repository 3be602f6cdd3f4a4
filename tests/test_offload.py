"""``prune --offload``: the layer-by-layer pass and the streamed checkpoint give the
same weights as the in-memory path, for every adapter and every built-in method."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from tiny import ARCHS, POST_NORM_ARCHS, arch_params, calibration_text, make_tokenizer, tiny_model
from transformers import AutoModelForCausalLM

import replaceme
from replaceme.calibration import CalibrationSpec, build_calibration
from replaceme.checkpoint import Checkpoint, PlannedTensor, stored_blocks, write_checkpoint
from replaceme.errors import ReplacemeError
from replaceme.offload import load_offloaded
from replaceme.registry import adapter_for

METHODS = [
    ("block-removal", {}),
    ("uidl", {}),
    ("replaceme-lstsq", {}),
    ("replaceme-lstsq", {"diag": "true"}),
    ("replaceme-cosine", {"epochs": "1", "token_budget": "600"}),
    ("llm-streamline", {"token_budget": "600"}),
]
#: methods whose dense map cannot be folded behind a post-norm
DENSE_LINEAR = {"replaceme-lstsq", "replaceme-cosine"}


def save_tiny(path, arch: str):
    tiny_model(arch).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


def max_relative_difference(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    worst = 0.0
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        x, y = a[name].double(), b[name].double()
        worst = max(worst, float((x - y).norm() / x.norm().clamp_min(1e-30)))
    return worst


@pytest.mark.parametrize("arch", arch_params(ARCHS))
def test_offload_writes_the_in_memory_weights(arch, tmp_path):
    src = save_tiny(tmp_path / "src", arch)
    spec = CalibrationSpec(str(calibration_text(tmp_path / "calib.txt", records=24)), samples=12, max_length=40, batch_size=4)
    for k, (method, options) in enumerate(METHODS):
        if arch in POST_NORM_ARCHS and method in DENSE_LINEAR and "diag" not in options:
            continue  # refused before any work there (tests/test_post_norm.py)
        outs = {}
        for offload in (False, True):
            result = replaceme.prune(str(src), method=method, layers=2, calibration=spec, use_cache=False,
                                     offload=offload, **options)
            outs[offload] = replaceme.save_pruned(result, tmp_path / f"{k}-{offload}")
            if offload:  # layers that no stage touched were never kept in memory
                layers = result.offloaded.adapter.layers(result.model)
                assert any(all(p.is_meta for p in layer.parameters()) for layer in layers)
        files = sorted(p.name for p in outs[True].iterdir())
        assert files == sorted(p.name for p in outs[False].iterdir()), (method, files)
        assert max_relative_difference(load_file(outs[False] / "model.safetensors"),
                                       load_file(outs[True] / "model.safetensors")) <= 1e-5, (arch, method, options)
        mem, off = (json.loads((outs[o] / "config.json").read_text()) for o in (False, True))
        assert mem == off
        plan = {o: json.loads((outs[o] / "pruning.json").read_text())["plan"] for o in (False, True)}
        assert plan[False] == plan[True]


def test_offloaded_output_loads_and_matches_logits(tmp_path, tokenizer):
    src = save_tiny(tmp_path / "src", "llama")
    spec = CalibrationSpec(str(calibration_text(tmp_path / "calib.txt", records=24)), samples=12, max_length=40, batch_size=4)
    out = {}
    for offload in (False, True):
        result = replaceme.prune(str(src), method="replaceme-lstsq", layers=2, calibration=spec, use_cache=False, offload=offload)
        out[offload] = replaceme.save_pruned(result, tmp_path / f"out-{offload}")
    meta = json.loads((out[True] / "pruning.json").read_text())
    assert meta["offload"]["enabled"] is True and meta["layers_after"] == 4
    ids = build_calibration(spec, tokenizer).input_ids[0]
    logits = [AutoModelForCausalLM.from_pretrained(out[o]).eval()(input_ids=ids).logits for o in (False, True)]
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=0)


def test_sharded_checkpoint_in_and_out(tmp_path):
    """A sharded input is read through its index; a small shard limit writes shards and an index."""
    src = tmp_path / "src"
    tiny_model("qwen2").save_pretrained(src, max_shard_size="20KB")
    make_tokenizer().save_pretrained(src)
    assert (src / "model.safetensors.index.json").is_file()
    offloaded, _ = load_offloaded(str(src), device="cpu", dtype="auto", trust_remote_code=False, adapter_for=adapter_for)
    tensors = offloaded.output_tensors()
    (tmp_path / "out").mkdir()
    write_checkpoint(tmp_path / "out", tensors, max_shard_bytes=30_000)
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    reread = Checkpoint(tmp_path / "out")
    original = Checkpoint(src)
    assert sorted(reread.names()) == sorted(original.names())
    for name in original.names():
        torch.testing.assert_close(reread.read([name])[name], original.read([name])[name], rtol=0, atol=0)


def test_shard_writer_round_trip_and_bf16(tmp_path):
    values = {"a": torch.randn(3, 5, dtype=torch.bfloat16), "b": torch.arange(7), "c": torch.randn(2, dtype=torch.float64),
              "empty": torch.zeros(0, 4)}
    planned = [PlannedTensor(k, v.dtype, tuple(v.shape), lambda v=v: [v]) for k, v in values.items()]
    write_checkpoint(tmp_path, planned)
    back = load_file(tmp_path / "model.safetensors")  # the reference reader accepts our format
    for k, v in values.items():
        assert torch.equal(back[k], v)


def test_checkpoint_reads_embedding_rows_in_chunks(tmp_path):
    weight = torch.randn(50, 4)
    write_checkpoint(tmp_path, [PlannedTensor("emb", weight.dtype, (50, 4), lambda: [weight[:20], weight[20:]])])
    rows = torch.tensor([49, 0, 7, 7, 31])
    checkpoint = Checkpoint(tmp_path)
    assert torch.equal(checkpoint.read_rows("emb", rows, chunk=8), weight[rows])
    assert torch.equal(torch.cat(list(stored_blocks(checkpoint, "emb", block_bytes=3 * 16))), weight)


def test_offload_needs_a_local_safetensors_directory(tmp_path, calib_file):
    with pytest.raises(ReplacemeError, match="local model directory"):
        replaceme.prune("someone/model", method="uidl", layers=1, calibration=str(calib_file), offload=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReplacemeError, match="safetensors|not a model directory"):
        replaceme.prune(str(tmp_path / "empty"), method="uidl", layers=1, calibration=str(calib_file), offload=True)


def test_spilled_sample_equals_the_in_memory_one(tmp_path, tokenizer, calib_file):
    from replaceme.stats import StatsRequest, collect_stats
    from replaceme.outputs.runs import OWNER_FILE
    from replaceme.stats.spill import Spill
    from replaceme.stats.store import GramKey

    model = tiny_model("llama")
    adapter = adapter_for(model)
    calib = build_calibration(CalibrationSpec(str(calib_file), samples=12, max_length=32, batch_size=4), tokenizer)
    request = StatsRequest(block_sizes={1}, gram_blocks={(1, 3)}, sample_tokens=10_000, sample_boundaries={1, 3},
                           sample_mlp={0})
    plain = collect_stats(model, adapter, calib, request)
    with Spill(tmp_path / "spill") as spill:
        spilled = collect_stats(model, adapter, calib, request, spill=spill)
        assert [p.name for p in spill.path.iterdir()] == [OWNER_FILE]  # data files are unlinked once mapped
    assert not spill.path.exists() and spill.bytes_written == spilled.sample.nbytes() > 0
    for a, b in zip(plain.sample.train + plain.sample.holdout, spilled.sample.train + spilled.sample.holdout):
        for j in (1, 3):
            assert torch.equal(a.boundaries[j], b.boundaries[j])
        assert torch.equal(a.mlp[0], b.mlp[0])
    torch.testing.assert_close(plain.gram[GramKey(1, 3)].xty, spilled.gram[GramKey(1, 3)].xty, rtol=0, atol=0)


@pytest.mark.slow
def test_spill_dir_with_offload_and_cosine(tmp_path):
    src = save_tiny(tmp_path / "src", "qwen2")
    spec = CalibrationSpec(str(calibration_text(tmp_path / "calib.txt", records=24)), samples=12, max_length=40, batch_size=4)
    out = {}
    for spill in (None, tmp_path / "spill"):
        result = replaceme.prune(str(src), method="replaceme-cosine", layers=1, calibration=spec, use_cache=False,
                                 offload=spill is not None, spill_dir=spill, epochs=1)
        out[spill] = replaceme.save_pruned(result, tmp_path / f"out-{spill is None}")
    assert list((tmp_path / "spill").iterdir()) == []  # the run's directory is gone
    meta = json.loads((out[tmp_path / "spill"] / "pruning.json").read_text())
    assert meta["statistics_memory"]["sample_on_disk"] is True and meta["statistics_memory"]["spilled_bytes"] > 0
    assert max_relative_difference(load_file(out[None] / "model.safetensors"),
                                   load_file(out[tmp_path / "spill"] / "model.safetensors")) <= 1e-5


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_models_get_float64_statistics(dtype, tmp_path):
    src = save_tiny(tmp_path / "src", "llama")
    spec = CalibrationSpec(str(calibration_text(tmp_path / "calib.txt", records=24)), samples=12, max_length=40, batch_size=4)
    out = {}
    for offload in (False, True):
        result = replaceme.prune(str(src), method="replaceme-lstsq", layers=2, calibration=spec, use_cache=False,
                                 offload=offload, dtype=dtype, device="cpu")
        out[offload] = replaceme.save_pruned(result, tmp_path / f"out-{offload}")
        assert result.outcome.compensations[0].transform.dtype == torch.float64  # T solved from float64 sums
    mem, off = (load_file(out[o] / "model.safetensors") for o in (False, True))
    assert all(t.dtype == getattr(torch, dtype) for t in off.values() if t.is_floating_point())
    assert max_relative_difference(mem, off) <= 1e-5
    meta = json.loads((out[True] / "pruning.json").read_text())
    assert meta["statistics_memory"]["gram"] == 2 * 4 * 32 * 32 * 8  # XᵀX, XᵀY of the candidates [1,3) .. [4,6)


def test_offload_names_the_layer_that_overflows(tmp_path, calib_file):
    model = tiny_model("gpt2")
    with torch.no_grad():
        model.transformer.h[2].mlp.c_proj.bias.fill_(float("inf"))
    model.save_pretrained(tmp_path / "src")
    make_tokenizer().save_pretrained(tmp_path / "src")
    with pytest.raises(ReplacemeError, match=r"layer 2 produced non-finite hidden states"):
        replaceme.prune(str(tmp_path / "src"), method="uidl", layers=1, calibration=str(calib_file), offload=True)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--device", "cuda:1"], "no CUDA device is available" if not torch.cuda.is_available() else "CUDA device(s)"),
        (["--device", "gpu0"], "invalid --device 'gpu0'"),
        (["--calib-4bit"], "--calib-4bit needs a CUDA GPU and the bitsandbytes package"),
        (["--gram-device", "gpu"], "invalid --gram-device 'gpu'"),
    ],
)
def test_device_and_4bit_errors_are_one_line(args, fragment, tmp_path, calib_file):
    from click.testing import CliRunner

    from replaceme.cli import cli

    import importlib.util

    if args == ["--device", "cuda:1"] and torch.cuda.device_count() > 1:
        pytest.skip("this machine has a second GPU")
    if args == ["--calib-4bit"] and torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes"):
        pytest.skip("4-bit calibration is available here")
    src = save_tiny(tmp_path / "src", "llama")
    result = CliRunner().invoke(cli, ["prune", str(src), "-m", "uidl", "-n", "1", "--calib", str(calib_file),
                                      "--output", str(tmp_path / "out"), *args])
    assert result.exit_code != 0
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_gpu_benchmark_script_runs_tiny_on_cpu(tmp_path):
    """benchmarks/gpu_llama8b.py has not run on a GPU here; --tiny runs the same code on CPU."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "gpu.json"
    subprocess.run([sys.executable, str(root / "benchmarks" / "gpu_llama8b.py"), "--tiny", "--json", str(out),
                    "--spill-dir", str(tmp_path / "spill")], check=True, capture_output=True, cwd=root, timeout=600)
    result = json.loads(out.read_text())
    stages = {(r[0], r[1]): r[3] for r in result["rows"]}
    for method in ("lstsq", "cosine"):
        for stage in ("distance pass", "chosen-block statistics pass", "select+compensate+fold"):
            assert stages[(method, stage)] >= 0
        assert result["total_s"][method] > 0
    for command in ("compare --offload uidl+lstsq", "evaluate --offload"):
        assert isinstance(stages[("offload", command)], float), stages[("offload", command)]  # not "failed (...)"
    assert result["paper_s"] is None and result["tiny"]  # no comparison with the paper from a CPU smoke test
    assert list((tmp_path / "spill").iterdir()) == []


@pytest.mark.slow
def test_cli_offload_with_spill_dir(tmp_path, calib_file):
    from click.testing import CliRunner

    from replaceme.cli import cli

    src = save_tiny(tmp_path / "src", "mistral")
    before = {p.name: p.stat().st_mtime_ns for p in src.iterdir()}
    result = CliRunner().invoke(cli, ["prune", str(src), "-m", "replaceme-lstsq", "-n", "1", "--calib", str(calib_file),
                                      "--offload", "--spill-dir", str(tmp_path / "spill"), "--gram-device", "cpu",
                                      "--output", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "out" / "pruning.json").read_text())
    assert meta["offload"]["enabled"] and meta["layers_after"] == 5 and meta["statistics_memory"]["sample_on_disk"]
    assert meta["statistics_memory"]["gram_device"] == "cpu" and meta["statistics_memory"]["gram"] > 0
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "out").config.num_hidden_layers == 5
    assert {p.name: p.stat().st_mtime_ns for p in src.iterdir()} == before  # the input is never written
    assert list((tmp_path / "spill").iterdir()) == []
