"""Plugin: LLM-Streamline (Chen et al., "Streamlining Redundant Layers to Compress
Large Language Models", ICLR 2025, arXiv 2403.19135).

Recipe ``llm-streamline`` = selector ``mean-token-cosine`` + compensator
``trained-layer`` + merger ``write-layer``:

1. Select the window ``[s, s+k)`` whose input ``x_s`` and output ``x_{s+k}``
   have the highest mean per-token cosine over non-pad calibration tokens
   (layer 0 is never in a window).
2. Replace it by ONE layer initialised from layer ``s`` and trained with MSE
   (non-pad tokens only) so that, called as layer ``s`` was, it maps ``x_s`` to
   ``x_{s+k}``. Reference settings are the defaults: AdamW, lr 2e-4 with 1%
   warm-up then cosine decay to 5e-5, weight decay 1e-3, 1 epoch, gradient
   norm clipped at 5. Training runs in float32 (cast back to the model
   dtype) on the run's device, one optimiser step per calibration batch,
   batches shuffled by the seed (bit-identical reruns on CPU), and keeps the
   weights with the best validation MSE, the initial ones included (the
   reference crashes when validation never improves; we warn and keep the
   initial weights). Validation uses the shared pass's held-out batches, or
   the tail of the training sample when there are none.
3. Write it into slot ``s`` and delete layers ``s+1 .. s+k-1``.

Layer-count convention: ``--layers N`` is the *net* removal, so the window
holds ``k = N + 1`` layers (``num_blocks`` windows of ``N/num_blocks + 1``).

Variant ``-o replacement ffn``: arXiv 2403.19135 v1 replaced the window by a
residual-free FFN ``x ↦ FFN(x)`` (h → 4h → h). A standard Hugging Face
decoder layer always adds its input back (``out = x + attn(...) + mlp(...)``)
and both branches see only normalised inputs, so no setting of its weights
can output ``−x`` to cancel that residual: a faithful residual-free FFN needs
custom modelling code, which a pruned model must never require. We save the
closest standard form instead: the window's first layer with every attention
weight set to zero (its attention output is then exactly 0) and the rest
trained, so the layer computes ``x ↦ x + MLP(norm(x))`` with the
architecture's own MLP (Llama: SwiGLU of width ``intermediate_size``, about
as many parameters as a 4h FFN), initialised from layer ``s``. This changes
the math (the FFN learns the update ``x_{s+k} − x_s`` of a normalised input,
not ``x_{s+k}`` itself). It loads with plain ``from_pretrained``;
``pruning.json`` says so under ``compensations[].diagnostics.saved_as``. The
zeroed attention weights stay in the checkpoint as dead weight: they cost the
attention's compute and memory but add nothing.
"""

from __future__ import annotations

from replaceme.components import Method
from replaceme.hookspecs import hookimpl
from replaceme_streamline.components import TrainedLayerCompensator, WriteLayerMerger

REFERENCE = "Chen et al., ICLR 2025, arXiv 2403.19135"


@hookimpl
def register_compensators(register):
    register(TrainedLayerCompensator)


@hookimpl
def register_mergers(register):
    register(WriteLayerMerger)


@hookimpl
def register_methods(register):
    register(
        Method(
            name="llm-streamline",
            selector="mean-token-cosine",
            compensator="trained-layer",
            merger="write-layer",
            description=(
                "Replace the window of N+1 layers with the most similar input and output (mean token cosine) "
                "by one layer trained with MSE; net removal N."
            ),
            reference=REFERENCE,
        )
    )
