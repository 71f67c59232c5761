"""Kernels shared by layers: windows, padding, im2col/col2im, and the registry of named kernels
(a numpy reference each, with an optional compiled twin: ``registry``, ``select``)."""
