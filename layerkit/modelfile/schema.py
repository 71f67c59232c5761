"""The JSON Schema of model files.

:data:`MODEL_SCHEMA` is the static part, the same for every installation.
:func:`composed_schema` adds every registered layer's, loss's and optimizer's
parameter schemas so editors can validate and autocomplete model files,
third-party layers included (``layerkit schema``). The composition over the
built-in plugins alone (:func:`builtin_schema`, ``layerkit schema --builtin``)
is committed as ``layerkit/schemas/model.schema.json``, the file every shipped
model names in ``$schema`` (a test keeps the two equal).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from layerkit.plugins.registry import Registry

FORMAT_VERSION = 1
SCHEMA_ID = "https://layerkit.dev/schemas/model.schema.json"
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]*$"

#: keys every layer object may have whatever its type
LAYER_COMMON_KEYS = {
    "type": {"type": "string", "description": "Registered layer type, e.g. conv2d."},
    "name": {"type": "string", "pattern": NAME_PATTERN,
             "description": "Unique layer name (default: TYPE_INDEX). 'input' is reserved."},
    "inputs": {
        "description": "Layer name(s) this layer reads ('input' is the model input). "
                     "Default: the previous layer.",
        "oneOf": [
            {"type": "string", "pattern": NAME_PATTERN},
            {"type": "array", "items": {"type": "string", "pattern": NAME_PATTERN}, "minItems": 1},
        ],
    },
    "description": {"type": "string", "description": "Free text, ignored."},
    "trainable": {"type": "boolean", "default": True,
                  "description": "false freezes the layer: training neither updates nor decays its tensors and "
                                 "skips their gradients (batch norm's running statistics still update)."},
}

SCHEDULE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Learning-rate schedule, applied per epoch (warm-up per step).",
    "properties": {
        "type": {"enum": ["constant", "step", "exponential", "cosine"]},
        "step_size": {"type": "integer", "minimum": 1, "description": "step: epochs between decays"},
        "gamma": {"type": "number", "exclusiveMinimum": 0, "maximum": 1,
                  "description": "step/exponential: decay factor"},
        "min_lr": {"type": "number", "minimum": 0, "description": "cosine: final learning rate"},
        "warmup_epochs": {"type": "number", "minimum": 0,
                          "description": "linear warm-up from 0 over this many epochs"},
    },
    "required": ["type"],
    "additionalProperties": False,
}

DATA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "How the dataset is loaded and prepared.",
    "properties": {
        "classes": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 2,
                    "uniqueItems": True,
                    "description": "keep only these labels, relabelled 0..k-1 in this order"},
        "train_limit": {"type": "integer", "minimum": 1, "description": "use at most this many training samples"},
        "test_limit": {"type": "integer", "minimum": 1, "description": "use at most this many test samples"},
        "validation_split": {"type": "number", "minimum": 0, "exclusiveMaximum": 1,
                             "description": "fraction of training data held out for validation"},
        "target": {"enum": ["label", "input"], "default": "label",
                   "description": "what the loss compares the output with: the class label, or the prepared "
                                  "input image itself (an autoencoder; accuracy is then the fraction of pixels "
                                  "on the right side of 0.5)"},
        "normalize": {"enum": ["unit", "standardize", "none"], "default": "unit",
                      "description": "unit: pixels to [0, 1]; standardize: zero mean, unit variance"},
        "layout": {"enum": ["auto", "channels_first", "channels_last"], "default": "auto",
                   "description": "how 4-d image arrays are stored: auto transposes (N, H, W, C) to the "
                                  "model's (C, H, W) when that is unambiguous"},
        "data_dir": {"type": "string", "description": "directory holding the dataset files"},
        "unit": {"enum": ["char", "byte"],
                 "description": "text: one token per character (the default; the text's own vocabulary) or "
                                "per UTF-8 byte"},
        "stride": {"type": "integer", "minimum": 1,
                   "description": "text: tokens between the starts of two windows (default: the window length)"},
        "test_fraction": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1,
                          "description": "text: the last fraction of the text, held out as the test split "
                                         "(default 0.1)"},
        "length": {"type": "integer", "minimum": 1,
                   "description": "copy/reverse/sort: the longest sequence (the model's input is [2 x length]); "
                                  "text: the window length (default: the model's input length)"},
        "min_length": {"type": "integer", "minimum": 1,
                       "description": "copy/reverse/sort: the shortest sequence (default: length; shorter ones "
                                      "are right-padded)"},
        "vocab_size": {"type": "integer", "minimum": 3,
                       "description": "copy/reverse/sort: token ids, <pad> and <sep> included (default 12)"},
        "digits": {"type": "integer", "minimum": 1, "maximum": 17,
                   "description": "addition: digits per number (the model's input is [3 x digits + 2])"},
        "train_samples": {"type": "integer", "minimum": 1,
                          "description": "synthetic tasks: training sequences generated (default 10000)"},
        "test_samples": {"type": "integer", "minimum": 1,
                         "description": "synthetic tasks: test sequences generated (default 1000)"},
        "task_seed": {"type": "integer", "minimum": 0,
                      "description": "synthetic tasks: the seed the sequences are drawn from (default 0)"},
        "augment": {
            "type": "object",
            "description": "random variants of the training images, drawn anew for every batch",
            "properties": {
                "shift": {"type": "integer", "minimum": 0, "maximum": 8, "default": 0,
                          "description": "move each (C, H, W) image by a random whole number of pixels in "
                                         "[-shift, shift] along each axis, zero filled"},
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}

TRAINING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "dataset": {"type": "string", "description": "Registered dataset name, e.g. mnist."},
        "data": DATA_SCHEMA,
        "epochs": {"type": "integer", "minimum": 1, "default": 10},
        "batch_size": {"type": "integer", "minimum": 1, "default": 64},
        "seed": {"type": "integer", "minimum": 0, "default": 0},
        "virtual_shares": {"type": "integer", "minimum": 1,
                           "description": "Compute every batch as this many fixed shares, whatever the number of "
                                          "processes: one process, forked processes and MPI ranks (any count "
                                          "that divides it) then train the same model bit for bit. The "
                                          "shares are part of the training: another count rounds "
                                          "differently. See docs/distributed.md."},
        "init_from": {"type": "string", "minLength": 1,
                      "description": "Start from the weights of a run directory, a saved model folder or a "
                                     "weights .npz (relative to the current directory): every tensor whose "
                                     "layer name and shape match is loaded, the others are initialized."},
        "optimizer": {
            "type": "object",
            "properties": {"type": {"type": "string"}},
            "required": ["type"],
            "description": "Registered optimizer and its parameters.",
        },
        "schedule": SCHEDULE_SCHEMA,
        "weight_decay": {"type": "number", "minimum": 0, "default": 0,
                         "description": "L2 penalty (lambda/2)*||w||^2 on weights (not biases); with adamw the "
                                        "decoupled decay w -= lr*lambda*w instead"},
        "gradient_clipping": {
            "type": "object",
            "description": "clip the loss gradients before each update (PyTorch's clip_grad_value_ then "
                           "clip_grad_norm_); weight decay is added after",
            "properties": {
                "max_norm": {"type": "number", "exclusiveMinimum": 0,
                             "description": "scale all gradients together so their global L2 norm is at most "
                                            "this"},
                "value": {"type": "number", "exclusiveMinimum": 0,
                          "description": "clamp every gradient element to [-value, value]"},
            },
            "minProperties": 1,
            "additionalProperties": False,
        },
        "callbacks": {
            "type": "array",
            "description": "Training callbacks (loggers) registered by plugins, e.g. {\"type\": \"tensorboard\"}; "
                           "'layerkit fit --callback NAME' adds more.",
            "items": {"type": "object", "properties": {"type": {"type": "string"}}, "required": ["type"]},
        },
        "early_stopping": {
            "type": "object",
            "properties": {
                "monitor": {"enum": ["val_loss", "val_accuracy", "test_loss", "test_accuracy",
                                     "train_loss", "train_accuracy"], "default": "val_loss"},
                "patience": {"type": "integer", "minimum": 1, "default": 3},
                "min_delta": {"type": "number", "minimum": 0, "default": 0},
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}

MODEL_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": SCHEMA_ID,
    "title": "layerkit model file",
    "type": "object",
    "properties": {
        "$schema": {"type": "string"},
        "format": {"const": FORMAT_VERSION, "description": "Model file format version."},
        "name": {"type": "string", "pattern": NAME_PATTERN},
        "description": {"type": "string"},
        "input": {
            "type": "object",
            "properties": {
                "shape": {"type": "array", "items": {"type": "integer", "minimum": 1},
                          "minItems": 1, "maxItems": 4,
                          "description": "Per-sample input shape, channels first, e.g. [1, 28, 28], or "
                                         "[T] for a sequence of T token ids."},
                "dtype": {"enum": ["float32", "int64"], "default": "float32",
                          "description": "What the input holds: real values (float32) or integer token ids "
                                         "(int64), which only layers taking token ids (embedding) may read."},
            },
            "required": ["shape"],
            "additionalProperties": False,
        },
        "layers": {
            "type": "array",
            "minItems": 1,
            "items": {"type": "object", "properties": LAYER_COMMON_KEYS, "required": ["type"]},
        },
        "output": {"type": "string", "pattern": NAME_PATTERN,
                   "description": "Name of the output layer (default: the last layer)."},
        "loss": {
            "type": "object",
            "properties": {"type": {"type": "string"}},
            "required": ["type"],
        },
        "training": TRAINING_SCHEMA,
    },
    "required": ["format", "input", "layers"],
    "additionalProperties": False,
}


def params_schema_of(cls: Any) -> dict:
    """A copy of the plugin's parameter schema; a class without one takes no parameters."""
    schema = getattr(cls, "params_schema", None)
    return copy.deepcopy(schema) if isinstance(schema, dict) else {"type": "object", "properties": {}}


