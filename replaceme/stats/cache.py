"""On-disk cache of the shared statistics pass.

The key hashes the model fingerprint, the calibration spec, the request and the
pass options, so a second run with the same inputs skips the pass. Files hold
only tensors and plain containers and are read with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from replaceme.cache_location import cache_dir
from replaceme.errors import first_line
from replaceme.stats.fit import misfit
from replaceme.stats.request import StatsRequest
from replaceme.stats.store import ActivationSample, ActivationStats, BatchActivations, GramKey, GramSums

log = logging.getLogger(__name__)
#: the layout of a cache file; a file of another version is recomputed (4: typed Gram keys, 5: held-out count)
FORMAT_VERSION = 5


def model_fingerprint(model: Any) -> str:
    """A cheap, content-based fingerprint: config plus a strided digest of every parameter."""
    h = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        probe = flat[::step][:4096].to("cpu", torch.float64)
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(probe.numpy().tobytes())
        h.update(repr(_float64_sum(flat)).encode())
    return h.hexdigest()[:24]


def _float64_sum(flat: torch.Tensor, chunk: int = 1 << 20) -> float:
    """Sum of a 1-D tensor in float64, a chunk at a time (no float64 copy of the whole
    tensor: 262 MB for a 32,000 × 1,024 float32 embedding)."""
    total = torch.zeros((), dtype=torch.float64, device=flat.device)
    for part in flat.split(chunk):
        total += part.to(torch.float64).sum()
    return float(total)


def cache_key(parts: dict[str, Any]) -> str:
    blob = json.dumps({"format": FORMAT_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _batch_to_dict(b: BatchActivations) -> dict[str, Any]:
    return {"mask": b.mask, "input_ids": b.input_ids, "boundaries": b.boundaries, "mlp": b.mlp, "layer_kwargs": b.layer_kwargs}


def _stats_to_dict(stats: ActivationStats) -> dict[str, Any]:
    return {
        "num_layers": stats.num_layers,
        "hidden_size": stats.hidden_size,
        "angular": stats.angular,
        "token_cosine": stats.token_cosine,
        "gram": [[list(k), g.xtx, g.xty, g.yty, g.tokens] for k, g in stats.gram.items()],
        "train": [_batch_to_dict(b) for b in stats.sample.train],
        "holdout": [_batch_to_dict(b) for b in stats.sample.holdout],
        "sequences": stats.sequences,
        "tokens": stats.tokens,
        "seconds": stats.seconds,
        "holdout_batches": stats.holdout_batches,
        "holdout_tokens": stats.holdout_tokens,
    }


def _stats_from_dict(d: dict[str, Any]) -> ActivationStats:
    return ActivationStats(
        num_layers=d["num_layers"],
        hidden_size=d["hidden_size"],
        angular=d["angular"],
        token_cosine=d["token_cosine"],
        gram={GramKey(*k): GramSums(xtx, xty, yty, tokens) for k, xtx, xty, yty, tokens in d["gram"]},
        sample=ActivationSample(
            train=[BatchActivations(**b) for b in d["train"]],
            holdout=[BatchActivations(**b) for b in d["holdout"]],
        ),
        sequences=d["sequences"],
        tokens=d["tokens"],
        seconds=d["seconds"],
        holdout_batches=d["holdout_batches"],
        holdout_tokens=d["holdout_tokens"],
    )


def cache_path(key: str) -> Path:
    return cache_dir("stats", f"{key}.pt")


def load_cached(key: str, model_shape: tuple[int, int] | None = None,
                request: StatsRequest | None = None) -> ActivationStats | None:
    """The cached stats for ``key``, or None.

    A file is used only when it records this ``key`` and this :data:`FORMAT_VERSION`
    (a file copied from another run, or written by another version, is not) and,
    given ``model_shape`` = ``(layers, hidden size)`` of the model at hand, only when
    its statistics fit that model and ``request`` (:func:`replaceme.stats.fit.misfit`:
    a shared cache folder must not let one model's statistics steer another's prune).
    A mismatch, a corrupt file or an unreadable location is a warning and the
    statistics are recomputed.
    """
    path = cache_path(key)
    try:
        if not path.is_file():
            return None
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file, an unreadable folder: recompute
        log.warning("ignoring unreadable statistics cache %s (%s); recomputing", path, first_line(exc))
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION or data.get("key") != key:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        log.warning("ignoring statistics cache %s: it was written for another key or version (%s); recomputing",
                    path, found)
        return None
    try:
        stats = _stats_from_dict(data["stats"])
    except Exception as exc:  # the right key, but not the structure this version writes
        log.warning("ignoring malformed statistics cache %s (%s); recomputing", path, first_line(exc))
        return None
    problem = misfit(stats, *model_shape, request) if model_shape is not None else None
    if problem:
        log.warning("ignoring statistics cache %s: it does not fit this model (%s); recomputing", path, problem)
        return None
    return stats


def save_cached(key: str, stats: ActivationStats) -> Path | None:
    """Write stats atomically; returns the path, or None (with a warning) when they cannot be stored."""
    from replaceme.outputs import atomic_file
    from replaceme.outputs.runs import clean_stale_runs

    path = cache_path(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_runs(path.parent)  # cache writes of killed runs
        with atomic_file(path) as tmp:
            torch.save({"format": FORMAT_VERSION, "key": key, "stats": _stats_to_dict(stats)}, tmp)
    except Exception as exc:  # a read-only or full disk, a file where the folder should be, ...
        log.warning("cannot cache statistics in %s (%s); going on without the cache", path.parent, first_line(exc))
        return None
    return path


