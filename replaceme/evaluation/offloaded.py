"""Perplexity of a model that is never whole in memory (``--offload``).

The windows of a source are batched exactly as in memory
(:mod:`replaceme.evaluation.perplexity`); all batches then go through the
layer-by-layer engine (:func:`replaceme.offload.engine.stream`) together, each
layer read once, the hidden states of every batch waiting between layers in
files; finally the LM head (read from the checkpoint for the duration) scores
one batch at a time with the same code as in memory (:func:`batch_nll`), so the
numbers equal the in-memory path's up to float summation order. When the hidden
states of all batches would exceed the disk budget, the batches go in groups, one
sweep over the layers each (:mod:`replaceme.offload.budget`).

lm-eval tasks go the same way through :mod:`replaceme.evaluation.offloaded_lm`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from replaceme.evaluation.perplexity import WindowBatch, batch_nll
from replaceme.offload.engine import Window, model_outputs, stream
from replaceme.offload.skeleton import OffloadedModel
from replaceme.offload.window import DiskStore


def final_states(offloaded: OffloadedModel, model: Any, batches: Sequence[tuple[torch.Tensor, Any]], store: Any,
                 description: str | None) -> Window:
    """Run ``batches`` (``(input_ids, mask)``) through every layer of ``model`` (the
    skeleton or a variant); the returned window holds each batch's last-layer output."""
    feed = Window(store)
    stream(offloaded, model, batches, feed, description=description)
    return feed


def window_bytes(offloaded: OffloadedModel, model: Any, input_ids: Sequence[torch.Tensor]) -> list[int]:
    """Bytes each batch keeps on disk between layers (one boundary: the current hidden states)."""
    element = torch.empty((), dtype=offloaded.dtype).element_size()
    return [ids.numel() * int(model.config.hidden_size) * element for ids in input_ids]


def offloaded_scorer(offloaded: OffloadedModel, model: Any, window_dir: str | Path | None = None):
    """A ``scorer`` for :func:`replaceme.evaluation.perplexity.perplexity` that runs
    ``model`` (the skeleton or a variant of it) layer by layer."""

    def scorer(batches: Sequence[WindowBatch], description: str) -> Iterator[tuple[float, int] | None]:
        device = offloaded.device
        for group in offloaded.window_groups(window_bytes(offloaded, model, [ids for ids, _, _ in batches]),
                                             "evaluation", window_dir):
            chosen = [batches[k] for k in group]
            with DiskStore(window_dir) as store:
                window = final_states(offloaded, model, [(ids, mask) for ids, mask, _ in chosen], store, description)
                with offloaded.output_head(model):
                    for b, (ids, mask, targets) in enumerate(chosen):
                        x = window.output(b, device)
                        mask = mask.to(device)

                        def forward(rows: slice, x=x, mask=mask, **kwargs: Any) -> torch.Tensor:
                            return model_outputs(offloaded, model, x[rows], mask[rows].long(), **kwargs).logits

                        try:
                            yield batch_nll(model, ids.to(device), mask, targets.to(device), forward)
                        except FloatingPointError:
                            yield None
                        del x

    return scorer
