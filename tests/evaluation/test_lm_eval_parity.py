"""The offline task pack renders the same requests as lm-eval's own tasks.

For each task, lm-eval's installed task YAML (``lm_eval/tasks/...``, with its
``!function`` hooks and ``include``s) is built by lm-eval itself over a tiny
local JSON file in the hub dataset's format (``dataset_path: json``), made from
the first documents of the shared local copies; the pack's task is built over
those same documents. The (context, continuation) requests must be equal.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .test_task_pack import _jsonl, load_pack_task, requests_of

K = 8  # documents compared per task

#: task -> lm-eval's YAML, relative to the installed lm_eval/tasks
OFFICIAL = {
    "boolq": "super_glue/boolq/default.yaml",
    "piqa": "piqa/piqa.yaml",
    "hellaswag": "hellaswag/hellaswag.yaml",
    "arc_easy": "arc/arc_easy.yaml",
    "arc_challenge": "arc/arc_challenge.yaml",
    "openbookqa": "openbookqa/openbookqa.yaml",
    "winogrande": "winogrande/default.yaml",
    "sciq": "sciq/sciq.yaml",
    "lambada_openai": "lambada/lambada_openai.yaml",
}


def official_task(task: str, rows: list[dict], tmp: Path):
    """lm-eval's own task ``task``, built from its installed YAML over ``rows`` (hub format)."""
    import lm_eval
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    data = tmp / f"{task}.json"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = load_yaml(Path(lm_eval.__file__).parent / "tasks" / OFFICIAL[task])
    assert config["task"] == task
    config.pop("tag", None)
    config.update(dataset_path="json", dataset_name=None,
                  dataset_kwargs={"data_files": {split: str(data) for split in ("train", "validation", "test")}})
    return ConfigurableTask(config=config)


def _letters(n: int) -> list[str]:
    return ["A", "B", "C", "D", "E"][:n]


def hub_rows(task: str, data: Path) -> list[dict]:
    """The first K documents of the local copy, in the hub dataset's format that lm-eval's task reads."""
    if task == "boolq":  # super_glue/boolq: the passage is "title -- passage"
        return [{"question": r["question"], "passage": f"{r['title']} -- {r['passage']}", "idx": i,
                 "label": int(r["answer"])} for i, r in enumerate(_jsonl(data / "boolq/dev.jsonl")[:K])]
    if task == "piqa":
        labels = (data / "piqa/valid-labels.lst").read_text().split()
        return [{**r, "label": int(g)} for r, g in zip(_jsonl(data / "piqa/valid.jsonl")[:K], labels)]
    if task in ("arc_easy", "arc_challenge", "openbookqa"):
        file = {"arc_easy": "ARC-Easy", "arc_challenge": "ARC-Challenge"}.get(task, task)
        key = "question_stem" if task == "openbookqa" else "question"
        return [{"id": str(i), key: r["query"], "choices": {"text": r["choices"], "label": _letters(len(r["choices"]))},
                 "answerKey": _letters(len(r["choices"]))[r["gold"]]}
                for i, r in enumerate(_jsonl(data / f"mc/{file}.mc.jsonl")[:K])]
    if task == "sciq":
        rows = []
        for r in _jsonl(data / "mc/sciq.mc.jsonl")[:K]:
            distractors = [c for i, c in enumerate(r["choices"]) if i != r["gold"]]
            rows.append({"question": r["query"], "distractor1": distractors[0], "distractor2": distractors[1],
                         "distractor3": distractors[2], "correct_answer": r["choices"][r["gold"]], "support": ""})
        return rows
    if task == "winogrande":
        return [{"sentence": r["query"], "option1": r["choices"][0], "option2": r["choices"][1],
                 "answer": str(r["gold"] + 1)} for r in _jsonl(data / "mc/winogrande.mc.jsonl")[:K]]
    if task == "lambada_openai":
        return _jsonl(data / "lambada/lambada_test.jsonl")[:K]
    raise KeyError(task)


@pytest.mark.parametrize("task", [t for t in OFFICIAL if t != "hellaswag"])
def test_pack_renders_the_requests_of_lm_evals_own_task(task, shared_data, tmp_path):
    theirs = requests_of(official_task(task, hub_rows(task, shared_data), tmp_path), K)
    ours = requests_of(load_pack_task(task, shared_data), K)
    assert len(theirs) == K and ours == theirs


# HellaSwag: the local copy is not in the raw form (ctx_a and ctx_b are joined), so the raw
# documents here are written out, and the local 6-line file is made from them the way the
# shared copy was: "activity_label: ctx_a ctx_b" with ctx_b as it is.
RAW_HELLASWAG = [
    {"activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow covering the window.",
     "ctx_b": "", "endings": ["a man is seen", "the man [header] continues", "he stops.", "it  ends."], "label": "3"},
    {"activity_label": "Baking cookies", "ctx_a": "A woman mixes the dough [title] Preheat the oven.",
     "ctx_b": "She", "endings": [" bakes them.", "eats  them [step] fast", "leaves.", "sings."], "label": "0"},
    {"activity_label": "Walking the dog", "ctx_a": "A boy walks a dog down the street.",
     "ctx_b": "the dog barks at A Cat", "endings": ["and runs.", "and sits.", "and sleeps.", "and eats."],
     "label": "1"},
]


def test_hellaswag_matches_lm_eval_except_ctx_b_capitalisation(tmp_path):
    from lm_eval.tasks.hellaswag.utils import preprocess

    raw = [{"ind": i, "ctx": d["ctx_a"] + " " + d["ctx_b"], "source_id": "x", "split": "val", "split_type": "indomain",
            **d} for i, d in enumerate(RAW_HELLASWAG)]
    theirs = requests_of(official_task("hellaswag", raw, tmp_path), None)
    local = tmp_path / "data"
    (local / "hellaswag").mkdir(parents=True)
    lines = []
    for d in RAW_HELLASWAG:
        lines += [f"{d['activity_label']}: {d['ctx_a']} {d['ctx_b']}", d["label"], *d["endings"]]
    (local / "hellaswag/hellaswag_val_full.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ours = requests_of(load_pack_task("hellaswag", local), None)
    assert len(ours) == len(theirs) == len(RAW_HELLASWAG)
    for doc, mine, lm in zip(RAW_HELLASWAG, ours, theirs):
        if doc["ctx_b"] == doc["ctx_b"].capitalize():  # nothing to capitalise: identical requests
            assert mine == lm
        else:  # the one remaining difference: ctx_b's case, which needs the raw split
            assert [c for _, c in mine] == [c for _, c in lm]
            assert mine[0][0] != lm[0][0] and mine[0][0].lower() == lm[0][0].lower()
    # our re-applied cleaning is lm-eval's preprocess
    from replaceme.evaluation.tasks.utils import hellaswag_preprocess

    for text in ("a [title] b", "x [step] y  z", "  plain  ", "[header] Two  spaces  here"):
        assert hellaswag_preprocess(text) == preprocess(text)


def test_hellaswag_shared_copy_is_cleaned_like_lm_eval(shared_data):
    from lm_eval.tasks.hellaswag.utils import preprocess

    from replaceme.evaluation.tasks.utils import load_hellaswag

    docs = load_hellaswag(task_data=str(shared_data))["validation"]
    assert not [d for d in docs if "[" in d["query"] or "  " in d["query"]]  # the 14 leftover spans are gone
    assert all(preprocess(d["query"]) == d["query"] for d in docs.select(range(200)))
