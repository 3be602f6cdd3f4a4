"""``replaceme compare``: several methods, one model, one calibration pass, one evaluation."""

from replaceme.compare.plan import ComparePlan, MethodEntry

__all__ = ["ComparePlan", "MethodEntry"]
