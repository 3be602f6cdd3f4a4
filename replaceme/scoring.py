"""Scoring a candidate plan by what the model actually loses.

A :class:`PlanScorer` is handed to selectors by the orchestration (through
:attr:`replaceme.components.SelectionContext.scorer`). For a candidate
:class:`~replaceme.plan.Plan` it applies the method's *own* compensator and
merger to a cheap variant of the unpruned model and measures, on calibration
batches kept by the shared pass:

- ``loss``: mean next-token cross-entropy (nats) over positions whose token and
  next token are both real (pads masked); ``ppl = exp(loss)``;
- ``kl``: mean ``KL(p_unpruned ‖ p_pruned)`` of the next-token distributions
  at the same positions;
- ``final_cosine``: mean over sequences of the cosine between the unpruned and
  pruned last hidden states (after the final norm, as HF's
  ``hidden_states[-1]``), each sequence's non-pad states flattened into one
  vector (LaCo's similarity, arXiv 2402.11187).

It works for every compensator: it only calls ``compensate`` and ``merge``.

Cost. A variant shares every tensor with the unpruned model except the layers
the merger declares it writes (:meth:`replaceme.components.Merger.modifies`),
so a candidate costs a layer or two of memory. Layers before the first changed
one are identical, so scoring starts from the shared pass's cached input of that
layer and replays only the later layers with the call arguments the model used
(``x ↦ layer(x, **kwargs)``), then the final norm and the LM head. This fast
path is checked once against the model's own logits; where it does not
reproduce them (an architecture with extra work after its last layer) every
candidate is scored by a full forward pass instead, which is always exact.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from replaceme.errors import ReplacemeError
from replaceme.plan import Plan
from replaceme.stats.request import StatsRequest

if TYPE_CHECKING:
    from replaceme.stats.store import ActivationStats

log = logging.getLogger(__name__)

Data = Literal["holdout", "all"]

#: attribute names of the final norm on the base model (Llama family, GPT-2/Falcon, OPT/NeoX, Phi).
_FINAL_NORMS = ("norm", "ln_f", "final_layer_norm", "final_layernorm")


@dataclass
class PlanScore:
    """What the model loses under one plan (see the module docstring).

    Attributes:
        loss: mean next-token cross-entropy, nats.
        kl: mean KL divergence from the unpruned model's next-token distribution.
        final_cosine: mean per-sequence cosine of the last hidden states.
        tokens: scored next-token positions.
        sequences: scored sequences.
    """

    loss: float
    kl: float
    final_cosine: float
    tokens: int
    sequences: int

    @property
    def ppl(self) -> float:
        return math.exp(min(self.loss, 700.0))

    def value(self, objective: str) -> float:
        """The number to minimise for ``objective`` (``loss``, ``kl``, or ``cosine`` → 1 − final_cosine)."""
        if objective == "cosine":
            return 1.0 - self.final_cosine
        return float(getattr(self, objective))

    def to_dict(self) -> dict[str, float]:
        return {"loss": self.loss, "ppl": self.ppl, "kl": self.kl, "final_cosine": self.final_cosine,
                "tokens": self.tokens}


def scoring_request(num_layers: int, first_layers: set[int], sample_tokens: int = 0) -> StatsRequest:
    """What the shared pass must keep so plans whose first changed layer is in
    ``first_layers`` can be scored: those layers' inputs, the last layer's output,
    and the call arguments of every layer from the earliest of them on.

    ``sample_tokens`` > 0 also keeps that many training tokens (for scoring on
    ``data="all"``); held-out batches are always kept.
    """
    first = min(first_layers) if first_layers else 0
    return StatsRequest(
        sample_tokens=sample_tokens,
        sample_boundaries=set(first_layers) | {num_layers},
        layer_kwargs=set(range(first, num_layers)),
    )


def final_norm(model: Any) -> Any:
    """The module applied between the last decoder layer and the LM head, or None."""
    base = getattr(model, "base_model", model)
    for holder in (base, getattr(base, "decoder", None)):
        for name in _FINAL_NORMS:
            module = getattr(holder, name, None) if holder is not None else None
            if module is not None:
                return module
    return None


def _output(value: Any) -> Any:
    return value[0] if isinstance(value, tuple) else value


@dataclass
class PlanScorer:
    """Scores plans for one method on one model (built by the orchestration).

    Attributes:
        model: the unpruned model (never mutated).
        adapter: where its layers are.
        stats: the shared statistics (their kept batches are the scoring data).
        compensator, merger: the method's own stages.
        device: where to compute.
        seed: the run's seed (compensators that train use it).
        offloaded: with ``--offload``, the :class:`~replaceme.offload.OffloadedModel` whose
            skeleton ``model`` is: the layers a compensator reads are loaded for it, and
            candidates run through the layer-by-layer engine (:meth:`_score_offloaded`).
    """

    model: Any
    adapter: Any
    stats: ActivationStats
    compensator: Any
    merger: Any
    device: Any = None
    seed: int = 0
    offloaded: Any = None
    _compensations: dict[tuple, list] = field(default_factory=dict, repr=False)
    _scores: dict[tuple, PlanScore] = field(default_factory=dict, repr=False)
    _fast: bool | None = field(default=None, repr=False)

    # -- data ---------------------------------------------------------------
    def batches(self, data: Data = "holdout") -> list[Any]:
        """Held-out batches (never fitted by a compensator), or held-out plus the training sample."""
        sample = self.stats.sample
        batches = list(sample.holdout) + (list(sample.train) if data == "all" else [])
        if not batches:
            raise ReplacemeError(
                "scoring plans needs held-out calibration batches, and the shared pass kept none: "
                "hold some out (--holdout-fraction > 0, with enough batches that a fraction of them is at least one)"
            )
        return batches

    def first_changed(self, plan: Plan) -> int:
        """The first layer a merge of ``plan`` may change (``start - 1`` when the
        compensator writes into the layer before a block)."""
        back = 1 if self.compensator.needs_layer_before else 0
        return min(b.start for b in plan.blocks) - back

    # -- compensation and variants -------------------------------------------
    def compensations(self, plan: Plan) -> list:
        """The compensator's output for ``plan``, computed once per distinct plan.

        Plans are the same when their blocks and ``details["compensation"]`` (what
        a selector passes on to a compensator, e.g. LaCo's merge order) are.
        """
        from replaceme.components import CompensationContext

        key = self._key(plan)
        if key not in self._compensations:
            self._target().reading(self.compensator.reads(plan))
            ctx = CompensationContext(model=self.model, adapter=self.adapter, stats=self.stats,
                                      device=self.device or next(self.model.parameters()).device, seed=self.seed,
                                      work_bytes=self.stats.work_bytes)
            self._compensations[key] = self.compensator.compensate(plan, ctx)
        return self._compensations[key]

    @staticmethod
    def _key(plan: Plan) -> tuple:
        return tuple(plan.blocks), repr(plan.details.get("compensation"))

    def variant(self, plan: Plan) -> Any:
        """A variant of the model (:func:`replaceme.variant.make_variant`) with ``plan``
        compensated and merged: it owns copies of the layers the merger declares it
        writes and shares every other tensor with the unpruned model."""
        from replaceme.variant import VersionGuard

        compensations = self.compensations(plan)
        target = self._target()
        guard = VersionGuard(self.model)
        written = self.merger.modifies(plan, compensations)
        target.writing(written, self.merger.name)
        variant = target.model_for(self.model, self.adapter, written)
        self.merger.merge(variant, self.adapter, plan, compensations)
        if written := guard.modified():
            raise ReplacemeError(f"merger '{self.merger.name}' wrote shared weights it did not declare: {', '.join(written[:3])}")
        return variant

    def _target(self) -> Any:
        """Where variants are made: beside the loaded model, or over the offloaded skeleton."""
        from replaceme.variant import VARIANT, OffloadedVariantTarget

        return VARIANT if self.offloaded is None else OffloadedVariantTarget(self.offloaded)

    def old_indices(self, plan: Plan, count: int) -> list[int] | None:
        """Original index of each layer of the merged variant (a written-back
        layer counts as the block's first), or None if the count disagrees."""
        added = self.compensator.layers_added_per_block
        removed = {i for b in plan.blocks for i in range(b.start + added, b.end)}
        keep = [i for i in range(self.adapter.num_layers(self.model)) if i not in removed]
        return keep if len(keep) == count else None

    # -- forward passes ----------------------------------------------------------
    def _head(self, model: Any, x: Any) -> tuple[Any, Any]:
        """Final norm and LM head: ``x_L [B, T, h]`` → (post-norm states, logits)."""
        norm = final_norm(model)
        h = norm(x) if norm is not None else x
        logits = model.get_output_embeddings()(h)
        cap = getattr(model.config, "final_logit_softcapping", None)
        if cap:
            logits = cap * (logits / cap).tanh()
        return h, logits

    def _replay(self, model: Any, batch: Any, first: int, old: list[int]) -> Any:
        """Run layers ``first..`` of ``model`` from the cached ``x_first`` of ``batch``."""
        x = batch.boundaries[first].to(self.device)
        for j, layer in enumerate(self.adapter.layers(model)):
            if j < first:
                continue
            kwargs = {k: _to(v, self.device) for k, v in batch.layer_kwargs[old[j]].items()}
            x = _output(layer(x, **kwargs))
        return x

    def _full(self, model: Any, batch: Any) -> tuple[Any, Any]:
        out = model(input_ids=batch.input_ids.to(self.device), attention_mask=batch.mask.long().to(self.device),
                    use_cache=False, output_hidden_states=True)
        return out.hidden_states[-1], out.logits

    def _check_fast_path(self, batch: Any) -> bool:
        """Whether replaying cached states reproduces the unpruned model's own logits."""
        import torch

        L = self.adapter.num_layers(self.model)
        if L not in batch.boundaries or (L - 1) not in batch.boundaries or (L - 1) not in batch.layer_kwargs:
            return False
        try:
            x = self._replay(self.model, batch, L - 1, list(range(L)))
            _, fast = self._head(self.model, x)
            _, full = self._full(self.model, batch)
        except Exception as exc:  # an architecture whose layers cannot be replayed alone
            log.info("scoring by full forward passes (replaying layers failed: %s)", exc)
            return False
        mask = batch.mask.to(fast.device)
        ok = bool(torch.allclose(fast[mask].float(), full[mask].float(), rtol=1e-3, atol=1e-3 * float(full[mask].abs().max())))
        if not ok:
            log.info("scoring by full forward passes (cached states do not reproduce the model's logits)")
        return ok

    # -- the score ---------------------------------------------------------------
    def score(self, plan: Plan, data: Data = "holdout") -> PlanScore:
        """Compensate and merge ``plan`` on a variant and measure it on ``data`` batches
        (once per distinct plan and data)."""
        key = (self._key(plan), data)
        if key not in self._scores:
            self._scores[key] = self._score(plan, data)
        return self._scores[key]

    def _score(self, plan: Plan, data: Data) -> PlanScore:
        import torch

        batches = self.batches(data)
        if self.offloaded is not None:
            return _finish(plan, self._score_offloaded(plan, batches))
        if self.device is None:
            self.device = next(self.model.parameters()).device
        if self._fast is None:
            with torch.no_grad():
                self._fast = self._check_fast_path(batches[0])
        variant = self.variant(plan)
        variant.eval()
        first = self.first_changed(plan)
        old = self.old_indices(plan, self.adapter.num_layers(variant))
        fast = self._fast and old is not None and all(first in b.boundaries for b in batches)
        totals = {"loss": 0.0, "kl": 0.0, "cos": 0.0, "tokens": 0, "sequences": 0}
        with torch.no_grad():
            for batch in batches:
                if fast:
                    L = self.adapter.num_layers(self.model)
                    ref_h, ref_logits = self._head(self.model, batch.boundaries[L].to(self.device))
                    h, logits = self._head(variant, self._replay(variant, batch, first, old))
                else:
                    ref_h, ref_logits = self._full(self.model, batch)
                    h, logits = self._full(variant, batch)
                _accumulate(totals, batch, h, logits, ref_h, ref_logits)
        del variant
        return _finish(plan, totals)

    def _score_offloaded(self, plan: Plan, batches: list[Any]) -> dict[str, Any]:
        """The sums of :meth:`_score` with the model offloaded: the variant runs through the
        layer-by-layer engine from the cached input of its first changed layer (from the
        embedding when that input was not kept), the unpruned reference from the cached
        last-layer output; both then through the model's own final norm and LM head."""
        import torch

        from replaceme.offload.engine import Window, model_outputs, stream
        from replaceme.offload.window import DiskStore

        off = self.offloaded
        variant = self.variant(plan)
        variant.eval()
        L = self.adapter.num_layers(self.model)
        first = self.first_changed(plan)
        fits = self.old_indices(plan, self.adapter.num_layers(variant)) is not None
        start = first if fits and first > 0 and all(first in b.boundaries for b in batches) else 0
        runs = [(b.input_ids, b.mask) for b in batches]
        totals = {"loss": 0.0, "kl": 0.0, "cos": 0.0, "tokens": 0, "sequences": 0}
        with DiskStore() as store, torch.no_grad():
            pruned = Window(store, {k: b.boundaries[start] for k, b in enumerate(batches)} if start else None)
            stream(off, variant, runs, pruned, start=start, description=None)
            if all(L in b.boundaries for b in batches):
                reference = Window(inputs={k: b.boundaries[L] for k, b in enumerate(batches)})
            else:
                reference = Window(store)
                stream(off, self.model, runs, reference, description=None)
            with off.output_head(self.model, variant):
                for k, batch in enumerate(batches):
                    mask = batch.mask.long().to(off.device)
                    ref = model_outputs(off, self.model, reference.output(k, off.device), mask, output_hidden_states=True)
                    out = model_outputs(off, variant, pruned.output(k, off.device), mask, output_hidden_states=True)
                    _accumulate(totals, batch, out.hidden_states[-1], out.logits, ref.hidden_states[-1], ref.logits)
        del variant
        return totals


def _finish(plan: Plan, totals: dict[str, Any]) -> PlanScore:
    """The mean scores from :func:`_accumulate`'s sums; NaN/Inf named."""
    n = max(totals["tokens"], 1)
    for name, value in (("loss", totals["loss"]), ("kl", totals["kl"])):
        if not math.isfinite(value):
            raise ReplacemeError(f"non-finite {name} (NaN/Inf) while scoring plan {', '.join(map(str, plan.blocks))}")
    return PlanScore(loss=totals["loss"] / n, kl=totals["kl"] / n, final_cosine=totals["cos"] / max(totals["sequences"], 1),
                     tokens=totals["tokens"], sequences=totals["sequences"])


def _to(value: Any, device: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to(v, device) for v in value)
    return value


def _accumulate(totals: dict, batch: Any, h: Any, logits: Any, ref_h: Any, ref_logits: Any) -> None:
    """Add one batch's sums (float64) of cross-entropy, KL and per-sequence cosine."""
    import torch.nn.functional as F

    mask = batch.mask.to(logits.device)
    ids = batch.input_ids.to(logits.device)
    valid = mask[:, :-1] & mask[:, 1:]  # predict token t+1 from position t, both real
    logp = F.log_softmax(logits[:, :-1][valid].double(), dim=-1)
    ref_logp = F.log_softmax(ref_logits[:, :-1][valid].double(), dim=-1)
    target = ids[:, 1:][valid]
    totals["loss"] += float(-logp.gather(1, target[:, None]).sum())
    totals["kl"] += float((ref_logp.exp() * (ref_logp - logp)).sum())
    totals["tokens"] += int(valid.sum())
    for row in range(mask.shape[0]):
        if mask[row].any():
            a = ref_h[row][mask[row]].reshape(-1).double()
            b = h[row][mask[row]].reshape(-1).double()
            totals["cos"] += float(F.cosine_similarity(a, b, dim=0, eps=1e-12))
            totals["sequences"] += 1
