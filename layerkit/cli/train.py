"""layerkit CLI commands: train."""

from . import app  # noqa: F401
