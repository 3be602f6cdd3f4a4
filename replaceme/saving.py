"""Writing a pruned model: ``replaceme.save_pruned`` (the model directory, ``pruning.json``,
the model card, the source's tokenizer files and, on request, the transforms)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from replaceme.api import PruneResult


#: files of a source model directory that belong to its tokenizer (copied when save_pretrained did not write them)
TOKENIZER_FILES = ("tokenizer*", "*.model", "vocab.*", "merges.txt", "special_tokens_map.json", "added_tokens.json",
                   "chat_template*", "*.tiktoken", "spiece*", "sentencepiece*")


def copy_tokenizer_files(source: str | Path | None, target: Path) -> list[str]:
    """Copy every tokenizer file of a local ``source`` directory missing from ``target``."""
    import fnmatch
    import shutil

    if source is None or not Path(source).expanduser().is_dir():
        return []
    copied = []
    for path in sorted(Path(source).expanduser().iterdir()):
        if path.is_file() and any(fnmatch.fnmatch(path.name, p) for p in TOKENIZER_FILES) and not (target / path.name).exists():
            shutil.copyfile(path, target / path.name)
            copied.append(path.name)
    return copied


def save_pruned(result: PruneResult, output: str | Path, *, overwrite: bool = False, extra: dict[str, Any] | None = None,
                save_transforms: bool = False) -> Path:
    """Write the pruned model as a standard model directory plus ``pruning.json`` and a
    model card (``README.md``, see :mod:`replaceme.model_card`); with ``save_transforms``
    also the estimated maps and removed blocks as ``transforms.safetensors``
    (layout in :mod:`replaceme.transforms`).

    The directory appears only once complete (written beside it under a name
    unique to the run, then renamed). An existing one is replaced only with
    ``overwrite`` and only when replaceme wrote it (see :mod:`replaceme.outputs`);
    the source model and the calibration file are never written. Tokenizer files
    of the source that ``save_pretrained`` does not write (``tokenizer.model``, ...)
    are copied.
    """
    from replaceme import model_card
    from replaceme.loading import local_model_dir
    from replaceme.outputs import atomic_directory, write_json_atomic

    output = Path(output).expanduser()
    source_dir = local_model_dir(result.source) if result.source else None
    inputs = [source_dir, result.calibration.text_source.base if result.calibration else None]
    with atomic_directory(output, overwrite=overwrite, inputs=inputs, marker=("pruning.json", "pruned-model")) as tmp:
        if result.offloaded is not None:
            result.offloaded.save(tmp)
        else:
            result.model.save_pretrained(tmp, safe_serialization=True)
        if result.tokenizer is not None:
            result.tokenizer.save_pretrained(tmp)
        copy_tokenizer_files(source_dir, tmp)
        if save_transforms:
            from replaceme.transforms import TRANSFORMS_FILE, write_transforms

            write_transforms(tmp, result.plan.blocks, result.outcome.compensations)
        meta = {**result.metadata(), **(extra or {})}
        if save_transforms:
            meta["transforms_file"] = TRANSFORMS_FILE
        meta.setdefault("source_license", model_card.source_license(result.source))
        meta.setdefault("output", str(output))
        meta.setdefault("output_name", output.name)
        write_json_atomic(tmp / "pruning.json", meta)
        model_card.write(tmp, meta)
    return output
