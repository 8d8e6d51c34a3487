"""Certificate cost and tightness: our IBP and CROWN beside auto_LiRPA's on the digits MLP (optional peer).

auto_LiRPA cannot be installed beside torch 2.13 from PyPI (its release pins torch < 2.9); when it is importable
(e.g. its source on PYTHONPATH, see compare_lirpa.py) its numbers are measured, otherwise reported missing.
"""

from __future__ import annotations

from typing import Any

from nonsingular import ThreatModel

from .attacks import build
from .compare_lirpa import compare

N_EXAMPLES = 50
EPS = (0.01, 0.0005)


def bound_comparison() -> dict[str, Any]:
    model, x, y = build("digits")
    threat = ThreatModel(eps_x=EPS[0], eps_w=EPS[1])
    results = compare(model, x[:N_EXAMPLES], y[:N_EXAMPLES], threat)
    out: dict[str, Any] = {"eps_x": EPS[0], "eps_w": EPS[1], "n": N_EXAMPLES, "auto_LiRPA": results.pop("auto_LiRPA")}
    for label, r in results.items():
        worst = r["worst"]
        out[label] = {
            "seconds": r["seconds"],
            "certified": float((worst > 0).double().mean()),
            "median_margin_lb": float(worst.median()),
        }
    if "auto_LiRPA CROWN" in results:
        diff = results["nonsingular crown"]["worst"] - results["auto_LiRPA CROWN"]["worst"]
        out["crown_at_least_as_tight"] = int((diff >= -1e-9).sum())
        out["crown_median_gain"] = float(diff.median())
    return out


__all__ = ["bound_comparison"]
