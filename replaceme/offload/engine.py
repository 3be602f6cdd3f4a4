"""The one layer-by-layer execution engine (GUIDE §5).

Every command that runs a model it does not hold (``--offload``) goes through
:func:`stream`: the statistics pass, plan scoring, perplexity, lm-eval
log-likelihoods and ``distances``. The order is the transpose of a forward pass:

```
for j in start..L-1:
    materialise layer j (from the checkpoint, unless the model already holds it)
    for every batch b:  x_{j+1}[b] = layer_j(x_j[b], **call arguments of layer j for b)
    free layer j (if it was read here)
```

so each layer is read once whatever the number of batches. Where the activations
of the batches wait between layers is a :class:`Feed`'s business: :class:`Window`
keeps the current boundary of every batch in a store (files by default, see
:class:`~replaceme.offload.window.DiskStore`); the statistics pass supplies its own
feed, which keeps the boundaries its sums need.

The model may be the skeleton of an :class:`~replaceme.offload.skeleton.OffloadedModel`
or a variant of it (:mod:`replaceme.variant`): a layer that holds real weights (one a
merge wrote) is used as it is; a meta layer is read from the checkpoint layer it was
built from (:data:`~replaceme.offload.skeleton.ORIGIN`) into that module and freed
after. The call arguments of each layer (attention mask, position embeddings, ...)
come from the model's own forward, run with every layer stubbed
(:func:`layer_arguments`), and what follows the last layer (final norm, LM head,
logit soft-capping) from the model's own forward too (:func:`model_outputs`), so
nothing architecture-specific is written here.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from replaceme.console import track
from replaceme.offload.skeleton import ORIGIN, OffloadedModel, is_resident

#: one batch: ``input_ids [B, T]`` and its attention mask ``[B, T]`` (None: every position real)
Batch = tuple[torch.Tensor, "torch.Tensor | None"]


class _Captured(Exception):
    def __init__(self, args: tuple, kwargs: dict[str, Any]):
        self.args_, self.kwargs_ = args, kwargs


def _stub_layers(layers: Sequence[nn.Module], forwards: dict[int, Any]) -> None:
    for i, layer in enumerate(layers):
        layer.forward = types.MethodType(forwards[i] if i in forwards else forwards[-1], layer)


def _unstub(layers: Sequence[nn.Module]) -> None:
    for layer in layers:
        layer.__dict__.pop("forward", None)


def _passthrough(as_tuple: bool):
    def forward(self_, *args, **kwargs):
        hidden = args[0] if args else next(iter(kwargs.values()))
        return (hidden,) if as_tuple else hidden

    return forward


def layer_arguments(offloaded: OffloadedModel, model: nn.Module, index: int, inputs_embeds: torch.Tensor,
                    attention_mask: torch.Tensor | None) -> tuple[tuple, dict[str, Any]]:
    """The positional and keyword arguments ``model``'s own forward passes to its decoder
    layer ``index`` (the hidden states included, correct only for layer 0).

    The other layers are replaced by pass-through stubs for the call, so no weights are needed."""
    layers = offloaded.adapter.layers(model)

    def capture(self_, *args, **kwargs):
        raise _Captured(args, kwargs)

    _stub_layers(layers, {index: capture, -1: _passthrough(offloaded.returns_tuple)})
    try:
        model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=False)
    except _Captured as got:
        return got.args_, got.kwargs_
    finally:
        _unstub(layers)
    raise RuntimeError(f"the model's forward never called layer {index}")


def model_outputs(offloaded: OffloadedModel, model: nn.Module, x: torch.Tensor, attention_mask: torch.Tensor | None,
                  **kwargs: Any) -> Any:
    """``model``'s own forward from the output of its last decoder layer ``x [B, T, h]``:
    what follows the layers (final norm, LM head, soft-capping) is the model's code.

    The first layer is stubbed to return ``x`` and the others to pass it on; the LM
    head must be materialised (:meth:`OffloadedModel.output_head`)."""
    layers = offloaded.adapter.layers(model)
    as_tuple = offloaded.returns_tuple

    def inject(self_, *args, **kw):
        return (x,) if as_tuple else x

    embeds = torch.zeros((*x.shape[:2], x.shape[-1]), dtype=x.dtype, device=x.device)
    _stub_layers(layers, {0: inject, -1: _passthrough(as_tuple)})
    try:
        return model(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False, **kwargs)
    finally:
        _unstub(layers)


def hidden_argument(layer: nn.Module) -> str:
    """The name of a decoder layer's hidden-states parameter (its first)."""
    signature = inspect.signature(type(layer).forward)
    return next(n for n in signature.parameters if n != "self")


