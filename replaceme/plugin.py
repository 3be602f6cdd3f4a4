"""Everything a plugin author needs, from one module.

A method plugin imports only this module::

    from replaceme.plugin import Block, Method, Plan, Selector, hookimpl, option

and its tests only this one too (``from replaceme.plugin import check_method_contract``).
The names below are the public plugin contract: they keep working across
releases (a name that moves stays importable here). What each name is:

- registration: :data:`hookimpl` (mark ``register_selectors``,
  ``register_compensators``, ``register_mergers``, ``register_methods``,
  ``register_healers``, ``register_config_translators`` and ``model_adapter``
  implementations, see :mod:`replaceme.hookspecs`);
- reading the ReplaceMe reference configs (``prune --config``) for your methods:
  :class:`ConfigTranslator`, and the :class:`ReferenceRequest` its ``translate`` receives;
- the stages: :class:`Selector`, :class:`Compensator`, :class:`Merger`, the
  recipe :class:`Method`, and what they receive: :class:`SelectionContext`,
  :class:`CompensationContext`; the optional fourth stage :class:`Healer` (with
  :class:`HealOptions`, :class:`HealContext`);
- compensations a compensator returns and a merger writes: :class:`Compensation`,
  :class:`NoCompensation`, :class:`LayerCompensation`, :class:`LinearMap`,
  :class:`ParameterUpdate`, :class:`ReplacementLayer`;
- options: :func:`option`, :class:`NoOptions`;
- plans: :class:`Block`, :class:`Plan`, :func:`merge_touching`,
  :func:`greedy_non_overlapping`, and the candidate lists shared by the built-in
  selectors: :func:`block_size`, :func:`blocks_of_size`, :func:`first_removable`,
  :func:`single_layers`;
- statistics: :class:`StatsRequest` (what ``stats_request`` returns), and the
  types ``select``/``compensate`` read: :class:`ActivationStats`,
  :class:`ActivationSample`, :class:`BatchActivations`, :class:`GramKey`,
  :class:`GramSums`;
- selecting by what the model loses: :func:`scoring_request`, :class:`PlanScorer`,
  :class:`PlanScore`;
- writing into the model (mergers): :func:`remove_layers`, :func:`keep_layers`,
  :func:`fold_linear_map`; architectures: :class:`ModelAdapter`, :class:`ResidualWrite`;
- errors: :class:`ReplacemeError` (one line for the user, exit 2);
- in-process plugins: :func:`register_plugin`, :func:`unregister_plugin`;
- the contract kit for a plugin's own tests (:mod:`replaceme.testing`):
  :func:`check_method_contract`, :func:`temporary_plugin`, :func:`tiny_model`,
  :func:`tiny_config`, :func:`make_tokenizer`, :func:`calibration_text`,
  :data:`ARCHS`, :data:`DIRECT_ARCHS`, :data:`POST_NORM_ARCHS`.

Importing this module does not import torch (``replaceme methods`` loads every
plugin and must stay fast): the names whose modules need torch are imported on
first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from replaceme.components import (
    Compensation,
    CompensationContext,
    Compensator,
    LayerCompensation,
    LinearMap,
    Merger,
    Method,
    NoCompensation,
    ParameterUpdate,
    ReplacementLayer,
    SelectionContext,
    Selector,
)
from replaceme.config_translator import ConfigTranslator, ReferenceRequest
from replaceme.errors import ReplacemeError
from replaceme.healer import HealContext, Healer, HealOptions
from replaceme.hookspecs import hookimpl
from replaceme.options import NoOptions, option
from replaceme.plan import (
    Block,
    Plan,
    block_size,
    blocks_of_size,
    first_removable,
    greedy_non_overlapping,
    merge_touching,
    single_layers,
)
from replaceme.stats.request import StatsRequest

if TYPE_CHECKING:
    from replaceme.adapters import ModelAdapter, ResidualWrite
    from replaceme.registry import register_plugin, unregister_plugin
    from replaceme.scoring import PlanScore, PlanScorer, scoring_request
    from replaceme.stats.store import ActivationSample, ActivationStats, BatchActivations, GramKey, GramSums
    from replaceme.surgery import fold_linear_map, keep_layers, remove_layers
    from replaceme.testing import (
        ARCHS,
        DIRECT_ARCHS,
        POST_NORM_ARCHS,
        calibration_text,
        check_method_contract,
        make_tokenizer,
        temporary_plugin,
        tiny_config,
        tiny_model,
    )

#: name -> module, for the names imported on first use (their modules import torch or sit higher up)
_LAZY = {
    **dict.fromkeys(("ModelAdapter", "ResidualWrite"), "replaceme.adapters"),
    **dict.fromkeys(("register_plugin", "unregister_plugin"), "replaceme.registry"),
    **dict.fromkeys(("PlanScore", "PlanScorer", "scoring_request"), "replaceme.scoring"),
    **dict.fromkeys(("ActivationSample", "ActivationStats", "BatchActivations", "GramKey", "GramSums"),
                    "replaceme.stats.store"),
    **dict.fromkeys(("fold_linear_map", "keep_layers", "remove_layers"), "replaceme.surgery"),
    **dict.fromkeys(("ARCHS", "DIRECT_ARCHS", "POST_NORM_ARCHS", "calibration_text", "check_method_contract",
                     "make_tokenizer", "temporary_plugin", "tiny_config", "tiny_model"), "replaceme.testing"),
}

__all__ = [
    "hookimpl",
    "Selector", "Compensator", "Merger", "Method", "SelectionContext", "CompensationContext",
    "Healer", "HealOptions", "HealContext",
    "Compensation", "NoCompensation", "LayerCompensation", "LinearMap", "ParameterUpdate", "ReplacementLayer",
    "option", "NoOptions",
    "Block", "Plan", "merge_touching", "greedy_non_overlapping",
    "block_size", "blocks_of_size", "first_removable", "single_layers",
    "StatsRequest",
    "ConfigTranslator", "ReferenceRequest",
    "ReplacemeError",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'replaceme.plugin' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
