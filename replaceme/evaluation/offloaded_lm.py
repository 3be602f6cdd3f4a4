"""lm-eval log-likelihoods of a model that is never whole in memory (``--offload``).

:class:`OffloadedLM` is lm-eval's own ``HFLM`` (same tokenisation, truncation,
batching, padding and scoring) with one change: the model calls. ``HFLM`` asks for
one batch's logits at a time, while the layer-by-layer engine needs every batch
before the first layer runs. So each call of ``_loglikelihood_tokens`` (which
serves ``loglikelihood`` and ``loglikelihood_rolling``) runs twice:

1. **record**: lm-eval forms its batches and is answered with zero logits (its
   results are dropped); the batches are kept;
2. the engine runs every recorded batch through every layer
   (:func:`replaceme.offload.engine.stream`), each layer read once, the last
   hidden states waiting in files (in groups of batches within the disk budget,
   one sweep over the layers each, :mod:`replaceme.offload.budget`);
3. **replay**: lm-eval forms the same batches again (its order is deterministic
   for a fixed batch size) and is answered with each batch's logits, from the
   model's own final norm and LM head (:func:`replaceme.offload.engine.model_outputs`).

Generation tasks (``generate_until``) need a forward per generated token and are
refused (:func:`check_offload_tasks` does it before any work).
"""

from __future__ import annotations

from typing import Any

import torch
from lm_eval.models.huggingface import HFLM

from replaceme.errors import ReplacemeError
from replaceme.offload.engine import Window, model_outputs, stream
from replaceme.evaluation.offloaded import window_bytes
from replaceme.offload.window import DiskStore


class OffloadedLM(HFLM):
    """``HFLM`` over an offloaded skeleton (or a variant of it); see the module docstring.

    Build it as ``HFLM`` with ``pretrained=<model>``, then call :meth:`attach`.
    """

    def attach(self, offloaded: Any, model: Any) -> OffloadedLM:
        """Run ``model`` (the skeleton or a variant) through ``offloaded``'s engine."""
        self._offloaded, self._engine_model = offloaded, model
        self._device = offloaded.device
        self._answers: Any = None
        return self

    def _model_call(self, inps: torch.Tensor, attn_mask: Any = None, labels: Any = None) -> torch.Tensor:
        if self._answers is None:
            raise RuntimeError("OffloadedLM called outside _loglikelihood_tokens")
        return self._answers(inps)

    def _loglikelihood_tokens(self, requests: Any, disable_tqdm: bool = False, override_bs: Any = None) -> Any:
        offloaded, model = self._offloaded, self._engine_model
        recorded: list[torch.Tensor] = []
        vocab = int(model.get_output_embeddings().weight.shape[0])

        def record(inps: torch.Tensor) -> torch.Tensor:
            recorded.append(inps.to("cpu"))
            return torch.zeros((*inps.shape, vocab), dtype=offloaded.dtype, device=inps.device)

        self._answers = record
        try:
            super()._loglikelihood_tokens(requests, disable_tqdm=True, override_bs=override_bs)
            if not recorded:
                return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
            groups = offloaded.window_groups(window_bytes(offloaded, model, recorded), "evaluation")
            group_of = {b: g for g, group in enumerate(groups) for b in group}
            state: dict[str, Any] = {"group": None, "store": None, "window": None}

            def sweep(g: int) -> None:  # the next group of batches through every layer
                if state["store"] is not None:
                    state["store"].close()
                state["store"] = store = DiskStore()
                state["window"] = window = Window(store)
                chosen = [(recorded[b], None) for b in groups[g]]
                stream(offloaded, model, chosen, window, description="lm-eval (layer by layer)", indices=groups[g])
                state["group"] = g

            calls = iter(range(len(recorded)))

            def replay(inps: torch.Tensor) -> torch.Tensor:
                b = next(calls)
                if not torch.equal(inps.to("cpu"), recorded[b]):
                    raise RuntimeError("lm-eval formed different batches on the second pass")
                if state["group"] != group_of[b]:
                    sweep(group_of[b])
                with torch.no_grad():
                    return model_outputs(offloaded, model, state["window"].output(b, offloaded.device), None).logits

            self._answers = replay
            try:
                with offloaded.output_head(model):
                    return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
            finally:
                if state["store"] is not None:
                    state["store"].close()
        finally:
            self._answers = None

    def generate_until(self, requests: Any, disable_tqdm: bool = False) -> Any:
        raise ReplacemeError("--offload evaluates log-likelihood tasks only; a generation task needs the whole model")


def check_offload_tasks(task_dict: dict[str, Any]) -> None:
    """Refuse generation tasks before any work (``--offload`` scores log-likelihoods only)."""
    for name, task in task_dict.items():
        if getattr(task, "OUTPUT_TYPE", None) == "generate_until" or \
                getattr(getattr(task, "config", None), "output_type", None) == "generate_until":
            raise ReplacemeError(f"task '{name}' generates text, which --offload cannot do (it scores "
                                 "log-likelihoods layer by layer); evaluate it without --offload")
