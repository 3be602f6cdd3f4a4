"""The embedded demo subject: a small causal LM trained by replaceme's own code.

``replaceme compare`` with no model (or ``--model demo``) prunes this model, so
the tool can be tried offline, with nothing to download, and still show real
differences between pruning methods.

The model is a standard Hugging Face ``LlamaForCausalLM`` (8 decoder layers,
hidden size 64) with a word-level fast tokenizer, trained from scratch in about
two minutes on two CPU cores, deterministically, on a synthetic language the
project generates (:mod:`replaceme.demo.corpus`): short stories with
characters, agreement across relative clauses, questions about the characters,
nested brackets, copy/reverse, counting and sums. In its short training it
learns the local part of that structure, and every layer is used: removing
layers clearly hurts perplexity and a linear compensation has something to
recover. The trained weights of the default recipe ship with the package
(:mod:`~replaceme.demo.shipped`, checked against their sha256 on use); other
recipes, and retraining, are built on first use and cached
(:func:`demo_model_dir`; ``$REPLACEME_CACHE``, else ``$XDG_CACHE_HOME/replaceme``,
else ``~/.cache/replaceme``). ``python -m replaceme.demo --retrain --verify``
trains the default recipe again and compares it with the shipped weights.

It is *not* a model of any real language: it knows nothing, cannot follow
instructions, scores at chance on lm-eval tasks, and how it reacts to pruning
says nothing about real LLMs. See :func:`describe` for the user-facing text.

Importing this package is light: torch and transformers are imported only when
a model is built.

Modules: :mod:`~replaceme.demo.corpus` (the language),
:mod:`~replaceme.demo.tokenizer`, :mod:`~replaceme.demo.train` (recipe and
training loop), :mod:`~replaceme.demo.subject` (build and cache),
:mod:`~replaceme.demo.shipped` (the shipped weights and their checksums).
"""

from __future__ import annotations

from replaceme.demo.subject import (
    CALIBRATION_FILE,
    DEMO_NAME,
    RECIPE_VERSION,
    VALIDATION_FILE,
    build,
    cache_root,
    demo_data_files,
    demo_info,
    demo_model_dir,
    describe,
    is_demo,
)
from replaceme.demo.train import Recipe

__all__ = [
    "CALIBRATION_FILE",
    "DEMO_NAME",
    "RECIPE_VERSION",
    "VALIDATION_FILE",
    "Recipe",
    "build",
    "cache_root",
    "demo_data_files",
    "demo_info",
    "demo_model_dir",
    "describe",
    "is_demo",
]
