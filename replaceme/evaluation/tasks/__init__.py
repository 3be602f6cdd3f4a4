"""The offline task pack: lm-eval YAML tasks over local copies of nine benchmarks.

The tasks have lm-eval's own names, prompts and metrics (``boolq``, ``piqa``,
``hellaswag``, ``arc_easy``, ``arc_challenge``, ``openbookqa``, ``winogrande``,
``sciq``, ``lambada_openai``), but read their documents from a local *data
directory* instead of the Hugging Face hub. The directory is never baked in:
it is passed at run time as lm-eval task metadata ``task_data`` (what
``replaceme evaluate --task-data DIR`` does), or read from the environment
variable ``REPLACEME_TASK_DATA``. Expected layout (the files' original formats)::

    DIR/boolq/dev.jsonl                      {question, title, answer, passage}
    DIR/piqa/valid.jsonl                     {goal, sol1, sol2}
    DIR/piqa/valid-labels.lst                one label (0/1) per line
    DIR/hellaswag/hellaswag_val_full.txt     6 lines per item: "activity_label: ctx_a ctx_b" (joined, ctx_b
                                             not capitalised, partly cleaned), gold, 4 endings
    DIR/mc/ARC-Easy.mc.jsonl                 {query, choices, gold}
    DIR/mc/ARC-Challenge.mc.jsonl            (same)
    DIR/mc/openbookqa.mc.jsonl               (same)
    DIR/mc/winogrande.mc.jsonl               (same; "_" marks the blank)
    DIR/mc/sciq.mc.jsonl                     (same; no support paragraph)
    DIR/lambada/lambada_test.jsonl           {text}

Requests are lm-eval's own (tested: for every task, lm-eval's installed task YAML
is built over the same documents and renders the same contexts and continuations).
To get there the loaders rebuild what lm-eval's datasets hold: BoolQ's passage is
super_glue's ``"title -- passage"``; SciQ's choices are ordered ``[distractor1,
distractor2, distractor3, correct_answer]``; HellaSwag gets lm-eval's
``preprocess`` again (removing the ``[...]`` spans and double spaces that 14
items of the local copy keep).

Differences that remain, all forced by the local copies: HellaSwag's ctx_b is not
capitalised as lm-eval's ``process_docs`` does (``ctx_b.capitalize()``), since the
local file joins ctx_a and ctx_b and capitalising needs the raw split; each task
has one split (named ``validation``), so few-shot examples are drawn from that same
split (never the document being evaluated) rather than from a train split; and
SciQ has no support paragraph.

Because the names equal lm-eval's, replaceme loads the pack with its own
``TaskManager(include_path=PACK_DIR, include_defaults=False)``, apart from
lm-eval's registry, so nothing is shadowed. With plain lm-eval the pack can be
used as ``lm_eval --include_path <PACK_DIR> --tasks boolq --metadata
'{"task_data": "DIR"}'``; there it overrides the built-in tasks of the same
names (lm-eval logs a warning saying so).
"""

from __future__ import annotations

from pathlib import Path

from replaceme.evaluation.tasks.utils import DATA_ENV, resolve_data_dir

#: Directory holding the YAML files (give it to lm-eval as ``include_path``).
PACK_DIR = Path(__file__).resolve().parent

#: Task names in the pack.
PACK_TASKS: tuple[str, ...] = (
    "boolq",
    "piqa",
    "hellaswag",
    "arc_easy",
    "arc_challenge",
    "openbookqa",
    "winogrande",
    "sciq",
    "lambada_openai",
)

__all__ = ["DATA_ENV", "PACK_DIR", "PACK_TASKS", "resolve_data_dir"]
