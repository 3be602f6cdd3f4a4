"""The demo subject: build the demo model once, cache it, hand out its directory.

``demo_model_dir()`` returns a directory that any Hugging Face code can load:
for the default recipe, the trained build shipped inside the package
(:mod:`replaceme.demo.shipped`); for any other recipe (tests use tiny ones) or
on request (``rebuild=True``), a build trained and cached on first use::

    <cache>/demo-v<N>[-<recipe hash>]/
        config.json, generation_config.json, model.safetensors   # LlamaForCausalLM
        tokenizer.json, tokenizer_config.json                    # word-level fast tokenizer
        calibration.txt, validation.txt   # held-out documents, one per blank-line-separated record
        README.md                         # describe() plus the numbers of this build
        demo.json                         # recipe, versions and build statistics

The cache root is ``$REPLACEME_CACHE``, else ``$XDG_CACHE_HOME/replaceme``, else
``~/.cache/replaceme``. The build goes into a temporary directory next to the
final one and is renamed into place only when complete, under a file lock, so
an interrupted build never leaves a half-written model and two processes never
build the same model at the same time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from replaceme import cache_location
from replaceme.demo.corpus import CORPUS_VERSION
from replaceme.demo.train import Recipe
from replaceme.errors import ReplacemeError
from replaceme.outputs import atomic_directory

log = logging.getLogger(__name__)

#: The model argument that selects the demo model (also the default).
DEMO_NAME = "demo"
#: Bump whenever the default recipe, the corpus or the tokenizer changes.
RECIPE_VERSION = 2
CALIBRATION_FILE = "calibration.txt"
VALIDATION_FILE = "validation.txt"
INFO_FILE = "demo.json"


def is_demo(model_arg: str | os.PathLike[str] | None) -> bool:
    """Whether a ``--model`` value means the demo model: missing, empty or ``"demo"``.

    A local directory that happens to be called ``demo`` is reached as ``./demo``.
    """
    if model_arg is None:
        return True
    text = os.fspath(model_arg).strip()
    return text == "" or text.lower() == DEMO_NAME


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where replaceme caches things: ``cache_dir`` if given, else from the environment
    (:func:`replaceme.cache_location.cache_dir`)."""
    return cache_location.cache_dir(root=cache_dir)


def recipe_key(recipe: Recipe | None = None) -> str:
    """The cache folder name: ``demo-v<N>``, plus a hash for a non-default recipe."""
    recipe = recipe or Recipe()
    key = f"demo-v{RECIPE_VERSION}"
    if recipe != Recipe():
        blob = json.dumps(recipe.as_dict(), sort_keys=True).encode()
        key += "-" + hashlib.sha256(blob).hexdigest()[:10]
    return key


def describe(recipe: Recipe | None = None) -> str:
    """What the demo model is and is not, as Markdown (for the README and the model folder)."""
    r = recipe or Recipe()
    return f"""\
### The demo model

When no model is given (or `--model {DEMO_NAME}`), replaceme uses a small model
trained by its own code and shipped inside the package (`replaceme/demo/weights/`,
with the recipe in `demo.json` and a sha256 of every file in `SHA256SUMS`), so it
starts at once, offline, and gives the same numbers everywhere.
`python -m replaceme.demo --retrain --verify` trains the recipe again (a few
minutes on two CPU cores) and checks the result against the shipped weights.

**What it is.** A standard Hugging Face `LlamaForCausalLM` with {r.layers} decoder
layers (hidden size {r.hidden}, {r.heads} attention heads sharing {r.kv_heads} key/value
heads, MLP width {r.intermediate}, context {r.seq_len} tokens, {'tied' if r.tie_embeddings else 'untied'} embeddings), and a
word-level fast tokenizer (`<bos>` added in front of every text, `<pad>` for
batching). It is trained from scratch by replaceme's own code, deterministically
(fixed seeds; {r.steps} AdamW steps of {r.batch_size} x {r.seq_len} tokens, cosine
schedule), on a synthetic language that replaceme generates: short "stories" that
introduce three characters (name, role, object) and then mix grammatical sentences
with subject-verb agreement across relative clauses, questions about the
characters, nested brackets, copy and reverse tasks, counting and sums, and end by
listing the characters again. About half of the words are random choices, a third
are template words, and the rest are determined by context further back. In its
short training the model learns the templates and part of the brackets, counting
and sums, but not the long-range recall (which characters, copies) -- that would
take far longer training. The model directory also holds the held-out
`{CALIBRATION_FILE}` and `{VALIDATION_FILE}` documents (one per blank-line-separated
record), used as the default calibration and perplexity data.

**What it is for.** Trying replaceme without downloading anything, and seeing
pruning methods really differ: its layers are all in use, so removing any of them
raises perplexity (removing the first one destroys the model; removing two
consecutive later layers raises validation perplexity by roughly 15-45%), and a
linear compensation recovers part of that.

**What it is not.** It is not a language model of English or any real language,
knows nothing about the world, cannot follow instructions, and is far too small
for lm-eval benchmarks to mean anything (they will sit at chance). How its
perplexity reacts to pruning says nothing about how a real LLM would react; use
it for demonstrations and tests, and a real model for conclusions. Training runs
on one CPU thread, so retraining reproduces the weights for the same software
versions (other versions and CPUs round differently, which is why the trained
weights are shipped rather than rebuilt on each machine).
"""


