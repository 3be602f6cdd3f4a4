"""What a plugin gives ``prune --config`` to read the ReplaceMe reference configs.

The core maps the reference's generic keys (model, dataset, sizes, save path...);
the method-specific ones belong to the plugin whose methods they configure. A
plugin registers a :class:`ConfigTranslator` through the
``register_config_translators`` hook: the reference method names it maps to its
methods, the keys it documents (the README's mapping table lists them), and a
``translate`` function that turns those keys into method options. The options it
returns are validated against the registry before any work: an option that no
registered stage has is a one-line error, so renaming an option cannot silently
change what ``--config`` accepts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from replaceme.errors import ReplacemeError


@dataclass
class ReferenceRequest:
    """What a translator reads: its keys present in the file, the method, and the
    ``prune`` parameters and options already mapped (final: defaults applied)."""

    #: the translator's own keys that the file sets, with their values
    values: dict[str, Any]
    #: our method name (after the reference's names are mapped), or None
    method: str | None
    #: the method as the file wrote it
    reference_method: Any
    #: the ``prune`` parameters mapped from the file (``calib_samples``, ``max_length``, ...)
    params: Mapping[str, Any]
    #: the method options mapped so far (a translator must not overwrite what the user set)
    options: Mapping[str, Any]
    #: ``warn(key, why)``: the key is ignored, with a warning naming it
    warn: Callable[[str, str], None]
    #: ``reject(key, why)``: the error to raise when the key asks for what cannot be done
    reject: Callable[[str, str], ReplacemeError]


@dataclass(frozen=True)
class ConfigTranslator:
    """The reference-config keys of one plugin's methods.

    Args:
        name: kebab-case name (unique among translators).
        methods: reference method name -> our method name (``{"lstsq": "replaceme-lstsq"}``).
        keys: reference key -> what it becomes here, one Markdown line each (the
            README's table "Coming from the ReplaceMe repository").
        translate: ``translate(request: ReferenceRequest) -> dict`` of method options;
            called once per reference config, after the generic keys are mapped.
        marks_reference: keys of ``keys`` that only a reference config has (their
            presence alone makes a file a reference config).
    """

    name: str
    methods: Mapping[str, str]
    keys: Mapping[str, str]
    translate: Callable[[ReferenceRequest], dict[str, Any]]
    marks_reference: frozenset[str] = field(default_factory=frozenset)
