"""The Python API (``evaluate``/``EvalSpec``) and the ``replaceme evaluate`` command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from replaceme.cli import cli
from replaceme.errors import ReplacemeError
from replaceme.evaluation import EvalSpec, evaluate

TEXT = "\n\n".join(f"Story {i}: the cat sat on the mat and looked at the moon." for i in range(12))


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "stories.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_llama, char_tokenizer):
    path = tmp_path_factory.mktemp("model")
    tiny_llama.save_pretrained(path)
    char_tokenizer.save_pretrained(path)
    return path


def test_package_import_is_light():
    code = "import sys, replaceme.evaluation; sys.exit(bool({'torch', 'lm_eval', 'transformers'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize("kwargs,message", [
    ({"device": "tpu"}, "unknown device"),
    ({"dtype": "int8"}, "unknown dtype"),
    ({"context_length": 1}, "context_length"),
    ({"stride": 0}, "stride"),
    ({"limit": 0}, "limit"),
    ({"num_fewshot": -1}, "num_fewshot"),
])
def test_spec_rejects_impossible_settings(kwargs, message):
    with pytest.raises(ReplacemeError, match=message):
        EvalSpec(**kwargs)


@pytest.mark.slow
def test_evaluate_api(tiny_llama, char_tokenizer, text_file, synthetic_task_data):
    spec = EvalSpec(ppl=[str(text_file)], context_length=48, tasks=["boolq", "winogrande"],
                    task_data=str(synthetic_task_data), limit=3, batch_size=2, device="cpu", dtype="float32")
    result = evaluate(tiny_llama, char_tokenizer, spec)
    key = f"ppl:{text_file}"
    assert list(result.metrics) == [key, "boolq", "winogrande"]
    assert result.tokens[key] == len(char_tokenizer(TEXT, add_special_tokens=False)["input_ids"])
    assert result.metrics[key] == pytest.approx(result.details[key]["ppl"]) and result.metrics[key] > 1
    assert result.stderr[key] > 0 and result.details[key]["ppl_stderr"] == result.stderr[key]  # bootstrap over batches
    assert result.task_metrics == {"boolq": "acc", "winogrande": "acc"}
    assert result.details["boolq"]["samples"] == 3
    assert set(result.seconds) == {key, "lm_eval", "total"}
    provenance = result.provenance
    assert provenance["device"] == "cpu" and provenance["dtype"] == "float32"
    assert provenance["spec"]["tasks"] == ["boolq", "winogrande"]
    assert provenance["task_data"] == str(synthetic_task_data)
    assert [r[:2] for r in result.rows()] == [(key, "ppl"), ("boolq", "acc"), ("winogrande", "acc")]
    json.dumps(result.to_dict())


def test_task_data_from_environment(monkeypatch, tiny_llama, char_tokenizer, synthetic_task_data):
    monkeypatch.setenv("REPLACEME_TASK_DATA", str(synthetic_task_data))
    result = evaluate(tiny_llama, char_tokenizer, EvalSpec(tasks=["piqa"], limit=2, device="cpu"))
    assert result.details["piqa"]["samples"] == 2


def run_cli(*args: str):
    return CliRunner().invoke(cli, ["evaluate", *args])


def test_cli_help_teaches():
    result = run_cli("--help")
    assert result.exit_code == 0
    assert "Examples:" in result.output and "--task-data" in result.output


def assert_one_line_error(result, text: str) -> None:
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and text in errors[0], result.output
    assert "Traceback" not in result.output


def test_cli_user_errors_are_one_line(tmp_path, model_dir):
    assert_one_line_error(run_cli(str(tmp_path / "no-such-model"), "--ppl", "x.txt"), "not found")
    assert_one_line_error(run_cli(str(model_dir)), "nothing to evaluate")
    absent = str(tmp_path / "absent.txt")
    assert_one_line_error(run_cli(str(model_dir), "--ppl", absent, "--device", "cpu"), "absent.txt")
    assert_one_line_error(run_cli(str(model_dir), "--tasks", "boolq", "--task-data", str(tmp_path / "void"),
                                  "--device", "cpu"), "task data directory not found")
    assert_one_line_error(run_cli(str(model_dir), "--tasks", "piqa", "--task-data", str(tmp_path), "--device", "cpu"),
                          "piqa/valid.jsonl")
    bad_limit = run_cli(str(model_dir), "--tasks", "boolq", "--limit", "1.5")
    assert bad_limit.exit_code == 2 and "fraction" in bad_limit.output


def test_cli_table(model_dir, text_file, synthetic_task_data):
    result = run_cli(str(model_dir), "--ppl", str(text_file), "--context-length", "40", "--tasks", "arc_easy",
                     "--tasks", "hellaswag,arc_easy", "--task-data", str(synthetic_task_data), "--limit", "2",
                     "--device", "cpu")
    assert result.exit_code == 0, result.output
    for word in ("benchmark", "ppl", "arc_easy", "acc", "hellaswag", "acc_norm"):
        assert word in result.stdout


def test_cli_json_on_stories260k(shared, shared_data):
    result = run_cli(str(shared / "models" / "stories260K"), "--ppl", str(shared_data / "tinystories/valid.txt[:30]"),
                     "--max-ppl-tokens", "1000", "--tasks", "winogrande,lambada_openai",
                     "--task-data", str(shared_data),
                     "--limit", "3", "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    ppl_key = f"ppl:{shared_data / 'tinystories/valid.txt[:30]'}"
    assert set(data["metrics"]) == {ppl_key, "winogrande", "lambada_openai"}
    assert data["tokens"][ppl_key] == 1000 and 2 < data["metrics"][ppl_key] < 10
    assert data["details"]["lambada_openai"]["perplexity"] > 1
    assert data["lm_eval"]["n-samples"]["winogrande"]["effective"] == 3
