"""One module per op family; importing them fills the converter table (registry.CONVERTERS)."""

from __future__ import annotations

from . import activations, arithmetic, constants, conv, linear, normalization, pooling, structure

__all__ = ["activations", "arithmetic", "constants", "conv", "linear", "normalization", "pooling", "structure"]
