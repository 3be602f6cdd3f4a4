"""The offline task pack: loaders, exact lm-eval prompts, and scores equal to a direct computation.

The expected prompts below are written from lm-eval's own task YAMLs of the
same names (boolq from super_glue, piqa, hellaswag, arc_easy/arc_challenge,
openbookqa, winogrande, sciq, lambada_openai); the expected scores are
computed here with plain torch, one (context, continuation) pair at a time.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from replaceme.errors import ReplacemeError
from replaceme.evaluation.lm_eval_runner import run_tasks
from replaceme.evaluation.tasks import DATA_ENV, PACK_DIR, PACK_TASKS
from replaceme.evaluation.tasks import utils as pack

# ----------------------------------------------------------------------------- the expected requests


@dataclass
class Doc:
    """One document as lm-eval should see it: (context, continuation) per choice, gold, choice strings."""

    pairs: list[tuple[str, str]]
    gold: int
    choices: list[str]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _mc(ctx: str, choices: list[str], gold: int) -> Doc:
    return Doc([(ctx, " " + c) for c in choices], gold, choices)


def expected_docs(task: str, data: Path) -> list[Doc]:
    """The documents of ``task``, read from the raw files and formatted as lm-eval's YAMLs do."""
    if task == "boolq":  # super_glue's passage: "title -- passage"
        return [_mc(f"{r['title']} -- {r['passage']}\nQuestion: {r['question']}?\nAnswer:", ["no", "yes"],
                    int(r["answer"])) for r in _jsonl(data / "boolq/dev.jsonl")]
    if task == "piqa":
        labels = (data / "piqa/valid-labels.lst").read_text().split()
        return [_mc(f"Question: {r['goal']}\nAnswer:", [r["sol1"], r["sol2"]], int(g))
                for r, g in zip(_jsonl(data / "piqa/valid.jsonl"), labels)]
    if task == "hellaswag":
        from lm_eval.tasks.hellaswag.utils import preprocess  # lm-eval's own cleaning

        lines = (data / "hellaswag/hellaswag_val_full.txt").read_text(encoding="utf-8").rstrip("\n").split("\n")
        return [_mc(preprocess(lines[i]), [preprocess(e) for e in lines[i + 2 : i + 6]], int(lines[i + 1]))
                for i in range(0, len(lines), 6)]
    if task == "sciq":  # lm-eval's order: [distractor1, distractor2, distractor3, correct_answer]
        docs = []
        for r in _jsonl(data / "mc/sciq.mc.jsonl"):
            choices = [c for i, c in enumerate(r["choices"]) if i != r["gold"]] + [r["choices"][r["gold"]]]
            docs.append(_mc(f"\nQuestion: {r['query']}\nAnswer:", choices, 3))
        return docs
    if task in ("arc_easy", "arc_challenge", "openbookqa"):
        file = {"arc_easy": "ARC-Easy", "arc_challenge": "ARC-Challenge"}.get(task, task)
        prompt = {"openbookqa": "{}"}.get(task, "Question: {}\nAnswer:")
        return [_mc(prompt.format(r["query"]), r["choices"], r["gold"]) for r in _jsonl(data / f"mc/{file}.mc.jsonl")]
    if task == "winogrande":  # partial evaluation: a context per option, one continuation
        docs = []
        for r in _jsonl(data / "mc/winogrande.mc.jsonl"):
            blank = r["query"].index("_")
            contexts = [r["query"][:blank] + option for option in r["choices"]]
            docs.append(Doc([(c, " " + r["query"][blank + 1 :].strip()) for c in contexts], r["gold"], contexts))
        return docs
    if task == "lambada_openai":
        docs = []
        for r in _jsonl(data / "lambada/lambada_test.jsonl"):
            words = r["text"].split(" ")
            docs.append(Doc([(" ".join(words[:-1]), " " + words[-1])], 0, []))
        return docs
    raise KeyError(task)


