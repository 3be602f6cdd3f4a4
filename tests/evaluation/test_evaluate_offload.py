"""``evaluate --offload``: perplexity and lm-eval log-likelihoods through the layer-by-layer
engine equal the in-memory model's, on every adapter family."""

from __future__ import annotations

import copy

import pytest
from tiny import ARCHS, calibration_text, make_tokenizer, tiny_model

from replaceme.evaluation import EvalSpec, evaluate
from replaceme.loading import load_model
from replaceme.offload import load_offloaded
from replaceme.registry import adapter_for


def _saved(tmp_path, arch):
    path = tmp_path / arch
    tiny_model(arch).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


def _both(path):
    model, tokenizer = load_model(str(path), device="cpu", dtype="float32")
    offloaded, _ = load_offloaded(str(path), device="cpu", dtype="float32", trust_remote_code=False, adapter_for=adapter_for)
    return model, offloaded, tokenizer


@pytest.mark.parametrize("arch", ARCHS)
def test_offloaded_perplexity_equals_in_memory(arch, tmp_path):
    text = calibration_text(tmp_path / "text.txt", records=20)
    model, offloaded, tokenizer = _both(_saved(tmp_path, arch))
    # uneven batches, overlapping windows: the last batch is short and scored from an offset
    spec = EvalSpec(ppl=[str(text)], context_length=32, stride=20, ppl_batch_size=3, max_ppl_tokens=300,
                    device="cpu", dtype="float32")
    memory = evaluate(model, tokenizer, spec).details[f"ppl:{text}"]
    layered = evaluate(offloaded.model, tokenizer, spec, offloaded=offloaded).details[f"ppl:{text}"]
    assert layered["tokens"] == memory["tokens"] and layered["windows"] == memory["windows"]
    assert layered["nll"] == pytest.approx(memory["nll"], rel=1e-6)
    assert all(all(p.is_meta for p in layer.parameters()) for layer in offloaded.adapter.layers(offloaded.model))


@pytest.mark.parametrize("arch", ["llama", "falcon", "gemma2"])
def test_offloaded_loglikelihoods_equal_in_memory(arch, tmp_path):
    from lm_eval.models.huggingface import HFLM

    from replaceme.evaluation.offloaded_lm import OffloadedLM

    model, offloaded, tokenizer = _both(_saved(tmp_path, arch))
    encode = tokenizer.encode
    requests = [(("", ""), encode(ctx), encode(cont, add_special_tokens=False))
                for ctx, cont in [("the cat sat", " on the mat"), ("a", " b"), ("once upon a time there", " was"),
                                  ("the cat sat", " on the rug and slept"), ("red fox", " x")]]
    memory = HFLM(pretrained=model, tokenizer=copy.deepcopy(tokenizer), batch_size=2)
    layered = OffloadedLM(pretrained=offloaded.model, tokenizer=copy.deepcopy(tokenizer), batch_size=2)
    layered.attach(offloaded, offloaded.model)
    want = memory._loglikelihood_tokens(requests, disable_tqdm=True)
    got = layered._loglikelihood_tokens(requests, disable_tqdm=True)
    assert [g for _, g in got] == [g for _, g in want]
    assert [ll for ll, _ in got] == pytest.approx([ll for ll, _ in want], rel=1e-5)
    offloaded.disk_budget = 1  # one sweep over the layers per batch (--disk-budget)
    assert layered._loglikelihood_tokens(requests, disable_tqdm=True) == got
    assert offloaded.sweeps["evaluation"] == 3


def test_offloaded_tasks_equal_in_memory(tmp_path, synthetic_task_data):
    model, offloaded, tokenizer = _both(_saved(tmp_path, "llama"))
    spec = EvalSpec(tasks=["boolq", "hellaswag", "lambada_openai"], task_data=str(synthetic_task_data), limit=4,
                    batch_size=3, device="cpu", dtype="float32", bootstrap_iters=0)
    memory = evaluate(model, tokenizer, spec)
    layered = evaluate(offloaded.model, tokenizer, spec, offloaded=offloaded)
    assert layered.metrics == pytest.approx(memory.metrics)
    for task in spec.tasks:
        assert layered.details[task] == pytest.approx(memory.details[task], nan_ok=True)


def test_cli_evaluate_offload_prints_the_in_memory_numbers(tmp_path):
    import json

    from click.testing import CliRunner

    from replaceme.cli import cli

    path = _saved(tmp_path, "qwen3")
    text = calibration_text(tmp_path / "text.txt", records=10)
    args = ["evaluate", str(path), "--ppl", str(text), "--context-length", "24", "--device", "cpu", "--json"]
    runs = [CliRunner().invoke(cli, args + extra) for extra in ([], ["--offload"])]
    assert [r.exit_code for r in runs] == [0, 0], [r.output for r in runs]
    memory, layered = (json.loads(r.stdout) for r in runs)
    assert layered["metrics"] == pytest.approx(memory["metrics"], rel=1e-6)


def test_generation_task_refused_before_the_model_loads(tmp_path):
    from click.testing import CliRunner

    from replaceme.cli import cli

    data = tmp_path / "gen.jsonl"
    data.write_text('{"q": "1+1=", "a": "2"}\n{"q": "2+2=", "a": "4"}\n')
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_gen.yaml").write_text(
        "task: tiny_gen\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}\ntest_split: test\noutput_type: generate_until\n"
        'doc_to_text: "{{q}}"\ndoc_to_target: "{{a}}"\ngeneration_kwargs:\n  until: ["\\n"]\n'
        "metric_list:\n  - metric: exact_match\n")
    path = _saved(tmp_path, "llama")
    result = CliRunner().invoke(cli, ["evaluate", str(path), "--tasks", "tiny_gen", "--tasks-dir", str(tasks),
                                      "--offload", "--device", "cpu"])
    assert result.exit_code == 2
    assert "generates text" in result.output and "tiny_gen" in result.output
