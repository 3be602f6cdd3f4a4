"""A model that is never whole in memory: a meta-device skeleton over a safetensors checkpoint.

``--offload`` (GUIDE §5) builds the model's module tree with accelerate's
``init_empty_weights`` (parameters on the ``meta`` device, no memory; buffers such
as rotary frequencies are real, since they are computed, not stored) and
materialises from the checkpoint only what is needed at a time:

- the small non-layer parameters (final norm, position embeddings, projections),
  once; the input embedding never: the rows of the calibration tokens are read
  from the checkpoint in chunks and passed as ``inputs_embeds``;
- one decoder layer at a time during the statistics pass
  (:mod:`replaceme.stats.layerwise`), freed afterwards;
- for compensation and merging, only the layers a method touches (the block's
  first layer when a replacement layer is copied from it, and the layers the
  merger declares it writes, ``Merger.modifies``: the layer before each block
  for a folded map); the mergers then run unchanged on the skeleton (removing
  meta layers costs nothing);
- the pruned checkpoint is written by streaming (:meth:`OffloadedModel.save`):
  untouched tensors are copied from the input checkpoint under their new layer
  indices, the modified layers come from the skeleton.

Why our own code rather than accelerate's offload hooks (``cpu_offload``,
``disk_offload``, ``dispatch_model``) or llm-compressor's sequential pipeline:
accelerate's hooks move each layer's weights in and out *per forward call*, i.e.
once per calibration batch, and keep a full CPU (or disk) copy of the weights;
we need the transpose (each layer loaded once, every batch through it), which
is what llm-compressor's sequential pipeline does, but that pipeline traces the
model with torch.fx into subgraphs, is tied to its own modifiers and calibration
loop, and pulls in a large dependency. Catching each layer's call arguments
with a stub (below) gives the same layer-major order with the model's own
forward code, for every architecture transformers supports.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from replaceme.adapters import ModelAdapter
from replaceme.checkpoint import Checkpoint, PlannedTensor, stored_blocks, write_checkpoint
from replaceme.errors import ReplacemeError

log = logging.getLogger(__name__)


#: attribute naming the checkpoint layer a decoder layer module was built from; it survives
#: ``copy.deepcopy``, so the layers of a variant (:mod:`replaceme.variant`) know it too
ORIGIN = "_replaceme_origin"


def _is_meta(t: torch.Tensor) -> bool:
    return t.device.type == "meta"


def is_resident(module: nn.Module) -> bool:
    """Whether every parameter of ``module`` holds real values (none on the meta device)."""
    return not any(_is_meta(p) for p in module.parameters())


def free_parameters(module: nn.Module) -> None:
    """Put every parameter of ``module`` back on the meta device (buffers stay)."""
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is not None and not _is_meta(p):
                sub._parameters[name] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)


def _renamed(model: Any, stored: str) -> str:
    """The parameter name transformers loads checkpoint tensor ``stored`` into (its
    renamings for the model class, e.g. GPT-NeoX's ``embed_out.`` -> ``lm_head.``)."""
    import re

    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    rules = get_checkpoint_conversion_mapping(type(model).__name__) or \
        get_checkpoint_conversion_mapping(model.config.model_type) or []
    for rule in rules:
        sources, targets = getattr(rule, "source_patterns", None), getattr(rule, "target_patterns", None)
        if type(rule).__name__ == "WeightRenaming" and len(sources or []) == 1 and len(targets or []) == 1:
            stored = re.sub(sources[0], targets[0], stored)
    return stored


class OffloadedModel:
    """A skeleton model whose weights stay in ``checkpoint`` until asked for.

    Attributes:
        model: the Hugging Face model, parameters on ``meta`` unless materialised.
        adapter: where its layers are.
        checkpoint: the input weights.
        dtype: the run's dtype (floating tensors are cast to it).
        device: the compute device.
    """

    def __init__(self, model: Any, adapter: ModelAdapter, checkpoint: Checkpoint, dtype: torch.dtype, device: str):
        self.model = model
        self.adapter = adapter
        self.checkpoint = checkpoint
        self.dtype = dtype
        self.device = torch.device(device)
        self.layers_path = adapter.layers_path
        self.num_layers = adapter.num_layers(model)
        self.origin = {id(layer): i for i, layer in enumerate(adapter.layers(model))}
        for i, layer in enumerate(adapter.layers(model)):
            setattr(layer, ORIGIN, i)
        embedding = model.get_input_embeddings()
        output = model.get_output_embeddings()
        self._skip = {id(embedding.weight)} | ({id(output.weight)} if output is not None else set())
        self.embedding_name = self._name_of(embedding.weight)
        names = self._checkpoint_names()
        layer_prefix = self.layers_path + "."
        rest = [n for n, p in model.named_parameters() if not n.startswith(layer_prefix) and id(p) not in self._skip]
        self._materialise(model, "", [n for n in rest if n in names])
        self._buffers_to(model, layer_prefix)
        #: whether the decoder layers return a tuple (learned from the first layer run)
        self.returns_tuple = False
        #: bytes the engine may keep on disk between layers (None: half the free space, see
        #: :mod:`replaceme.offload.budget`); the sweeps each pass needed are recorded
        self.disk_budget: int | None = None
        self.sweeps: dict[str, int] = {}

    # ----- names

    def _name_of(self, param: torch.Tensor) -> str:
        for name, p in self.model.named_parameters():
            if p is param:
                return name
        raise RuntimeError("parameter not in model")

    def _checkpoint_names(self) -> set[str]:
        """Check the checkpoint against the skeleton. Decoder-layer tensors must be
        stored under their module names; other tensors may be renamed in the
        checkpoint (transformers' conversion mappings, e.g. GPT-NeoX's
        ``embed_out``) as long as no materialised parameter needs them: they are
        copied to the output verbatim, as ``save_pretrained`` writes them."""
        names = set(self.checkpoint.names())
        state = set(self.model.state_dict())
        layer_prefix = self.layers_path + "."
        unknown = sorted(n for n in names - state if n.startswith(layer_prefix))
        if unknown:
            raise ReplacemeError(
                f"--offload: checkpoint tensor '{unknown[0]}' has no place in the model built from its config "
                "(a renamed or converted layer layout is not supported with --offload)"
            )
        skipped = {n for n, p in self.model.named_parameters() if id(p) in self._skip}
        missing = sorted(n for n, _ in self.model.named_parameters()
                         if n not in names and n not in skipped and not self._tied(n))
        if missing:
            raise ReplacemeError(f"--offload: the checkpoint has no tensor '{missing[0]}'")
        if self.embedding_name not in names:
            raise ReplacemeError(f"--offload: the checkpoint has no input embedding '{self.embedding_name}'")
        return names

    def _tied(self, name: str) -> bool:
        params = dict(self.model.named_parameters(remove_duplicate=False))
        p = params.get(name)
        return p is not None and any(q is p and other != name and other in self.checkpoint for other, q in params.items())

    def layer_prefix(self, index: int) -> str:
        return f"{self.layers_path}.{index}."

    # ----- materialising

    def _materialise(self, root: nn.Module, prefix: str, names: list[str]) -> None:
        values = self.checkpoint.read(prefix + n for n in names)
        state = {}
        for n in names:
            t = values[prefix + n]
            state[n] = t.to(self.device, self.dtype if t.is_floating_point() else t.dtype)
        root.load_state_dict(state, strict=False, assign=True)

    def _buffers_to(self, root: nn.Module, skip_prefix: str = "") -> None:
        for name, buf in list(root.named_buffers()):
            if skip_prefix and name.startswith(skip_prefix):
                continue
            owner_name, _, attr = name.rpartition(".")
            owner = root.get_submodule(owner_name) if owner_name else root
            owner._buffers[attr] = buf.to(self.device)

    def load_layer(self, index: int) -> nn.Module:
        """Materialise decoder layer ``index`` (original numbering) on the device."""
        return self.load_into(self._by_origin(index), index)

    def load_into(self, layer: nn.Module, index: int) -> nn.Module:
        """Materialise checkpoint layer ``index`` into the module ``layer`` (the
        skeleton's own, or the same layer of a variant) on the device."""
        prefix = self.layer_prefix(index)
        names = [n[len(prefix):] for n in self.checkpoint.names() if n.startswith(prefix)]
        self._materialise(layer, prefix, names)
        self._buffers_to(layer)
        still_meta = [n for n, p in layer.named_parameters() if _is_meta(p)]
        if still_meta:
            raise ReplacemeError(f"--offload: the checkpoint has no tensor '{prefix}{still_meta[0]}'")
        return layer

    def free_layer(self, index: int) -> None:
        """Put decoder layer ``index`` (original numbering) of the skeleton back on the meta device."""
        self.free(self._by_origin(index))

    @staticmethod
    def free(module: nn.Module) -> None:
        """Put ``module``'s parameters back on the meta device and return the memory to the system."""
        from replaceme.resources import release_free_memory

        free_parameters(module)
        release_free_memory()

    def free_all_layers(self) -> None:
        """Put every decoder layer of the skeleton back on the meta device (after a
        compensation or merge that needed some of them)."""
        for layer in self.adapter.layers(self.model):
            if any(not _is_meta(p) for p in layer.parameters()):
                self.free(layer)

    @contextlib.contextmanager
    def output_head(self, *models: nn.Module):
        """Within the block, the output embedding of each of ``models`` (the skeleton, a
        variant) holds the LM head read once from the checkpoint (the input embedding
        when they are tied); it is put back on meta afterwards."""
        modules = [model.get_output_embeddings() for model in models]
        if any(module is None for module in modules):
            raise ReplacemeError("--offload: the model has no output embedding (LM head)")
        name = self.head_name
        weight = nn.Parameter(self.checkpoint.read([name])[name].to(self.device, self.dtype), requires_grad=False)
        before = [module._parameters["weight"] for module in modules]
        for module in modules:
            module._parameters["weight"] = weight
        try:
            yield
        finally:
            for module, full in zip(modules, before):
                module._parameters["weight"] = full
            del weight
            from replaceme.resources import release_free_memory

            release_free_memory()

    @functools.cached_property
    def head_name(self) -> str:
        """The checkpoint tensor of the LM head: stored under the module's name, or a name
        transformers renames on loading (GPT-NeoX's ``embed_out``), or the input
        embedding's when the two are tied."""
        output = self.model.get_output_embeddings()
        if output is None or output.weight is self.model.get_input_embeddings().weight:
            return self.embedding_name
        name = self._name_of(output.weight)
        if name in self.checkpoint:
            return name
        for stored in self.checkpoint.names():
            if _renamed(self.model, stored) == name:
                return stored
        if getattr(self.model.config, "tie_word_embeddings", False):
            return self.embedding_name
        raise ReplacemeError(f"--offload: the checkpoint has no LM head '{name}'")

    def _by_origin(self, index: int) -> nn.Module:
        for layer in self.adapter.layers(self.model):
            if self.origin.get(id(layer)) == index:
                return layer
        raise KeyError(index)

    def load_layers(self, indices: set[int]) -> None:
        """Materialise decoder layers ``indices`` (original numbering) that are not yet in memory."""
        for index in sorted(indices):
            layer = self._by_origin(index)
            if any(_is_meta(p) for p in layer.parameters()):
                self.load_layer(index)

    def describe(self) -> dict[str, Any]:
        """For ``pruning.json``: what was read layer by layer, and what is resident now."""
        layers = self.adapter.layers(self.model)
        resident = [k for k, layer in enumerate(layers) if any(not _is_meta(p) for p in layer.parameters())]
        return {
            "enabled": True,
            "checkpoint_bytes": self.parameter_bytes(),
            "device": str(self.device),
            "layers_in_memory_at_save": resident,
            "disk_budget_bytes": self.disk_budget,
            "sweeps": dict(self.sweeps),
        }

    def window_groups(self, window_bytes: list[int], purpose: str, directory: Any = None) -> list[list[int]]:
        """Batches (by position) grouped into sweeps over the layers whose window of
        activations on disk fits the budget (:func:`replaceme.offload.budget.sweeps`)."""
        from replaceme.offload.budget import resolve_budget, sweeps

        budget = resolve_budget(self.disk_budget, directory)
        groups = sweeps(window_bytes, budget)
        self.sweeps[purpose] = max(self.sweeps.get(purpose, 0), len(groups))
        if len(groups) > 1:
            log.info("%s: %d sweeps over the layers (%.1f GB of activations per sweep at most, budget %.1f GB)",
                     purpose, len(groups), max(sum(window_bytes[k] for k in g) for g in groups) / 2**30, budget / 2**30)
        return groups

    def fingerprint(self) -> str:
        """The checkpoint's fingerprint (for ``compare``'s row keys):
        :func:`replaceme.model_files.checkpoint_fingerprint`, as for a model loaded whole."""
        from replaceme.model_files import checkpoint_fingerprint

        return checkpoint_fingerprint(list(self.checkpoint.files.values()),
                                      self.model.config.to_json_string(use_diff=False))

    def parameter_bytes(self) -> int:
        """Bytes of the checkpoint's tensors (at the run's dtype for floating ones)."""
        total = 0
        for name in self.checkpoint.names():
            dtype, shape = self.checkpoint.info(name)
            dtype = self.dtype if dtype.is_floating_point else dtype
            total += PlannedTensor(name, dtype, shape, list).nbytes
        return total

    # ----- running

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``inputs_embeds [B, T, h]`` on the device, computed by the model's own
        input-embedding module (which may scale, as Gemma's does) over a compact
        weight holding only the rows of the tokens in ``input_ids``, read from the checkpoint."""
        unique, inverse = torch.unique(input_ids, return_inverse=True)
        rows = self.checkpoint.read_rows(self.embedding_name, unique).to(self.device, self.dtype)
        embedding = self.model.get_input_embeddings()
        full = embedding._parameters["weight"]
        embedding._parameters["weight"] = nn.Parameter(rows, requires_grad=False)
        try:
            return embedding(inverse.to(self.device))
        finally:
            embedding._parameters["weight"] = full

    # ----- writing

    def output_tensors(self) -> list[PlannedTensor]:
        """The tensors of the (pruned) skeleton, in checkpoint order: untouched ones
        copied from the input under their new layer index, materialised ones from the modules."""
        prefix = self.layers_path + "."
        ck = self.checkpoint
        out: list[PlannedTensor] = []

        def planned(name: str, source: str | None, module_tensor: torch.Tensor | None) -> PlannedTensor:
            if module_tensor is not None and not _is_meta(module_tensor):
                t = module_tensor
                return PlannedTensor(name, t.dtype, tuple(t.shape), lambda: [t])
            dtype, shape = ck.info(source)
            dtype = self.dtype if dtype.is_floating_point else dtype
            return PlannedTensor(name, dtype, shape, lambda: stored_blocks(ck, source))

        for name in ck.names():
            if not name.startswith(prefix):
                out.append(planned(name, name, None))
        for k, layer in enumerate(self.adapter.layers(self.model)):
            state = layer.state_dict(keep_vars=True)
            old = self.origin.get(id(layer))
            if old is None:  # a new module (e.g. a trained replacement layer)
                for suffix, t in state.items():
                    if _is_meta(t):
                        raise RuntimeError(f"new layer {k} has an unmaterialised tensor {suffix}")
                    out.append(planned(f"{prefix}{k}.{suffix}", None, t))
                continue
            old_prefix = self.layer_prefix(old)
            for name in ck.names():
                if name.startswith(old_prefix):
                    suffix = name[len(old_prefix):]
                    out.append(planned(f"{prefix}{k}.{suffix}", name, state.get(suffix)))
        return out

    def save(self, directory: Path, max_shard_bytes: int = 2 * 2**30) -> None:
        """Write the pruned weights (streaming) and config into ``directory``."""
        from replaceme.resources import release_free_memory

        release_free_memory()
        write_checkpoint(directory, self.output_tensors(), max_shard_bytes)
        self.model.config.save_pretrained(directory)
        generation = getattr(self.model, "generation_config", None)
        if generation is not None and self.model.can_generate():
            generation.save_pretrained(directory)
