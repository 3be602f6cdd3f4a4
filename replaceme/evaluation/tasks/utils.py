"""Loaders and prompt helpers for the offline task pack (used from the YAML files).

Every loader is an lm-eval ``custom_dataset`` hook: lm-eval calls it with the
task's ``metadata`` (where ``task_data`` arrives, from
``TaskManager(metadata={"task_data": DIR})`` or ``lm_eval --metadata``) and its
``dataset_kwargs`` (the file names, relative to the data directory), and it
returns a :class:`datasets.DatasetDict` with one split, ``validation``.

The rows carry the field names of the hub datasets that lm-eval's own tasks
read (``passage``/``question``/``label`` for BoolQ, ``goal``/``sol1``/``sol2``
for PIQA, ...), so the YAML prompts are the same templates as lm-eval's.

This module is also loaded by lm-eval from its file path (``!function
utils.load_boolq``), so it keeps no state and imports nothing heavy at import
time.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from replaceme.errors import ReplacemeError

#: Environment variable naming the data directory when none is passed.
DATA_ENV = "REPLACEME_TASK_DATA"
#: The one split every loader returns (the YAMLs evaluate on it).
SPLIT = "validation"


def resolve_data_dir(task_data: str | os.PathLike | None = None) -> Path:
    """The task data directory: ``task_data``, else ``$REPLACEME_TASK_DATA``.

    Raises:
        ReplacemeError: when neither is set, or the directory does not exist.
    """
    value = task_data or os.environ.get(DATA_ENV)
    if not value:
        raise ReplacemeError(
            "the offline task pack needs its data directory: pass --task-data DIR "
            f"(or task_data=DIR, or set {DATA_ENV}=DIR)"
        )
    path = Path(value).expanduser()
    if not path.is_dir():
        raise ReplacemeError(f"task data directory not found: {path}")
    return path


def data_file(task_data: str | os.PathLike | None, relative: str) -> Path:
    """``relative`` inside the data directory; a one-line error when it is missing."""
    path = resolve_data_dir(task_data) / relative
    if not path.is_file():
        raise ReplacemeError(f"task data file not found: {path} (expected layout: see replaceme.evaluation.tasks)")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file (blank lines skipped)."""
    rows = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ReplacemeError(f"{path}:{number}: invalid JSON ({exc.msg})") from exc
    return rows


def _dataset(rows: list[dict[str, Any]], path: Path):
    import datasets

    if not rows:
        raise ReplacemeError(f"no rows in task data file {path}")
    return datasets.DatasetDict({SPLIT: datasets.Dataset.from_list(rows)})


def _require(row: dict[str, Any], keys: tuple[str, ...], path: Path, number: int) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise ReplacemeError(f"{path}: row {number} lacks {', '.join(missing)}")


# ----------------------------------------------------------------------------- loaders


def load_boolq(task_data: str | None = None, file: str = "boolq/dev.jsonl", **_: Any):
    """BoolQ dev in its original format ``{question, title, answer, passage}``.

    Rows: ``passage``, ``question``, ``label`` (1 = yes/true), as super_glue's,
    whose passage (what lm-eval's ``boolq`` reads) is ``"<title> -- <passage>"``
    when the row has a title.
    """
    path = data_file(task_data, file)
    rows = []
    for number, row in enumerate(read_jsonl(path), 1):
        _require(row, ("passage", "question", "answer"), path, number)
        passage = f"{row['title']} -- {row['passage']}" if row.get("title") else row["passage"]
        rows.append({"passage": passage, "question": row["question"], "label": int(bool(row["answer"]))})
    return _dataset(rows, path)


