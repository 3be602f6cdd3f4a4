"""How ``prune --config`` reads the ReplaceMe reference's keys for ``lstsq`` and ``cosine``.

The reference (github.com/mts-ai/ReplaceMe) names its methods ``lstsq`` and
``cosine``; its ``alpha``, ``diag``, ``loss``, ``solver``, ``accurate``, ``thri``
and ``two_vectors`` keys configure T. This translator maps them to our options,
warns about those the reference ignores too, rejects what we cannot do, and
gives ``cosine`` the reference's data budget and optimiser.
"""

from __future__ import annotations

import sys
from typing import Any

from replaceme.config_translator import ConfigTranslator, ReferenceRequest

METHODS = {"lstsq": "replaceme-lstsq", "cosine": "replaceme-cosine"}
#: reference key -> what it becomes here (rows of the README's mapping table)
KEYS = {
    "alpha": "`-o alpha` (lstsq)",
    "diag": "`-o diag` (lstsq; `true` is rejected for cosine)",
    "loss": "`-o loss` (cosine: `cosine`, `mse`; `elasticnet` is rejected); ignored for lstsq, as there",
    "solver": "`-o solver` (cosine: `adam`, `l-bfgs` → `lbfgs`; `cg`, `trust-ncg` are rejected); ignored for lstsq",
    "accurate": "`-o accurate` (cosine); ignored for lstsq, as there",
    "thri": "`false`: nothing to do; `true` (lower-triangular T) is rejected",
    "two_vectors": "`false`: nothing to do; `true` (rank-one T) is rejected",
}
#: reference flags whose default is harmless and whose other value we cannot do
_FLAGS_WE_LACK = {"thri": "a lower-triangular T", "two_vectors": "a rank-one T"}
_SOLVERS = {"l-bfgs": "lbfgs", "lbfgs": "lbfgs", "adam": "adam"}


def translate(request: ReferenceRequest) -> dict[str, Any]:
    """The options of a reference config's ``lstsq``/``cosine`` keys (see :data:`KEYS`)."""
    cosine = request.method == METHODS["cosine"]
    options: dict[str, Any] = {}
    for key, value in request.values.items():
        if key in _FLAGS_WE_LACK:
            if value:
                raise request.reject(key, f"{_FLAGS_WE_LACK[key]} is not implemented")
        elif key in ("loss", "solver", "accurate") and not cosine:
            request.warn(key, f"it only applies to method cosine (the reference's {request.reference_method} "
                              "ignores it too)")
        elif key == "solver":
            if str(value) not in _SOLVERS:
                raise request.reject(key, "supported solvers: adam, l-bfgs")
            options["solver"] = _SOLVERS[str(value)]
        elif key == "loss" and value not in ("cosine", "mse"):
            raise request.reject(key, "supported losses: cosine, mse")
        elif key == "alpha" and cosine:
            request.warn(key, "the reference's cosine method has no ridge term")
        elif key == "diag" and cosine:
            if value:
                raise request.reject(key, "a diagonal T is available for lstsq only")
        else:
            options[key] = value
    if cosine:
        given = {**request.options, **options}
        if "preset" not in given:
            options["preset"] = "reference"  # Adam from T = I, as there (our default converges further)
        samples, length = request.params.get("calib_samples", sys.maxsize), request.params.get("max_length")
        if "token_budget" not in given and samples < sys.maxsize and length is not None:
            options["token_budget"] = int(samples) * int(length)  # the reference keeps every calibration token
        if int(given.get("num_blocks", 1)) > 1 and "refit" not in given:
            options["refit"] = True  # each block fitted on the model with the earlier ones replaced, as there
    return options


TRANSLATOR = ConfigTranslator("linear", METHODS, KEYS, translate, marks_reference=frozenset(_FLAGS_WE_LACK))
