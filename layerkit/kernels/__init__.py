"""Kernels shared by layers: windows, padding, im2col/col2im."""
