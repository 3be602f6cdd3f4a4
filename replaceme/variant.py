"""Memory-lean variants of a model: share every untouched weight, own only what a merge writes.

``compare`` prunes one model with many methods. A deep copy per method costs a whole
model each; a *variant* costs a few layers:

- the module tree is copied (new module objects, a new ``ModuleList``, a new config),
  so a merge that deletes layers, renumbers ``layer_idx`` or edits the config changes
  the variant alone;
- every parameter and buffer outside the *owned* decoder layers is a new
  ``nn.Parameter`` over the **same storage** as the base's (``tensor.detach()``), so
  it costs no memory; tied weights stay tied (one new parameter per base parameter);
  moving or casting the variant (``variant.to(...)``, as evaluation does) replaces its
  own parameters' data and leaves the base alone;
- the owned decoder layers (those the merger writes in place, from
  :meth:`replaceme.components.Merger.modifies`) are deep copies, so in-place writes
  (``weight.copy_``) reach the variant only.

A merger that writes in place into a layer it did not declare would write into the
base: :class:`VersionGuard` notices it (through the tensors' version counters, which
every in-place torch operation bumps) so that the caller can stop before another
variant starts from modified weights.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from replaceme.adapters import ModelAdapter


def _shared_tensors(module: nn.Module) -> Iterable[torch.Tensor]:
    yield from module.parameters()
    yield from module.buffers()


def make_variant(model: nn.Module, adapter: ModelAdapter, own: Iterable[int] | None = ()) -> nn.Module:
    """A copy of ``model`` that shares storage for every tensor outside decoder layers ``own``.

    Args:
        model: the base model (never modified).
        adapter: where its decoder layers are.
        own: indices of the decoder layers to deep-copy (the ones a merger writes in
            place); ``None`` = every decoder layer (embeddings, final norm and head
            are still shared).

    Returns:
        The variant: same class, same values, its own module tree and config.
    """
    layers = adapter.layers(model)
    owned = range(len(layers)) if own is None else sorted(set(own))
    private = {id(t) for i in owned for t in _shared_tensors(layers[i])}
    memo: dict[int, Any] = {}
    for param in model.parameters():
        if id(param) not in private:
            memo[id(param)] = nn.Parameter(param.detach(), requires_grad=param.requires_grad)
    for buffer in model.buffers():
        if id(buffer) not in private and id(buffer) not in memo:
            memo[id(buffer)] = buffer.detach()
    return copy.deepcopy(model, memo)


def private_bytes(variant: nn.Module, base: nn.Module) -> int:
    """Bytes of the variant's tensors that do not share storage with ``base`` (for reports and tests)."""
    base_ptrs = {t.untyped_storage().data_ptr() for t in _shared_tensors(base)}
    seen, total = set(), 0
    for t in _shared_tensors(variant):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in base_ptrs and ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
    return total


class VersionGuard:
    """Remembers the version counter of every tensor of a model, to detect in-place writes.

    Every in-place torch operation on a tensor or on a view of it (``copy_``,
    ``add_``, ``mul_``...) bumps the counter. Writes through ``.data`` do not and
    escape the guard; mergers write through ``torch.no_grad()`` and the tensor itself.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.versions = {name: t._version for name, t in self._named(model)}

    @staticmethod
    def _named(model: nn.Module) -> Iterable[tuple[str, torch.Tensor]]:
        yield from model.named_parameters(remove_duplicate=True)
        yield from model.named_buffers(remove_duplicate=True)

    def modified(self) -> list[str]:
        """Names of the tensors written in place since the guard was made."""
        return [name for name, t in self._named(self.model) if self.versions.get(name, t._version) != t._version]


class MergeTarget:
    """How :func:`replaceme.pipeline.apply_method` treats the model it prunes: the default
    prunes it in place. A strategy differs only in what it does before the compensator
    reads layers (:meth:`reading`) and before the merger writes (:meth:`writing`), and in
    which model the merger writes into (:meth:`model_for`).
    """

    name = "in-place"

    def reading(self, layers: set[int]) -> None:
        """The compensator is about to read these (unpruned) decoder layers."""

    def writing(self, layers: set[int] | None, merger: str) -> None:
        """Merger ``merger`` is about to write these layers in place (``Merger.modifies``; None: undeclared)."""

    def model_for(self, model: nn.Module, adapter: ModelAdapter, layers: set[int] | None) -> nn.Module:
        """The model the merger writes into (``layers``: as in :meth:`writing`)."""
        return model


class VariantTarget(MergeTarget):
    """``compare``: leave the model untouched; merge into a variant that owns only the layers
    the merger writes (:func:`make_variant`), returned as ``outcome.model``."""

    name = "variant"

    def model_for(self, model: nn.Module, adapter: ModelAdapter, layers: set[int] | None) -> nn.Module:
        return make_variant(model, adapter, layers)


class OnDemandTarget(MergeTarget):
    """``--offload``: the skeleton of ``offloaded`` (an :class:`~replaceme.offload.OffloadedModel`)
    holds no decoder weights until asked; the layers the compensator reads and those the
    merger writes (which must be declared) are loaded from the checkpoint."""

    name = "offloaded"

    def __init__(self, offloaded: Any):
        self.offloaded = offloaded
        self.load = offloaded.load_layers

    def reading(self, layers: set[int]) -> None:
        self.load(layers)

    def writing(self, layers: set[int] | None, merger: str) -> None:
        if layers is None:
            from replaceme.errors import ReplacemeError

            raise ReplacemeError(f"merger '{merger}' does not declare the layers it writes (Merger.modifies), "
                                 "which --offload needs")
        self.load(layers)


class OffloadedVariantTarget(OnDemandTarget):
    """``compare --offload`` (and plan scoring with ``--offload``): merge into a variant of
    the skeleton that owns only the layers the merger writes. The layers the compensator
    reads and those the merger writes are loaded into the skeleton first (as for
    :class:`OnDemandTarget`); once the variant has its own copies of the written ones,
    every decoder layer of the skeleton goes back to the meta device. The variant keeps
    the layers the compensator read (a merge may look at them, e.g. for their device;
    most mergers then remove them) and its written ones; the layer-by-layer engine reads
    the rest from the checkpoint (:mod:`replaceme.offload.engine`)."""

    name = "offloaded-variant"

    def model_for(self, model: nn.Module, adapter: ModelAdapter, layers: set[int] | None) -> nn.Module:
        variant = make_variant(model, adapter, layers)
        self.offloaded.free_all_layers()
        return variant


#: the default strategy (prune in place) and compare's (a variant per method)
IN_PLACE, VARIANT = MergeTarget(), VariantTarget()
