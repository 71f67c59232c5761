"""Exporting trained models to other runtimes (ONNX)."""

from layerkit.compat import moved_attributes

#: the first release's module of this name: its names still work here, with a DeprecationWarning
__getattr__ = moved_attributes(__name__)
