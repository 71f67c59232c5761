"""JSON-schema pieces for layer authors' ``params_schema``.

A layer declares its parameters as a JSON schema, which the model-file code
(``layerkit.modelfile``) validates model files against and fills defaults from. The
pieces that many layers share live here, in the tier both the layers and the model-file
code may import (layers must not import ``layerkit.modelfile``).
"""

from __future__ import annotations

from typing import Any


def int_or_pair_schema(minimum: int, description: str, default: Any = None) -> dict[str, Any]:
    """A parameter given as one integer or as ``[h, w]`` (a kernel size, a stride), each at least ``minimum``."""
    schema: dict[str, Any] = {
        "oneOf": [
            {"type": "integer", "minimum": minimum},
            {"type": "array", "items": {"type": "integer", "minimum": minimum}, "minItems": 2, "maxItems": 2},
        ],
        "description": description,
    }
    if default is not None:
        schema["default"] = default
    return schema
