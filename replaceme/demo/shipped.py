"""The demo model's trained weights, shipped inside the package.

Training the demo model takes minutes, and the weights it reaches depend on the
torch/transformers versions and the CPU's rounding, so the numbers a newcomer
sees would drift from the README's. The package therefore carries one build of
the default :class:`~replaceme.demo.train.Recipe`, made by our own training
code (:func:`replaceme.demo.subject.build`), in ``replaceme/demo/weights/``::

    config.json, generation_config.json, model.safetensors   # LlamaForCausalLM
    tokenizer.json, tokenizer_config.json                    # word-level fast tokenizer
    calibration.txt, validation.txt                          # held-out documents
    demo.json                                                # the recipe, versions, build statistics
    README.md                                                # what the model is
    SHA256SUMS                                               # sha256 of every file above

``replaceme compare`` with no model uses that folder directly (after checking
the checksums), so it starts at once. ``python -m replaceme.demo --retrain``
trains the recipe again and says how close the fresh weights are to the
shipped ones; ``--write`` then replaces the shipped files (maintainers only).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from replaceme.errors import ReplacemeError

#: Where the shipped build lies inside the package.
SHIPPED_DIR = Path(__file__).resolve().with_name("weights")
CHECKSUM_FILE = "SHA256SUMS"
#: The files of a demo build that are shipped (everything :func:`subject.build` writes).
SHIPPED_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "calibration.txt",
    "validation.txt",
    "demo.json",
    "README.md",
)


def sha256(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_checksums(directory: str | os.PathLike[str] = SHIPPED_DIR) -> dict[str, str]:
    """``{file name: sha256}`` from a folder's ``SHA256SUMS`` (``sha256sum`` format)."""
    path = Path(directory) / CHECKSUM_FILE
    sums: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            sums[name.lstrip("*")] = digest
    return sums


def write_checksums(directory: str | os.PathLike[str]) -> dict[str, str]:
    """Write ``SHA256SUMS`` for the shipped files of ``directory`` (checkable with ``sha256sum -c``)."""
    directory = Path(directory)
    sums = {name: sha256(directory / name) for name in SHIPPED_FILES}
    text = "".join(f"{digest}  {name}\n" for name, digest in sums.items())
    (directory / CHECKSUM_FILE).write_text(text, encoding="utf-8")
    return sums


def checksum_problems(directory: str | os.PathLike[str] = SHIPPED_DIR) -> list[str]:
    """What is wrong with a shipped folder: missing files or checksum mismatches (empty if sound)."""
    directory = Path(directory)
    if not (directory / CHECKSUM_FILE).is_file():
        return [f"{CHECKSUM_FILE} is missing"]
    sums = read_checksums(directory)
    problems = [f"{name} is not listed in {CHECKSUM_FILE}" for name in SHIPPED_FILES if name not in sums]
    for name, digest in sums.items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif sha256(path) != digest:
            problems.append(f"{name} does not match its sha256")
    return problems


def shipped_info(directory: str | os.PathLike[str] = SHIPPED_DIR) -> dict[str, Any]:
    """The ``demo.json`` of the shipped build (recipe, versions, training summary)."""
    return json.loads((Path(directory) / "demo.json").read_text(encoding="utf-8"))


def shipped_model_dir() -> Path:
    """The shipped demo model folder, after checking its checksums.

    Raises :class:`ReplacemeError` (one line, with the remedy) if a file is
    missing or altered, e.g. by an install that left out package data.
    """
    problems = checksum_problems(SHIPPED_DIR)
    if problems:
        raise ReplacemeError(
            f"the shipped demo model in {SHIPPED_DIR} is damaged ({'; '.join(problems)}); "
            "reinstall replaceme, or train it again with `python -m replaceme.demo --retrain --write`"
        )
    return SHIPPED_DIR


def install(build_dir: str | os.PathLike[str], dest: str | os.PathLike[str] = SHIPPED_DIR) -> dict[str, str]:
    """Copy the shipped files of a finished build into ``dest`` and write their checksums."""
    build_dir, dest = Path(build_dir), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in SHIPPED_FILES:
        shutil.copyfile(build_dir / name, dest / name)
    return write_checksums(dest)


def compare_weights(a_dir: str | os.PathLike[str], b_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """How two builds' weights differ: identical bytes, largest absolute and relative difference."""
    from safetensors.torch import load_file

    a = load_file(Path(a_dir) / "model.safetensors")
    b = load_file(Path(b_dir) / "model.safetensors")
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        return {"identical": False, "same_layout": False}
    max_abs = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    max_rel = max(float((a[k].double() - b[k].double()).norm() / max(a[k].double().norm(), 1e-30)) for k in a)
    identical = sha256(Path(a_dir) / "model.safetensors") == sha256(Path(b_dir) / "model.safetensors")
    return {"identical": identical, "same_layout": True, "max_abs_diff": max_abs, "max_rel_diff": max_rel}
