"""Parallel runtime: the layer thread pool, process-parallel steps, collectives, BLAS and allocator control."""

from layerkit.compat import moved_attributes

#: the first release's module of this name: its names still work here, with a DeprecationWarning
__getattr__ = moved_attributes(__name__)