def load_pack_task(task: str, data: Path):
    """The pack's task, built by lm-eval itself (as ``lm_eval --include_path`` would)."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(PACK_DIR), include_defaults=False, metadata={"task_data": str(data)})
    return manager.load([task])["tasks"][task]


def requests_of(task_obj, limit: int | None) -> list[list[tuple[str, str]]]:
    task_obj.build_all_requests(limit=limit, rank=0, world_size=1)
    per_doc: dict[int, list] = {}
    for inst in sorted(task_obj.instances, key=lambda i: (i.doc_id, i.idx)):
        per_doc.setdefault(inst.doc_id, []).append(tuple(inst.args))
    return [per_doc[i] for i in sorted(per_doc)]


# ----------------------------------------------------------------------------- direct scoring


def loglikelihood(model, tokenizer, context: str, continuation: str) -> tuple[float, bool]:
    """log p(continuation | context) and whether it is the greedy continuation.

    Tokenisation as lm-eval defines it for causal models: encode context +
    continuation (with the tokenizer's default special tokens), the
    continuation being the tokens past the encoded context; keep at most
    ``max_length + 1`` tokens from the right.
    """
    whole = tokenizer(context + continuation)["input_ids"]
    ctx = tokenizer(context)["input_ids"]
    cont = whole[len(ctx) :]
    ids = (ctx + cont)[-(model.config.max_position_embeddings + 1) :]
    with torch.no_grad():
        logits = model(torch.tensor([ids[:-1]])).logits[0, -len(cont) :].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    target = torch.tensor(cont)
    return float(logprobs.gather(1, target[:, None]).sum()), bool((logprobs.argmax(-1) == target).all())


def direct_scores(model, tokenizer, task: str, docs: list[Doc]) -> dict[str, float]:
    """acc / acc_norm (multiple choice) or acc / perplexity (LAMBADA), as lm-eval aggregates them."""
    if task == "lambada_openai":
        results = [loglikelihood(model, tokenizer, *doc.pairs[0]) for doc in docs]
        lls = np.array([ll for ll, _ in results])
        return {"acc": float(np.mean([greedy for _, greedy in results])), "perplexity": float(np.exp(-lls.mean()))}
    acc, acc_norm = [], []
    for doc in docs:
        lls = np.array([loglikelihood(model, tokenizer, *pair)[0] for pair in doc.pairs])
        acc.append(float(np.argmax(lls) == doc.gold))
        acc_norm.append(float(np.argmax(lls / np.array([len(c) for c in doc.choices])) == doc.gold))
    return {"acc": float(np.mean(acc)), "acc_norm": float(np.mean(acc_norm))}


def assert_scores_match(result, model, tokenizer, tasks, data: Path, limit: int) -> None:
    for task in tasks:
        expected = direct_scores(model, tokenizer, task, expected_docs(task, data)[:limit])
        got = result.details[task]
        assert got["samples"] == limit
        for metric, value in expected.items():
            if metric in got:
                assert got[metric] == pytest.approx(value, rel=1e-4, abs=1e-9), (task, metric)
        assert result.metrics[task] == got[result.metric_names[task]]


# ----------------------------------------------------------------------------- tests


def test_pack_task_names_are_the_yaml_names():
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    names = {yaml.load(p.read_text(), Loader=Loader)["task"] for p in PACK_DIR.glob("*.yaml")}
    assert names == set(PACK_TASKS)


def test_data_directory_is_required_and_never_guessed(monkeypatch, tmp_path, synthetic_task_data):
    with pytest.raises(ReplacemeError, match=DATA_ENV):
        pack.load_boolq()
    with pytest.raises(ReplacemeError, match="not found"):
        pack.load_boolq(task_data=str(tmp_path / "nowhere"))
    with pytest.raises(ReplacemeError, match="boolq/dev.jsonl"):
        pack.load_boolq(task_data=str(tmp_path))
    monkeypatch.setenv(DATA_ENV, str(synthetic_task_data))
    assert len(pack.load_boolq()["validation"]) == 6


def test_bad_files_are_one_line_errors(tmp_path):
    (tmp_path / "piqa").mkdir()
    (tmp_path / "piqa/valid.jsonl").write_text('{"goal": "g", "sol1": "a", "sol2": "b"}\n')
    (tmp_path / "piqa/valid-labels.lst").write_text("0\n1\n")
    with pytest.raises(ReplacemeError, match="2 labels for 1 questions"):
        pack.load_piqa(task_data=str(tmp_path))
    (tmp_path / "hellaswag").mkdir()
    (tmp_path / "hellaswag/hellaswag_val_full.txt").write_text("a\n0\nb\nc\n")
    with pytest.raises(ReplacemeError, match="multiple of 6"):
        pack.load_hellaswag(task_data=str(tmp_path))


def test_loaders_read_the_shared_copies(shared_data):
    sizes = {"load_boolq": 3270, "load_piqa": 1838, "load_hellaswag": 10042, "load_openbookqa": 500,
             "load_winogrande": 1267, "load_sciq": 1000, "load_lambada": 5153}
    for loader, size in sizes.items():
        assert len(getattr(pack, loader)(task_data=str(shared_data))["validation"]) == size, loader
    arc = pack.load_arc(task_data=str(shared_data), file="mc/ARC-Challenge.mc.jsonl")["validation"]
    assert len(arc) == 1172 and set(arc.column_names) == {"question", "choices", "gold"}


@pytest.mark.parametrize("task", PACK_TASKS)
def test_prompts_are_lm_evals(task, synthetic_task_data):
    docs = expected_docs(task, synthetic_task_data)
    assert requests_of(load_pack_task(task, synthetic_task_data), None) == [d.pairs for d in docs]


@pytest.mark.parametrize("task", [pytest.param(t, marks=pytest.mark.slow) if t == "hellaswag" else t for t in PACK_TASKS])
def test_prompts_are_lm_evals_on_the_shared_copies(task, shared_data):
    docs = expected_docs(task, shared_data)[:25]
    assert requests_of(load_pack_task(task, shared_data), 25) == [d.pairs for d in docs]


def test_fewshot_examples_come_from_other_documents(synthetic_task_data):
    task = load_pack_task("arc_easy", synthetic_task_data)
    task.set_config(key="num_fewshot", value=2)
    task.set_fewshot_seed(seed=0)
    docs = expected_docs("arc_easy", synthetic_task_data)
    for doc, pairs in zip(docs, requests_of(task, None)):
        context = pairs[0][0]
        shots = context.split("\n\n")
        assert len(shots) == 3 and shots[-1] == doc.pairs[0][0]
        examples = {d.pairs[0][0] + d.pairs[d.gold][1] for d in docs if d is not doc}
        assert set(shots[:2]) <= examples


@pytest.fixture(scope="module")
def tiny_run(tiny_llama, char_tokenizer, synthetic_task_data):
    return run_tasks(tiny_llama, char_tokenizer, list(PACK_TASKS), task_data=str(synthetic_task_data),
                     limit=5, batch_size=3, bootstrap_iters=0)


def test_all_pack_tasks_equal_direct_computation(tiny_run, tiny_llama, char_tokenizer, synthetic_task_data):
    assert list(tiny_run.metrics) == list(PACK_TASKS)
    assert_scores_match(tiny_run, tiny_llama, char_tokenizer, PACK_TASKS, synthetic_task_data, limit=5)
    assert tiny_run.metric_names["hellaswag"] == "acc_norm" and tiny_run.metric_names["boolq"] == "acc"
    json.dumps(tiny_run.raw)  # provenance is JSON-able


def test_chance_level_and_stderr_are_recorded_per_task(tiny_run, tiny_llama, char_tokenizer, synthetic_task_data):
    for task in PACK_TASKS:
        docs = expected_docs(task, synthetic_task_data)[:5]
        expected = 0.0 if task == "lambada_openai" else float(np.mean([1 / len(d.pairs) for d in docs]))
        assert tiny_run.chance[task] == pytest.approx(expected), task
    assert tiny_run.chance["boolq"] == pytest.approx(0.5) and tiny_run.chance["hellaswag"] == pytest.approx(0.25)
    assert tiny_run.stderr == {}  # bootstrap_iters=0: lm-eval computes no stderr
    run = run_tasks(tiny_llama, char_tokenizer, ["boolq", "piqa"], task_data=str(synthetic_task_data), limit=5,
                    batch_size=3, bootstrap_iters=10)
    for task in ("boolq", "piqa"):  # accuracies: the sample standard error of the mean, in closed form
        p = run.metrics[task]
        assert run.stderr[task] == pytest.approx(math.sqrt(p * (1 - p) / 4))


def test_tokenizer_is_left_untouched(tiny_run, char_tokenizer):
    assert char_tokenizer.pad_token is None  # lm-eval sets a pad token on the copy it gets


@pytest.mark.slow
def test_shared_tasks_on_stories260k_equal_direct_computation(stories, shared_data):
    model, tokenizer = stories
    tasks = ["boolq", "piqa", "hellaswag", "arc_easy", "winogrande"]
    result = run_tasks(model, tokenizer, tasks, task_data=str(shared_data), limit=6, batch_size=4, bootstrap_iters=0)
    assert list(result.metrics) == tasks
    assert all(0.0 <= v <= 1.0 for v in result.metrics.values())
    assert_scores_match(result, model, tokenizer, tasks, shared_data, limit=6)


def test_user_tasks_dir_runs_offline(tmp_path, tiny_llama, char_tokenizer):
    """A user's YAML task (with its own loader) is found in --tasks-dir without lm-eval's registry."""
    (tmp_path / "mine.yaml").write_text(
        "task: my_colors\n"
        "custom_dataset: !function my_utils.load\n"
        "output_type: multiple_choice\n"
        "test_split: test\n"
        'doc_to_text: "Color of {{thing}}:"\n'
        "doc_to_target: gold\n"
        'doc_to_choice: ["red", "blue"]\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    (tmp_path / "my_utils.py").write_text(
        "import datasets\n\n"
        "def load(**kwargs):\n"
        "    rows = [{'thing': 'sky', 'gold': 1}, {'thing': 'fire', 'gold': 0}, {'thing': 'sea', 'gold': 1}]\n"
        "    return datasets.DatasetDict({'test': datasets.Dataset.from_list(rows)})\n"
    )
    result = run_tasks(tiny_llama, char_tokenizer, ["my_colors"], tasks_dir=str(tmp_path), bootstrap_iters=0)
    docs = [_mc(f"Color of {t}:", ["red", "blue"], g) for t, g in (("sky", 1), ("fire", 0), ("sea", 1))]
    assert result.metrics["my_colors"] == pytest.approx(direct_scores(tiny_llama, char_tokenizer, "x", docs)["acc"])
    assert result.metric_names["my_colors"] == "acc"


def test_repeated_names_run_once(tiny_llama, char_tokenizer, synthetic_task_data):
    result = run_tasks(tiny_llama, char_tokenizer, ["piqa", "piqa"], task_data=str(synthetic_task_data), limit=1)
    assert list(result.metrics) == ["piqa"]  # the same name twice is one task


@pytest.mark.slow
def test_unknown_task_suggests_a_name(tiny_llama, char_tokenizer, synthetic_task_data):
    """A name in neither the pack nor --tasks-dir is looked up in lm-eval's registry (indexed once, ~10 s)."""
    with pytest.raises(ReplacemeError, match="unknown lm-eval task 'hellaswagg' \\(did you mean 'hellaswag'"):
        run_tasks(tiny_llama, char_tokenizer, ["hellaswagg"], task_data=str(synthetic_task_data))