def typed_schema(type_name: str, cls: Any, common: dict) -> dict:
    """The schema of one ``{"type": type_name, ...}`` object: the plugin's parameters plus
    the keys every such object may have. Unknown keys are refused unless the plugin
    explicitly allows them, so a typo never silently falls back to a default."""
    schema = params_schema_of(cls)
    props = {**copy.deepcopy(common), **schema.get("properties", {})}
    props["type"] = {"const": type_name}
    schema["properties"] = props
    schema["type"] = "object"
    schema.setdefault("additionalProperties", False)
    schema["required"] = sorted({"type", *schema.get("required", [])})
    return schema


def composed_schema(registry: Registry) -> dict[str, Any]:
    """The full schema: static part plus every registered type's parameters."""
    schema = copy.deepcopy(MODEL_SCHEMA)
    defs: dict[str, Any] = {}

    def branches(kind: str, common: dict) -> list[dict]:
        out = []
        for name in registry.names(kind):
            cls = registry.get(kind, name)
            key = f"{kind}.{name}"
            defs[key] = typed_schema(name, cls, common)
            defs[key]["description"] = getattr(cls, "description", "")
            out.append({"if": {"properties": {"type": {"const": name}}, "required": ["type"]},
                        "then": {"$ref": f"#/$defs/{key}"}})
        return out

    def typed(section: dict, kind: str, common: dict) -> None:
        # with nothing of a kind installed, an empty enum/allOf would make the schema invalid
        names = registry.names(kind)
        if names:
            section["properties"]["type"] = {"type": "string", "enum": names,
                                             "description": f"Registered {kind} type."}
            section["allOf"] = branches(kind, common)

    typed(schema["properties"]["layers"]["items"], "layer", LAYER_COMMON_KEYS)
    typed(schema["properties"]["loss"], "loss", {})
    typed(schema["properties"]["training"]["properties"]["optimizer"], "optimizer", {})
    typed(schema["properties"]["training"]["properties"]["callbacks"]["items"], "callback", {})
    datasets = registry.names("dataset")
    if datasets:
        schema["properties"]["training"]["properties"]["dataset"] = {
            "type": "string", "enum": datasets, "description": "Registered dataset name."}
    schema["$defs"] = defs
    return schema


def builtin_schema() -> dict[str, Any]:
    """The composed schema of the built-in plugins only: what ``layerkit schema`` prints with no
    plugin installed, and the committed ``schemas/model.schema.json``."""
    from layerkit.plugins.manager import load_registry

    return composed_schema(load_registry(entry_points=False, disabled=set()))
