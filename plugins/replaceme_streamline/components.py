"""The ``trained-layer`` compensator and the ``write-layer`` merger of LLM-Streamline
(Chen et al., ICLR 2025, arXiv 2403.19135).

The compensator turns the shared-pass sample into training pairs
``(x_s, x_{s+k})`` for each window ``[s, s+k)`` and trains one replacement per
window with :mod:`replaceme_streamline.train`; the merger writes it into slot
``s`` and deletes the rest of the window.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from replaceme.components import (
    Compensation,
    CompensationContext,
    Compensator,
    Merger,
    NoCompensation,
    ReplacementLayer,
)
from replaceme.errors import ReplacemeError
from replaceme.options import option
from replaceme.plan import Block, Plan
from replaceme.stats.request import StatsRequest

log = logging.getLogger(__name__)


@dataclass
class TrainedLayerOptions:
    replacement: Literal["layer", "ffn"] = option(
        "layer",
        "what replaces the window of N+1 layers (net removal N): 'layer' = one decoder layer initialised "
        "from the window's first layer; 'ffn' = the same layer with its attention zeroed, i.e. "
        "x + MLP(norm(x)) initialised from that layer's MLP; it keeps the residual, unlike the paper's "
        "v1 FFN, because a standard layer cannot drop it (saved as a standard layer, no custom code)",
    )
    token_budget: int = option(
        65536, "non-pad calibration tokens of the shared-pass sample to train on (whole batches)"
    )
    epochs: int = option(1, "passes over the training batches (one optimiser step per calibration batch)")
    lr: float = option(2e-4, "peak AdamW learning rate (reference 2e-4)")
    min_lr: float = option(5e-5, "learning rate at the end of the cosine decay (reference 5e-5)")
    warmup: float = option(0.01, "fraction of steps with a linear warm-up before the cosine decay (reference 0.01)")
    weight_decay: float = option(1e-3, "AdamW weight decay (reference 1e-3)")
    grad_clip: float = option(5.0, "maximum gradient norm, 0 = off (reference 5)")
    micro_batch: int = option(0, "sequences per forward/backward, gradients accumulated over a batch (0 = whole batch)")
    eval_every: int = option(0, "also validate every N steps (0 = after each epoch only); the best weights are kept")
    val_fraction: float = option(
        0.1, "when the shared pass held no batches out, validate on this last fraction of the training batches"
    )

    def __post_init__(self) -> None:
        if self.token_budget < 1 or self.epochs < 1:
            raise ValueError("token_budget and epochs must be >= 1")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError("val_fraction must be in (0, 1)")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError("need 0 <= min_lr <= lr and lr > 0")


def split_validation(sample: Any, token_budget: int, val_fraction: float) -> tuple[list, list, str]:
    """Training and validation batches from the shared-pass sample.

    Returns:
        ``(train, validation, source)``: the held-out batches validate when there
        are any (``source = "holdout"``); else the last ``val_fraction`` of the
        budgeted training batches (``"train-tail"``); with a single batch it
        validates on the training batch itself (``"train"``, with a warning).
    """
    batches = sample.take(token_budget)
    if not batches:
        raise ReplacemeError("trained-layer: the statistics pass kept no activation sample")
    if sample.holdout:
        return batches, list(sample.holdout), "holdout"
    if len(batches) >= 2:
        count = min(len(batches) - 1, max(1, round(len(batches) * val_fraction)))
        return batches[:-count], batches[-count:], "train-tail"
    log.warning("trained-layer: a single calibration batch; validating on the training batch itself")
    return batches, batches, "train"


def pairs_for(batches: list, block: Block) -> list:
    """Training pairs ``x_s -> x_e`` for ``block = [s, e)``, with layer ``s``'s call kwargs."""
    from replaceme_streamline.train import Pair

    s, e = block.start, block.end
    for b in batches:
        if s not in b.boundaries or e not in b.boundaries or s not in b.layer_kwargs:
            raise ReplacemeError(
                f"trained-layer: the sample lacks x_{s}, x_{e} or layer {s}'s call arguments for block {block}; "
                "the statistics request missed them"
            )
    return [Pair(b.boundaries[s], b.boundaries[e], b.mask, b.layer_kwargs[s]) for b in batches]


