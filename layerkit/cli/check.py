"""layerkit CLI commands: check."""

from . import app  # noqa: F401
