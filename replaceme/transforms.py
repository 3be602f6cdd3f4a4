"""``transforms.safetensors``: the estimated maps of a prune, saved on their own (``--save-transforms``).

The ReplaceMe reference can save its linear transforms apart from the model
(``save_transform_only``); ``prune --save-transforms`` writes them beside the
pruned model (which has them folded in already), for analysis or to apply them
to another copy of the source weights. Layout (safetensors, readable with any
safetensors reader; :func:`read_transforms` here):

- ``removed_blocks``: int64 ``[K, 2]``, each removed block ``[start, end)`` in the
  **source** model's layer numbering, in plan order;
- ``transform.<i>``: the ``i``-th linear map (float64, as estimated), ``[h, h]``,
  applied as ``r ↦ r T`` to what layer ``layer`` of the source model adds to the
  residual stream through its MLP; for a diagonal map (``-o diag true``) the
  ``[h]`` diagonal;
- header metadata ``replaceme_transforms``: JSON ``{"format": 1, "maps": [{"tensor":
  "transform.<i>", "block": [s, e], "layer": l, "diagonal": bool}, ...]}``.

A method without linear maps (removal, LLM-Streamline, LaCo) writes only
``removed_blocks``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TRANSFORMS_FILE = "transforms.safetensors"
METADATA_KEY = "replaceme_transforms"
FORMAT = 1


def transform_tensors(plan_blocks: list[Any], compensations: list[Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """``(tensors, metadata)`` of the file for a plan's blocks and its compensations."""
    import torch

    from replaceme.components import LinearMap

    tensors: dict[str, Any] = {
        "removed_blocks": torch.tensor([[b.start, b.end] for b in plan_blocks], dtype=torch.int64).reshape(-1, 2)}
    maps = []
    for c in compensations:
        if not isinstance(c, LinearMap) or c.transform is None:
            continue
        name = f"transform.{len(maps)}"
        t = c.transform.detach().to("cpu", torch.float64)
        tensors[name] = (torch.diagonal(t) if c.diagonal and t.dim() == 2 else t).contiguous()
        maps.append({"tensor": name, "block": [c.block.start, c.block.end], "layer": c.layer, "diagonal": bool(c.diagonal)})
    return tensors, {METADATA_KEY: json.dumps({"format": FORMAT, "maps": maps})}


def write_transforms(directory: str | Path, plan_blocks: list[Any], compensations: list[Any]) -> Path:
    """Write ``transforms.safetensors`` into ``directory`` (a pruned model being saved)."""
    from safetensors.torch import save_file

    tensors, metadata = transform_tensors(plan_blocks, compensations)
    path = Path(directory) / TRANSFORMS_FILE
    save_file(tensors, str(path), metadata=metadata)
    return path


def read_transforms(path: str | Path) -> tuple[list[tuple[int, int]], list[dict[str, Any]]]:
    """``(removed blocks, maps)`` of a transforms file; each map is its metadata entry plus ``"transform"``."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get(METADATA_KEY, "{}"))
        blocks = [tuple(int(v) for v in row) for row in f.get_tensor("removed_blocks").tolist()]
        maps = [{**entry, "transform": f.get_tensor(entry["tensor"])} for entry in meta.get("maps", [])]
    return blocks, maps