def with_hidden(args: tuple, kwargs: dict[str, Any], first: str, x: torch.Tensor) -> tuple[tuple, dict[str, Any]]:
    """The call arguments with the hidden states replaced by ``x``."""
    if args:
        return (x, *args[1:]), kwargs
    return args, {**kwargs, first: x}


class Feed:
    """Where :func:`stream` takes each batch's input of a layer and puts its output.

    ``boundary(b, j, x)`` receives ``x_j`` of batch ``b`` (``j = 0``: the embedding
    output, ``j = start + 1 ..``: layer outputs); ``input(b, j)`` returns ``x_j`` for
    layer ``j``. The other methods are optional hooks around layers and calls.
    """

    def boundary(self, b: int, j: int, x: torch.Tensor) -> None:
        raise NotImplementedError

    def input(self, b: int, j: int) -> torch.Tensor:
        raise NotImplementedError

    def enter_layer(self, j: int, layer: nn.Module) -> None:
        """Layer ``j`` is materialised (before its first batch)."""

    def leave_layer(self, j: int) -> None:
        """Layer ``j`` has run every batch (before it is freed)."""

    def before_call(self, b: int, j: int, layer: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        """Layer ``j`` is about to run batch ``b`` with these arguments (hidden states excluded)."""


class Window(Feed):
    """The current boundary of every batch, kept in ``store`` (a callable returning an
    object with ``.to(device)``: :class:`~replaceme.offload.window.DiskStore` for files,
    ``None`` for memory).

    Args:
        inputs: batch -> ``x_start`` when the stream starts after layer 0 (e.g. the
            cached input of a candidate plan's first changed layer).
    """

    def __init__(self, store: Any = None, inputs: dict[int, Any] | None = None):
        self.store = store or (lambda t: t)
        self.x: dict[int, Any] = dict(inputs or {})

    def boundary(self, b: int, j: int, x: torch.Tensor) -> None:
        self.x[b] = self.store(x)

    def input(self, b: int, j: int) -> torch.Tensor:
        return self.x[b]

    def output(self, b: int, device: Any) -> torch.Tensor:
        """``x_L`` of batch ``b`` after the stream, on ``device``."""
        return self.x[b].to(device)


@torch.no_grad()
def stream(offloaded: OffloadedModel, model: nn.Module, batches: Sequence[Batch], feed: Feed, *, start: int = 0,
           description: str | None = "layer by layer", indices: Sequence[int] | None = None) -> None:
    """Run ``batches`` through decoder layers ``start..`` of ``model`` one layer at a time.

    Args:
        offloaded: the skeleton over its checkpoint (where meta layers are read from).
        model: the skeleton itself or a variant of it.
        batches: ``(input_ids, mask)`` per batch, on any device.
        feed: where inputs come from and outputs go (:class:`Window` by default).
        start: the first layer run; with ``start > 0``, ``feed.input(b, start)`` must
            give ``x_start`` of every batch.
        description: progress bar label (None: no bar).
        indices: the batch numbers passed to ``feed`` (default ``0..len(batches)-1``).
    """
    device = offloaded.device
    layers = offloaded.adapter.layers(model)
    hidden = int(model.config.hidden_size)
    numbers = list(indices) if indices is not None else list(range(len(batches)))
    steps = range(start, len(layers))
    for j in track(steps, description) if description else steps:
        layer = layers[j]
        read_here = not is_resident(layer)
        if read_here:
            offloaded.load_into(layer, getattr(layer, ORIGIN))
        first = hidden_argument(layer)
        feed.enter_layer(j, layer)
        try:
            for b, (ids, mask) in zip(numbers, batches):
                ids = ids.to(device)
                mask = mask.to(device).long() if mask is not None else None
                if j == 0:
                    embeds = offloaded.embed(ids)
                else:
                    embeds = torch.zeros((*ids.shape, hidden), dtype=offloaded.dtype, device=device)
                args, kwargs = layer_arguments(offloaded, model, j, embeds, mask)
                del embeds
                if j == 0:
                    x = args[0] if args else kwargs[first]
                    feed.boundary(b, 0, x)
                else:
                    x = feed.input(b, j).to(device)
                feed.before_call(b, j, layer, args, kwargs)
                args, kwargs = with_hidden(args, kwargs, first, x)
                out = layer(*args, **kwargs)
                offloaded.returns_tuple = isinstance(out, tuple)
                feed.boundary(b, j + 1, out[0] if offloaded.returns_tuple else out)
                del out, args, kwargs, x
            feed.leave_layer(j)
        finally:
            if read_here:
                offloaded.free(layer)
