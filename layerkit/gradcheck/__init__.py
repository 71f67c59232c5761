"""Gradient checking: numerics, per-layer checks, whole-model checks, rendering."""