def load_piqa(
    task_data: str | None = None,
    file: str = "piqa/valid.jsonl",
    labels: str = "piqa/valid-labels.lst",
    **_: Any,
):
    """PIQA validation ``{goal, sol1, sol2}`` plus labels from a separate file (one per line)."""
    path = data_file(task_data, file)
    label_path = data_file(task_data, labels)
    docs = read_jsonl(path)
    golds = [line.strip() for line in label_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(golds) != len(docs):
        raise ReplacemeError(f"{label_path}: {len(golds)} labels for {len(docs)} questions in {path}")
    rows = []
    for number, (row, gold) in enumerate(zip(docs, golds), 1):
        _require(row, ("goal", "sol1", "sol2"), path, number)
        rows.append({"goal": row["goal"], "sol1": row["sol1"], "sol2": row["sol2"], "label": int(gold)})
    return _dataset(rows, path)


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's HellaSwag text cleaning (``lm_eval/tasks/hellaswag/utils.py``: ``preprocess``).

    Strip, turn WikiHow's `` [title]`` into ``". "``, drop other ``[...]`` spans,
    and replace double spaces once.
    """
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def load_hellaswag(task_data: str | None = None, file: str = "hellaswag/hellaswag_val_full.txt", **_: Any):
    """HellaSwag validation, 6 lines per item: query, gold index, 4 endings.

    lm-eval's ``process_docs`` builds ``preprocess(activity_label + ": " + ctx_a
    + " " + ctx_b.capitalize())``. The local copy has ``activity_label: ctx_a
    ctx_b`` already joined and mostly cleaned; :func:`hellaswag_preprocess` is
    applied again to the query and every ending, which removes the ``[...]``
    spans and double spaces some items keep. What remains different: ctx_b is
    not capitalised (``str.capitalize`` also lower-cases the rest of ctx_b), which
    needs the raw split's separate ctx_a and ctx_b. Rows: ``query``,
    ``choices``, ``label``.
    """
    path = data_file(task_data, file)
    lines = path.read_text(encoding="utf-8").split("\n")
    while lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise ReplacemeError(f"{path}: {len(lines)} lines is not a multiple of 6 (query, label, 4 endings)")
    rows = []
    for start in range(0, len(lines), 6):
        query, label, *endings = lines[start : start + 6]
        if not label.strip().isdigit():
            raise ReplacemeError(f"{path}:{start + 2}: expected a label index, got {label!r}")
        rows.append({"query": hellaswag_preprocess(query), "choices": [hellaswag_preprocess(e) for e in endings],
                     "label": int(label)})
    return _dataset(rows, path)


def _mc_rows(path: Path) -> list[dict[str, Any]]:
    """Rows ``{query, choices, gold}`` of a ``*.mc.jsonl`` file, checked."""
    rows = read_jsonl(path)
    for number, row in enumerate(rows, 1):
        _require(row, ("query", "choices", "gold"), path, number)
        if not 0 <= int(row["gold"]) < len(row["choices"]):
            count = len(row["choices"])
            raise ReplacemeError(f"{path}: row {number}: gold {row['gold']} is not one of {count} choices")
    return rows


def load_arc(task_data: str | None = None, file: str = "mc/ARC-Easy.mc.jsonl", **_: Any):
    """ARC (Easy or Challenge) as ``question``, ``choices``, ``gold``."""
    path = data_file(task_data, file)
    rows = [{"question": r["query"], "choices": list(r["choices"]), "gold": int(r["gold"])} for r in _mc_rows(path)]
    return _dataset(rows, path)


def load_openbookqa(task_data: str | None = None, file: str = "mc/openbookqa.mc.jsonl", **_: Any):
    """OpenBookQA as ``question_stem``, ``choices``, ``gold``."""
    path = data_file(task_data, file)
    rows = [
        {"question_stem": r["query"], "choices": list(r["choices"]), "gold": int(r["gold"])} for r in _mc_rows(path)
    ]
    return _dataset(rows, path)


def load_sciq(task_data: str | None = None, file: str = "mc/sciq.mc.jsonl", **_: Any):
    """SciQ as ``support``, ``question``, ``choices``, ``gold``.

    Choices are ordered as lm-eval's ``sciq`` orders them, ``[distractor1,
    distractor2, distractor3, correct_answer]``: the local file's other choices
    in their order, then the correct one, so ``gold`` is always the last index
    (this matters when scores tie: argmax takes the first). The local copy
    lacks the support paragraph, so ``support`` is empty unless a row carries
    one: scores are not comparable with published SciQ numbers.
    """
    path = data_file(task_data, file)
    rows = []
    for r in _mc_rows(path):
        gold = int(r["gold"])
        choices = [c for i, c in enumerate(r["choices"]) if i != gold] + [r["choices"][gold]]
        rows.append({"support": r.get("support", ""), "question": r["query"], "choices": choices,
                     "gold": len(choices) - 1})
    return _dataset(rows, path)


def load_winogrande(task_data: str | None = None, file: str = "mc/winogrande.mc.jsonl", **_: Any):
    """Winogrande (XL validation) as ``sentence``, ``option1``, ``option2``, ``answer`` ("1"/"2")."""
    path = data_file(task_data, file)
    rows = []
    for number, r in enumerate(_mc_rows(path), 1):
        if len(r["choices"]) != 2 or "_" not in r["query"]:
            raise ReplacemeError(f"{path}: row {number} needs two choices and a '_' blank")
        option1, option2 = r["choices"]
        rows.append({"sentence": r["query"], "option1": option1, "option2": option2, "answer": str(int(r["gold"]) + 1)})
    return _dataset(rows, path)


def load_lambada(task_data: str | None = None, file: str = "lambada/lambada_test.jsonl", **_: Any):
    """LAMBADA (OpenAI version) as ``text``."""
    path = data_file(task_data, file)
    rows = []
    for number, row in enumerate(read_jsonl(path), 1):
        _require(row, ("text",), path, number)
        rows.append({"text": row["text"]})
    return _dataset(rows, path)


# ----------------------------------------------------------------------------- Winogrande prompts
# Partial evaluation (as lm-eval's winogrande): one context per option (the
# sentence up to the blank, with the option filled in), one shared
# continuation (the rest of the sentence); the model picks the context under
# which the continuation is most likely.


def winogrande_gold(doc: dict[str, Any]) -> int:
    """``doc_to_text``: the gold option's index (an int marks multiple inputs in lm-eval)."""
    return {"1": 0, "2": 1}[doc["answer"]]


def winogrande_continuation(doc: dict[str, Any]) -> str:
    """``doc_to_target``: the sentence after the blank, stripped."""
    blank = doc["sentence"].index("_")
    return doc["sentence"][blank + 1 :].strip()


def winogrande_contexts(doc: dict[str, Any]) -> list[str]:
    """``doc_to_choice``: the sentence up to the blank with each option filled in."""
    blank = doc["sentence"].index("_")
    return [doc["sentence"][:blank] + option for option in (doc["option1"], doc["option2"])]
