"""layerkit: neural-network layers as plugins, models as JSON, gradients you can trust."""

__version__ = "0.1.0"

from .hookspecs import hookimpl  # noqa: E402

__all__ = ["__version__", "hookimpl"]
