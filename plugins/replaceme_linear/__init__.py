"""Built-in plugin: ReplaceMe (Shopkhoev et al., NeurIPS 2025, arXiv 2505.02819).

A removed block ``[s, e)`` is replaced by one linear map T applied to the MLP
output of layer ``s-1`` and folded into that MLP's output projection, so the
pruned model has no extra parameters.

- compensator ``lstsq``: T from the float64 normal equations gathered in the
  shared pass (Cholesky solve; automatic ridge when ill-conditioned);
- compensator ``cosine``: T trained to minimise cosine distance on a bounded
  token sample from the shared pass (Adam as in the reference, or L-BFGS);
- merger ``fold-linear``: ``W ← Tᵀ W``, ``b ← Tᵀ b`` in float64, then remove the block;
- methods ``replaceme-lstsq`` and ``replaceme-cosine`` (angular-distance selection).
- config translator ``linear``: how ``prune --config`` reads the ReplaceMe reference's
  ``lstsq``/``cosine`` keys (:mod:`replaceme_linear.reference_config`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

from replaceme.adapters import ModelAdapter
from replaceme.components import (
    CompensationContext,
    Compensator,
    LinearMap,
    Merger,
    Method,
    NoCompensation,
)
from replaceme.errors import ReplacemeError
from replaceme.hookspecs import hookimpl
from replaceme.options import option
from replaceme.plan import Block, Plan
from replaceme.stats.request import StatsRequest

log = logging.getLogger(__name__)


def _check_starts(candidates: list[Block]) -> None:
    for block in candidates:
        if block.start < 1:
            raise ReplacemeError(
                f"block {block} starts at layer 0: there is no MLP before it to fold a linear map into"
            )


def _refuse_dense_behind_post_norm(name: str, adapter: ModelAdapter, hint: str) -> None:
    """A dense map on what the MLP adds cannot be folded when a post-norm sits between
    the MLP and the residual add (the norm would undo it); only a diagonal one can."""
    if not adapter.mlp_write.direct:
        raise ReplacemeError(
            f"compensator '{name}': on '{adapter.name}' the MLP writes into the residual stream "
            f"{adapter.mlp_write.describe()}, which would undo a dense linear map folded before it; {hint}"
        )


def _block_request(candidates: list[Block], sample_tokens: int = 0) -> StatsRequest:
    """Sample m_{s-1}, x_s, x_e of every candidate (held-out batches always; training ones up to the budget)."""
    return StatsRequest(
        sample_tokens=sample_tokens,
        sample_mlp={b.start - 1 for b in candidates},
        sample_boundaries={b.start for b in candidates} | {b.end for b in candidates},
    )


def _heldout(stats, block: Block, transform) -> dict:
    from replaceme_linear.diagnostics import block_tokens, heldout_diagnostics

    if not stats.sample.holdout:
        return {"heldout_tokens": 0}
    return heldout_diagnostics(*block_tokens(stats.sample.holdout, block.start, block.end), transform)


@dataclass
class LstsqOptions:
    alpha: float = option(0.0, "ridge α added to XᵀX (0 = none unless ill-conditioned)")
    max_condition: float = option(1e10, "above this condition number of XᵀX a ridge is added automatically (with a warning)")
    diag: bool = option(False, "restrict T to a diagonal matrix (per-channel scaling)")
    mask_padding: bool = option(True, "exclude pad tokens from XᵀX, XᵀY (off reproduces the reference, which includes them)")

    def __post_init__(self) -> None:
        if self.alpha < 0:
            raise ValueError("alpha must be >= 0")
        if self.max_condition <= 1:
            raise ValueError("max_condition must be > 1")


class LstsqCompensator(Compensator):
    """T = argmin ‖XT − Y‖² + α‖T‖² from the float64 normal equations of the shared pass."""

    name = "lstsq"
    description = "Linear map by least squares (ReplaceMe), folded into the previous MLP."
    Options = LstsqOptions
    produces = LinearMap
    default_merger = "fold-linear"
    needs_layer_before = True

    def check_model(self, adapter: ModelAdapter) -> None:
        if not self.options.diag:
            _refuse_dense_behind_post_norm(self.name, adapter, "use -o diag true (a diagonal map folds into the norm's weight)")

    def stats_request(self, candidates: list[Block]) -> StatsRequest:
        _check_starts(candidates)
        request = _block_request(candidates)
        request.gram_blocks = {(b.start, b.end) for b in candidates}
        request.gram_with_pad = not self.options.mask_padding
        return request

    def compensate(self, plan: Plan, ctx: CompensationContext) -> list[LinearMap]:
        import torch

        from replaceme_linear.lstsq_solve import residual_from_gram, solve_lstsq

        out = []
        for block in plan.blocks:
            gram = ctx.stats.gram_for(block, with_pad=not self.options.mask_padding)
            sol = solve_lstsq(gram.xtx, gram.xty, self.options.alpha, self.options.max_condition, self.options.diag)
            if sol.auto_ridge:
                log.warning("block %s: XᵀX is ill-conditioned (cond %.3g); ridge α=%.3g added", block, sol.condition, sol.ridge)
            eye = torch.eye(sol.transform.shape[0], dtype=torch.float64, device=sol.transform.device)
            norm_y = math.sqrt(max(gram.yty, 1e-300))
            diagnostics = {
                "tokens": gram.tokens,
                "condition_number": sol.condition,
                "ridge": sol.ridge,
                "auto_ridge": sol.auto_ridge,
                "train_rel_residual": math.sqrt(max(residual_from_gram(gram.xtx, gram.xty, gram.yty, sol.transform), 0.0)) / norm_y,
                "train_identity_rel_residual": math.sqrt(max(residual_from_gram(gram.xtx, gram.xty, gram.yty, eye), 0.0)) / norm_y,
                **_heldout(ctx.stats, block, sol.transform),
            }
            out.append(LinearMap(block, transform=sol.transform.to("cpu"), diagonal=self.options.diag, diagnostics=diagnostics))
        return out


#: what ``preset`` fills in for ``solver`` and ``init`` when they are not given.
COSINE_PRESETS = {
    # converges on small and large calibration sets alike (benchmarks/README.md, "Cosine default")
    "fit": {"solver": "lbfgs", "init": "lstsq"},
    # the ReplaceMe reference: Adam from T = I (with the epochs, lr and batch_tokens defaults)
    "reference": {"solver": "adam", "init": "identity"},
}


@dataclass
class CosineOptions:
    preset: Literal["fit", "reference"] = option(
        "fit", "fit: L-BFGS from the LSTSQ solution, which converges on small and large calibration sets; "
        "reference: the ReplaceMe recipe (Adam from T = I, lr 1e-4, 1024-token batches, 10 epochs). "
        "solver and init, when given, override the preset")
    loss: Literal["cosine", "mse"] = option("cosine", "objective: 1 − cos(XT, Y), or relative squared error")
    solver: Literal["adam", "lbfgs"] | None = option(
        None, "adam: mini-batches as the reference; lbfgs: full batch, strong Wolfe (unset: the preset's)")
    epochs: int = option(10, "Adam passes over the token sample (reference: 10)", applies_when={"solver": "adam"})
    lr: float = option(1e-4, "Adam learning rate (reference: 1e-4)", applies_when={"solver": "adam"})
    batch_tokens: int = option(1024, "tokens per Adam step (reference: 1024)", applies_when={"solver": "adam"})
    lbfgs_steps: int = option(100, "L-BFGS iterations", applies_when={"solver": "lbfgs"})
    token_budget: int = option(
        65536,
        "tokens of the activation sample kept from the shared pass; memory ≈ tokens × hidden × "
        "(stored layers) × dtype bytes, reported in pruning.json",
    )
    chunk_tokens: int | None = option(
        None,
        "tokens of the sample on the compute device at once during the fit (float32: chunk × hidden × 4 bytes "
        "per matrix, 3 matrices); a larger sample is read back chunk by chunk (from RAM or the --spill-dir "
        "files), Adam shuffling within chunks, L-BFGS summing loss and gradient over all of them (unset: what "
        "--memory-budget leaves beside the statistics, at about 14 such matrices per token at the fit's peak, "
        "between 1,024 and 65,536 tokens)")
    accurate: bool = option(False, "minimise 1 − cos(XT + z, x_e) with z = x_s − m_{s-1} (the paper's accurate variant)")
    init: Literal["identity", "lstsq"] | None = option(
        None, "start from T = I (reference) or from the least-squares map of the fit's own token sample "
        "(float64, so the start depends on the sample alone: one process and torchrun agree; unset: the preset's)")
    refit: bool = option(
        False,
        "with several blocks, fit each on the model with the earlier blocks already replaced (as the reference "
        "does), re-running the sampled batches through it; off = every block from the unpruned model's pass",
    )

    def __post_init__(self) -> None:
        for name, value in COSINE_PRESETS[self.preset].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        for name in ("epochs", "batch_tokens", "lbfgs_steps", "token_budget", "chunk_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.lr <= 0:
            raise ValueError("lr must be > 0")


#: tokens per chunk of the cosine fit when ``chunk_tokens`` is unset: sized from the memory
#: budget's working share, within these bounds
CHUNK_RANGE = (1024, 65536)
#: float32 ``[tokens, hidden]`` matrices the fit holds per chunk at its peak: the chunk's 3, the
#: prediction, the cosine loss's norms and products, and their gradients in the backward pass
#: (≈ 14 measured at hidden 1024 with the float64 normal equations of the LSTSQ start)
FIT_MATRICES = 14

#: why -o refit cannot run offloaded (refused before the model loads)
REFIT_OFFLOAD = "cosine refit re-runs the partly pruned model, which --offload never holds; drop -o refit"


class CosineCompensator(Compensator):
    """T minimising cosine distance on a bounded token sample from the shared pass."""

    name = "cosine"
    description = "Linear map by cosine-distance optimisation (ReplaceMe), folded into the previous MLP."
    Options = CosineOptions
    produces = LinearMap
    default_merger = "fold-linear"
    needs_layer_before = True
    needs_training = True

    def check_model(self, adapter: ModelAdapter) -> None:
        _refuse_dense_behind_post_norm(self.name, adapter, "use compensator lstsq with -o diag true")

    def stats_request(self, candidates: list[Block]) -> StatsRequest:
        _check_starts(candidates)
        return _block_request(candidates, self.options.token_budget)

    def check_offload(self) -> None:
        if self.options.refit:
            raise ReplacemeError(REFIT_OFFLOAD)

    def compensate(self, plan: Plan, ctx: CompensationContext) -> list[LinearMap]:
        from replaceme.variant import make_variant
        from replaceme_linear.diagnostics import block_tokens, heldout_diagnostics, rerun_block_tokens
        from replaceme_linear.token_stream import block_stream

        o = self.options
        train, holdout = ctx.stats.sample.take(o.token_budget), ctx.stats.sample.holdout
        working, shift, out = None, 0, []
        if o.refit and len(plan.blocks) > 1 and any(p.is_meta for p in ctx.model.parameters()):
            raise ReplacemeError(REFIT_OFFLOAD)
        for k, block in enumerate(plan.blocks):
            if o.refit and k > 0:  # the model as it is once the earlier blocks are replaced
                if working is None:  # shares every tensor but the layers that receive folds
                    working = make_variant(ctx.model, ctx.adapter, {b.start - 1 for b in plan.blocks})
                _apply(working, ctx.adapter, out[-1], shift)
                shift += out[-1].block.size
                s, e = block.start - shift, block.end - shift
                source = self._rows(rerun_block_tokens(working, ctx.adapter, train, s, e), ctx)
                held = rerun_block_tokens(working, ctx.adapter, holdout, s, e) if holdout else None
            else:
                source = block_stream(train, block.start, block.end, accurate=o.accurate, device=ctx.device,
                                      chunk_tokens=self._chunk(ctx))
                held = block_tokens(holdout, block.start, block.end) if holdout else None
            transform, diagnostics = self._fit(block, source, ctx)
            diagnostics.update(heldout_diagnostics(*held, transform) if held else {"heldout_tokens": 0})
            diagnostics["refit"] = bool(o.refit and k > 0)
            diagnostics["sample_bytes"] = ctx.stats.sample.nbytes()
            out.append(LinearMap(block, transform=transform, diagnostics=diagnostics))
        del working
        return out

    def _rows(self, acts: tuple, ctx: CompensationContext):
        """``(m_{s-1}, x_s, x_e)`` tensors in memory as the fit's chunked rows."""
        import torch

        from replaceme_linear.token_stream import ChunkedTokens

        m, xs, xe = (a.to(ctx.device, torch.float32) for a in acts)
        x, target, offset = (m, xe, xs - m) if self.options.accurate else (m, xe - xs + m, None)
        return ChunkedTokens.of_tensors(x, target, offset, chunk_tokens=self._chunk(ctx))

    def _chunk(self, ctx: CompensationContext) -> int:
        """Tokens per chunk of the fit: ``chunk_tokens``, else what the run's memory budget
        leaves for :data:`FIT_MATRICES` float32 ``[chunk, hidden]`` matrices (:data:`CHUNK_RANGE`)."""
        if self.options.chunk_tokens is not None:
            return self.options.chunk_tokens
        low, high = CHUNK_RANGE
        if ctx.work_bytes is None:
            return high
        return max(low, min(high, ctx.work_bytes // (FIT_MATRICES * 4 * ctx.stats.hidden_size)))

    def _fit(self, block: Block, source, ctx: CompensationContext) -> tuple:
        """Fit T for one block from its chunked token rows (:class:`ChunkedTokens`)."""
        import time

        import torch

        from replaceme.console import LossBar
        from replaceme_linear.cosine_solve import adam_steps, fit_stream
        from replaceme_linear.lstsq_solve import solve_lstsq

        o = self.options
        t0 = time.perf_counter()
        init = None
        if o.init == "lstsq":  # from the fit's own sample: the same under torchrun as in one process
            init = solve_lstsq(*source.normal_equations()).transform.to(torch.float32)
        # the bar counts loss evaluations: Adam steps, or L-BFGS function evaluations (torch's
        # LBFGS makes at most 5/4 of its iterations' worth; the bar completes early if it converges)
        steps = adam_steps(source, o.batch_tokens, o.epochs) if o.solver == "adam" else o.lbfgs_steps * 5 // 4
        with LossBar(f"cosine fit {block}", total=steps) as bar:
            fit = fit_stream(
                source, init=init, loss=o.loss, solver=o.solver, epochs=o.epochs, lr=o.lr,
                batch_tokens=o.batch_tokens, lbfgs_steps=o.lbfgs_steps, seed=ctx.seed,
                on_step=lambda adv, loss: bar.update(adv, loss=loss),
            )
        if not torch.isfinite(fit.transform).all():
            raise ReplacemeError(f"cosine fit of block {block} diverged (NaN/Inf); try a smaller lr or solver lbfgs")
        diagnostics = {
            "tokens": source.tokens,
            "chunks": len(source), "chunk_tokens": source.chunk_tokens,
            "activation_bytes": source.peak_bytes,
            "loss_first": fit.history[0] if fit.history else None,
            "loss_last": fit.history[-1] if fit.history else None,
            "steps": fit.steps,
            "seconds": time.perf_counter() - t0,
        }
        return fit.transform.to("cpu", torch.float64), diagnostics


def _apply(model, adapter: ModelAdapter, comp: LinearMap | NoCompensation, shift: int) -> None:
    """Write one block's compensation into ``model``, whose earlier blocks (``shift``
    layers) are already removed: fold T into its layer, then remove the block."""
    from replaceme.surgery import fold_linear_map, remove_layers

    if isinstance(comp, LinearMap):
        fold_linear_map(model, adapter, comp.layer - shift, comp.transform)
    remove_layers(model, adapter, range(comp.block.start - shift, comp.block.end - shift))


class FoldLinearMerger(Merger):
    """Fold each block's T into the MLP output projection of layer ``start - 1``, then remove the block."""

    name = "fold-linear"
    description = "Fold a linear map into the previous layer's MLP output projection (or post-norm), then remove the block."
    accepts = (LinearMap, NoCompensation)

    def merge(self, model, adapter, plan, compensations) -> None:
        removed = {i for b in plan.blocks for i in range(b.start, b.end)}
        shift = 0
        for comp in sorted(compensations, key=lambda c: c.block):
            carrier = comp.layer if isinstance(comp, LinearMap) else comp.block.start - 1
            if isinstance(comp, LinearMap) and (carrier < 0 or carrier in removed or carrier >= comp.block.start):
                raise ReplacemeError(f"cannot fold the map of block {comp.block}: layer {carrier} is removed or absent")
            _apply(model, adapter, comp, shift)
            shift += comp.block.size

    def modifies(self, plan, compensations) -> set[int]:
        """The MLP output projection of layer ``start - 1`` of each block with a map."""
        return {c.layer for c in compensations if isinstance(c, LinearMap)}


@hookimpl
def register_compensators(register):
    register(LstsqCompensator)
    register(CosineCompensator)


@hookimpl
def register_mergers(register):
    register(FoldLinearMerger)


@hookimpl
def register_methods(register):
    ref = "Shopkhoev et al., NeurIPS 2025, arXiv 2505.02819"
    register(Method("replaceme-lstsq", "angular-distance", "lstsq", "fold-linear",
                    description="Angular-distance block, replaced by a least-squares linear map folded into the previous MLP.",
                    reference=ref))
    register(Method("replaceme-cosine", "angular-distance", "cosine", "fold-linear",
                    description="Angular-distance block, replaced by a cosine-optimised linear map folded into the previous MLP.",
                    reference=ref))


@hookimpl
def register_config_translators(register):
    from replaceme_linear.reference_config import TRANSLATOR

    register(TRANSLATOR)