def _report_diagnostics(report: Any, train: list, validation: list) -> dict[str, Any]:
    """JSON-able numbers of one training run, for ``pruning.json``.

    ``val_mse_removal`` is the validation MSE of plain removal (``x_s`` against
    ``x_e``), the baseline the trained layer must beat; training losses are
    means over the first and last tenth of the steps. All are measured in
    float32, before the layer is cast back to the model's dtype.
    """
    from replaceme_streamline.train import identity_mse

    return {
        "train_loss_first": report.train_loss_first,
        "train_loss_last": report.train_loss_last,
        "val_mse_init": report.val_init,
        "val_mse_best": report.val_best,
        "val_mse_removal": identity_mse(validation),
        "improved": report.improved,
        "best_step": report.best_step,
        "steps": report.steps,
        "train_tokens": sum(p.tokens for p in train),
        "val_tokens": sum(p.tokens for p in validation),
        "seconds": report.seconds,
    }


class TrainedLayerCompensator(Compensator):
    """One trained layer per window (LLM-Streamline, arXiv 2403.19135, §3.2)."""

    name = "trained-layer"
    description = "One layer per block, initialised from its first layer and trained with MSE to map x_s to x_e."
    Options = TrainedLayerOptions
    produces = ReplacementLayer
    layers_added_per_block = 1
    default_merger = "write-layer"
    needs_training = True

    def stats_request(self, candidates: list[Block]) -> StatsRequest:
        return StatsRequest(
            sample_tokens=self.options.token_budget,
            sample_boundaries={b.start for b in candidates} | {b.end for b in candidates},
            layer_kwargs={b.start for b in candidates},
        )

    def compensate(self, plan: Plan, ctx: CompensationContext) -> list[ReplacementLayer]:
        return [self._compensate_block(block, ctx) for block in plan.blocks]

    def _settings(self, seed: int) -> Any:
        from replaceme_streamline.train import TrainSettings

        o = self.options
        return TrainSettings(
            epochs=o.epochs, lr=o.lr, min_lr=o.min_lr, warmup=o.warmup, weight_decay=o.weight_decay,
            grad_clip=o.grad_clip, micro_batch=o.micro_batch, eval_every=o.eval_every, seed=seed,
        )  # fmt: skip

    def _compensate_block(self, block: Block, ctx: CompensationContext) -> ReplacementLayer:
        from replaceme.console import LossBar
        from replaceme_streamline.replacement import SAVED_AS, build_replacement
        from replaceme_streamline.train import train_replacement

        o = self.options
        train_batches, val_batches, val_source = split_validation(ctx.stats.sample, o.token_budget, o.val_fraction)
        train, validation = pairs_for(train_batches, block), pairs_for(val_batches, block)
        home = next(ctx.adapter.layers(ctx.model)[block.start].parameters())
        module = build_replacement(ctx.model, ctx.adapter, block.start, o.replacement)
        settings = self._settings(ctx.seed)
        with LossBar(f"training the layer replacing {block}", settings.epochs * len(train)) as bar:
            module, report = train_replacement(
                module, train, validation, settings, ctx.device, lambda loss: bar.update(loss=loss)
            )
        # back to the model's dtype and device; trainable like every other layer (for later healing)
        module.to(device=home.device, dtype=home.dtype).requires_grad_(True)
        diagnostics = {
            "replacement": o.replacement,
            "saved_as": SAVED_AS[o.replacement],
            **_report_diagnostics(report, train, validation),
            "epochs": settings.epochs,
            "validation": val_source,
        }
        log.info(
            "block %s: validation MSE %.4g (init %.4g, plain removal %.4g), train loss %.4g -> %.4g in %d steps",
            block, report.val_best, report.val_init, diagnostics["val_mse_removal"],
            report.train_loss_first, report.train_loss_last, report.steps,
        )  # fmt: skip
        return ReplacementLayer(block, module=module, diagnostics=diagnostics)


class WriteLayerMerger(Merger):
    """Write each replacement layer into its block's first slot; delete the rest of the block."""

    name = "write-layer"
    description = "Put the replacement layer at the block's start and remove the block's other layers."
    accepts = (ReplacementLayer, NoCompensation)

    def merge(self, model: Any, adapter: Any, plan: Plan, compensations: list[ReplacementLayer | NoCompensation]) -> None:
        from replaceme.surgery import keep_layers

        layers = adapter.layers(model)
        removed = {i for block in plan.blocks for i in range(block.start, block.end)}
        replacements = {}
        for comp in compensations:
            if isinstance(comp, ReplacementLayer):
                home = next(layers[comp.block.start].parameters())
                replacements[comp.block.start] = comp.module.to(device=home.device, dtype=home.dtype)
        keep = [i for i in range(len(layers)) if i not in removed or i in replacements]
        keep_layers(model, adapter, keep, replacements)

    def modifies(self, plan: Plan, compensations: list[Compensation]) -> set[int]:
        return set()  # new modules are swapped in; no existing tensor is written
