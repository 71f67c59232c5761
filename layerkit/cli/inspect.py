"""layerkit CLI commands: inspect."""

from . import app  # noqa: F401