def build(out_dir: str | os.PathLike[str], recipe: Recipe | None = None, **overrides: Any) -> dict[str, Any]:
    """Generate the corpus, train the model and write everything into ``out_dir``.

    ``overrides`` replace fields of ``recipe`` (e.g. ``steps=3, layers=2``).
    Returns the build information that is also written to ``demo.json``.
    Not atomic by itself; :func:`demo_model_dir` takes care of that.
    """
    import torch
    import transformers

    from replaceme.demo.corpus import generate_splits
    from replaceme.demo.tokenizer import build_tokenizer
    from replaceme.demo.train import train

    recipe = (recipe or Recipe()).replace(**overrides)
    started = time.monotonic()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    splits = generate_splits(
        {
            "train": recipe.train_docs,
            "calibration": recipe.calibration_docs,
            "validation": recipe.validation_docs,
        },
        seed=recipe.seed,
    )
    tokenizer = build_tokenizer(model_max_length=recipe.seq_len)
    model, summary = train(recipe, tokenizer, splits["train"], splits["validation"])

    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    for name, split in ((CALIBRATION_FILE, "calibration"), (VALIDATION_FILE, "validation")):
        (out / name).write_text("\n\n".join(splits[split]) + "\n", encoding="utf-8")
    info = {
        "name": DEMO_NAME,
        "recipe_version": RECIPE_VERSION,
        "corpus_version": CORPUS_VERSION,
        "recipe": recipe.as_dict(),
        "training": summary,
        "build_seconds": round(time.monotonic() - started, 1),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    readme = describe(recipe) + "\n### This build\n\n```json\n" + json.dumps(info, indent=2) + "\n```\n"
    (out / "README.md").write_text(readme, encoding="utf-8")
    # Written last: its presence marks a complete build.
    (out / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def is_complete(path: Path) -> bool:
    """Whether ``path`` holds a finished demo build."""
    return (path / INFO_FILE).is_file() and (path / "config.json").is_file()


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (a no-op where ``fcntl`` is missing)."""
    try:
        import fcntl
    except ImportError:  # Windows: the atomic rename below still keeps the cache sound
        yield
        return
    try:
        handle = open(lock_path, "a+")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise ReplacemeError(
            f"cannot write to the cache directory {lock_path.parent} ({exc.strerror or exc}); "
            "set REPLACEME_CACHE to a writable folder"
        ) from exc
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another process is building the demo model; waiting for it (lock %s)", lock_path)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def demo_model_dir(
    cache_dir: str | os.PathLike[str] | None = None,
    rebuild: bool = False,
    recipe: Recipe | None = None,
    **overrides: Any,
) -> Path:
    """The directory of the demo model.

    The default recipe's build ships with the package
    (:mod:`replaceme.demo.shipped`): its folder is returned at once, after its
    checksums are checked. Any other recipe, or ``rebuild=True``, is trained
    and cached (first use only).

    Args:
        cache_dir: cache root; default from :func:`cache_root`.
        rebuild: train again into the cache even when a copy exists (it is
            replaced only once the new build is complete); for the default
            recipe this bypasses the shipped weights.
        recipe, overrides: a non-default recipe (tests use tiny ones); it is
            cached under its own key.
    """
    recipe = (recipe or Recipe()).replace(**overrides)
    if not rebuild and recipe == Recipe():
        from replaceme.demo.shipped import shipped_model_dir

        path = shipped_model_dir()
        log.info("demo model (shipped with replaceme): %s", path)
        return path
    root = cache_root(cache_dir)
    key = recipe_key(recipe)
    final = root / key
    if not rebuild and is_complete(final):
        log.info("demo model: %s", final)
        return final
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReplacemeError(
            f"cannot create the cache directory {root} ({exc.strerror or exc}); set REPLACEME_CACHE to a writable folder"
        ) from exc

    with _locked(root / f".{key}.lock"):
        if not rebuild and is_complete(final):  # built by another process meanwhile
            log.info("demo model: %s", final)
            return final
        # We hold the lock, so leftovers of killed builds of this key are stale.
        for stale in root.glob(f".{key}.*.partial"):
            shutil.rmtree(stale, ignore_errors=True)
        log.info("building the demo model (first use; about 2 minutes) into %s", final)
        with atomic_directory(final, overwrite=True, checked=False) as tmp:  # our own cache
            info = build(tmp, recipe)
    log.info(
        "demo model built in %.0f s (validation perplexity %s): %s",
        info["build_seconds"],
        f"{info['training']['validation_ppl']:.3f}" if "validation_ppl" in info["training"] else "n/a",
        final,
    )
    return final


def demo_data_files(model_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """The held-out text files of a demo build: ``{"calibration": ..., "validation": ...}``."""
    model_dir = Path(model_dir)
    return {"calibration": model_dir / CALIBRATION_FILE, "validation": model_dir / VALIDATION_FILE}


def demo_info(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``demo.json`` of a demo build (recipe, versions, build statistics)."""
    return json.loads((Path(model_dir) / INFO_FILE).read_text(encoding="utf-8"))
