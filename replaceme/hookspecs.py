"""The whole plugin contract of replaceme (pluggy hook specifications).

A plugin is a module (or package) registered under the ``replaceme`` entry-point
group that implements some of these hooks with ``@replaceme.hookimpl``::

    [project.entry-points.replaceme]
    my_method = "replaceme_my_method"

Registration hooks receive a ``register`` callable and call it once per class
they contribute. Hooks only ever grow by new keyword arguments, so implement
them with the argument names you use and nothing else.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("replaceme")
hookimpl = pluggy.HookimplMarker("replaceme")


@hookspec
def register_selectors(register):
    """Register layer-selection strategies.

    Args:
        register: call ``register(SelectorClass)`` for each
            :class:`replaceme.components.Selector` subclass.
    """


@hookspec
def register_compensators(register):
    """Register what can replace a removed block.

    Args:
        register: call ``register(CompensatorClass)`` for each
            :class:`replaceme.components.Compensator` subclass.
    """


@hookspec
def register_mergers(register):
    """Register ways to write a compensation into the model.

    Args:
        register: call ``register(MergerClass)`` for each
            :class:`replaceme.components.Merger` subclass.
    """


@hookspec
def register_methods(register):
    """Register named recipes (selector + compensator + merger + defaults).

    Args:
        register: call ``register(Method(...))`` for each
            :class:`replaceme.components.Method`.
    """


@hookspec
def register_healers(register):
    """Register ways to train a pruned model back after the merge (the fourth stage).

    Called once when plugins are loaded, after the methods. A healer is used when
    a method names it (``Method.healer``) or the user does (``--heal NAME``); its
    training options are :class:`replaceme.healer.HealOptions` plus its own.

    Args:
        register: call ``register(HealerClass)`` for each
            :class:`replaceme.healer.Healer` subclass.
    """


@hookspec
def register_config_translators(register):
    """Register how ``prune --config`` reads your methods' keys in the ReplaceMe
    reference configs (github.com/mts-ai/ReplaceMe).

    Called once when plugins are loaded, after the healers. The options a
    translator produces are checked against the registered stages' options before
    any work (an unknown one is a one-line error).

    Args:
        register: call ``register(ConfigTranslator(...))`` for each
            :class:`replaceme.config_translator.ConfigTranslator`.
    """


@hookspec(firstresult=True)
def model_adapter(model):
    """Return a :class:`replaceme.adapters.ModelAdapter` for ``model`` if you know
    its architecture, else None. Called when a model is loaded; the first
    non-None answer wins, and plugins registered later are asked first.
    """
