"""Reference-config translators: plugins own their keys, and what they produce is
checked against the registry (a renamed option is an error, not a silent change)."""

from __future__ import annotations

import logging
import pytest
import yaml

from replaceme.config_file import read_config
from replaceme.errors import ReplacemeError
from replaceme.plugin import ConfigTranslator, hookimpl, temporary_plugin


class _TranslatorPlugin:
    """An in-process plugin that registers the given translators."""

    def __init__(self, *translators: ConfigTranslator):
        self.translators = translators

    @hookimpl
    def register_config_translators(self, register):
        for translator in self.translators:
            register(translator)


def _reference(path, **values):
    path.write_text(yaml.safe_dump({"model_path": "m", "dataset": "d.txt", "method": "lstsq", "layers_to_skip": 2,
                                    **values}), encoding="utf-8")
    return path


def _knob_translator(option_name: str) -> ConfigTranslator:
    """A translator of the reference key ``knob`` into the option ``option_name``
    (``alpha`` is the lstsq option; a misspelt name plays a renamed option)."""
    return ConfigTranslator("knob", {"knob-method": "replaceme-lstsq"}, {"knob": f"`-o {option_name}`"},
                            lambda request: {option_name: request.values["knob"]} if "knob" in request.values else {})


def test_a_translators_options_must_be_registered_options(tmp_path):
    config = _reference(tmp_path / "ref.yaml", knob=0.5)
    with temporary_plugin("knob-ok", _TranslatorPlugin(_knob_translator("alpha"))):
        params, options = read_config(config)
        from replaceme.config_file import REFERENCE_KEYS
    assert options["alpha"] == 0.5 and params["layers"] == 2
    assert REFERENCE_KEYS["knob"] == "`-o alpha`" and "`knob-method` → `-m replaceme-lstsq`" in REFERENCE_KEYS["method"]
    with temporary_plugin("knob-renamed", _TranslatorPlugin(_knob_translator("alpha_ridge"))):
        with pytest.raises(ReplacemeError) as err:
            read_config(config)
    message = str(err.value)
    assert "\n" not in message and "translator 'knob' produced option 'alpha_ridge'" in message
    assert "did you mean 'alpha'" in message
    # without the plugin the key is nobody's: unknown
    with pytest.raises(ReplacemeError, match="unknown key 'knob'"):
        read_config(config)


def test_the_linear_plugin_owns_its_reference_keys():
    from replaceme.config_file import CORE_REFERENCE_KEYS, REFERENCE_KEYS
    from replaceme.registry import registry

    linear = registry().config_translators["linear"]
    assert registry().owners[("config_translators", "linear")] == "linear"
    assert {"alpha", "diag", "loss", "solver", "accurate", "thri", "two_vectors"} == set(linear.keys)
    assert not set(linear.keys) & set(CORE_REFERENCE_KEYS)
    assert dict(linear.methods) == {"lstsq": "replaceme-lstsq", "cosine": "replaceme-cosine"}
    assert REFERENCE_KEYS["method"] == "`lstsq` → `-m replaceme-lstsq`, `cosine` → `-m replaceme-cosine`"


def test_a_translator_taking_anothers_key_is_skipped_with_a_warning(tmp_path, caplog):
    thief = ConfigTranslator("thief", {}, {"solver": "mine"}, lambda request: {})
    config = _reference(tmp_path / "ref.yaml", method="cosine", solver="l-bfgs")
    with caplog.at_level(logging.WARNING), temporary_plugin("thief", _TranslatorPlugin(thief)):
        _, options = read_config(config)
    assert options["solver"] == "lbfgs"  # still the linear plugin's translation
    assert "plugin 'thief'" in caplog.text and "reference key 'solver' is already translated by 'linear'" in caplog.text
