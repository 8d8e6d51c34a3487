"""Threats of deployment: weights rounded to an integer grid (`quantize`: int-N grids per tensor or channel,
nearest / random / worst-case rounding as a weight threat) and hardware faults (`faults`: bit flips and random
boxes of weights).

Both are expressed as ordinary threat models so that attacks, the checker and the bounds apply unchanged. May
import the vocabulary, `runtime`, `check`, `attacks` and `evaluation` (quantized certificates).
"""

from .faults import FaultSummary, bit_flip_accuracies, flip_bit, summarise, uniform_box_accuracies
from .quantize import (
    LayerGrid,
    QuantizationReport,
    QuantizationSpec,
    Rounding,
    Scheme,
    evaluate_quantization,
    layer_grids,
    quantization_threat,
    save_quantized,
)

__all__ = [
    "FaultSummary",
    "LayerGrid",
    "QuantizationReport",
    "QuantizationSpec",
    "Rounding",
    "Scheme",
    "bit_flip_accuracies",
    "evaluate_quantization",
    "flip_bit",
    "layer_grids",
    "quantization_threat",
    "save_quantized",
    "summarise",
    "uniform_box_accuracies",
]
