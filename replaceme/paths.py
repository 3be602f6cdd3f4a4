"""Compatibility module: re-exports from :mod:`replaceme.outputs` (how outputs are
checked, locked and written), :mod:`replaceme.cache_location` (``cache_dir``) and
:mod:`replaceme.schema` (``read_yaml_mapping``), where these now live. New code
imports from those modules."""

from replaceme.cache_location import cache_dir
from replaceme.outputs import *  # noqa: F403
from replaceme.outputs import __all__ as _outputs_all
from replaceme.schema import read_yaml_mapping

__all__ = ["cache_dir", "read_yaml_mapping", *_outputs_all]
