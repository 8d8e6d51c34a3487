"""Scale-aware analysis of a study's models: what the weight adversary's power depends on, and which claims
depend on how eps_w is measured.

ReLU networks are positively homogeneous: scaling one layer's weights and bias by c > 0 and the next layer's
weights by 1/c leaves the function unchanged. A relative radius (a fraction of each weight, or of each matrix's
operator norm) scales with the weights and is invariant under that rescaling; an absolute radius is not, so an
absolute-mode comparison may measure weight scale rather than robustness. Lemma 1 says the per-example weight
adversary's power at layer l is eps_w * ||h_{l-1}||_1 (element-wise absolute ball), which the layer statistics
make visible.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from ..formatting import points
from ..threat import PERTURBABLE_TYPES, EpsMode, WeightBall
from .records import ModelResult, StudyResults

__all__ = ["PARAMETRIZATIONS", "layer_stats", "rescaled"]

#: (ball, mode) of the four parametrizations, in report order.
PARAMETRIZATIONS = (
    (WeightBall.ELEMENTWISE, EpsMode.ABSOLUTE),
    (WeightBall.ELEMENTWISE, EpsMode.RELATIVE),
    (WeightBall.OPERATOR, EpsMode.ABSOLUTE),
    (WeightBall.OPERATOR, EpsMode.RELATIVE),
)


def _weight(layer: nn.Module) -> Tensor:
    weight = layer.weight
    assert isinstance(weight, Tensor)  # every perturbable layer type has a weight tensor
    return weight


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, PERTURBABLE_TYPES)]


def layer_stats(model: nn.Module, x: Tensor) -> list[dict[str, Any]]:
    """Per perturbable layer: its weight norms and the mean l1 norm of its input on `x`.

    Args:
        model: the classifier (eval mode).
        x: (N, *input_shape) inputs.

    Returns:
        One dict per layer, in forward order: name, max_abs (largest |w|), operator (l_inf operator norm: the
        largest row l1 sum, rows = output units or channels), frobenius, and input_l1 (mean over the N examples
        of ||h_{l-1}||_1, the layer's whole input flattened), all finite floats.
    """
    layers = _layers(model)
    inputs: dict[str, float] = {}

    def hook(name: str) -> Callable[[nn.Module, tuple[Tensor, ...]], None]:
        def record(_module: nn.Module, args: tuple[Tensor, ...]) -> None:
            inputs[name] = float(args[0].detach().flatten(1).abs().sum(1).mean())

        return record

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in layers]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    stats = []
    for name, m in layers:
        w = _weight(m).detach().double().flatten(1)
        stats.append(
            {
                "layer": name,
                "max_abs": float(w.abs().max()),
                "operator": float(w.abs().sum(1).max()),
                "frobenius": float(w.norm()),
                "input_l1": inputs[name],
            }
        )
    return stats


def rescaled(model: nn.Module, c: float) -> nn.Module:
    """A copy of `model` with its first perturbable layer (weight and bias) scaled by c and the second's weight
    by 1/c: the same function for a ReLU network (the layers between are ReLUs), another weight scale.

    Raises:
        ValueError: c <= 0, fewer than two perturbable layers, or a module between them that is not positively
            homogeneous (ReLU, Flatten, pooling): the rescaling would change the function.
    """
    if not c > 0:
        raise ValueError(f"the rescaling factor must be > 0, got {c}")
    copied = copy.deepcopy(model)
    names = [name for name, _ in copied.named_modules()]
    layers = _layers(copied)
    if len(layers) < 2:
        raise ValueError("rescaling needs two perturbable layers")
    (first, a), (second, b) = layers[:2]
    between = [m for name, m in copied.named_modules() if names.index(first) < names.index(name) < names.index(second)]
    # Positively homogeneous modules: f(c h) = c f(h) for c > 0, so the rescaling passes through them.
    if any(not isinstance(m, nn.ReLU | nn.Flatten | nn.MaxPool2d | nn.AvgPool2d) for m in between):
        raise ValueError(f"only ReLU, Flatten and pooling may sit between layers {first} and {second} to rescale them")
    with torch.no_grad():
        _weight(a).mul_(c)
        if isinstance(a.bias, Tensor):
            a.bias.mul_(c)
        _weight(b).div_(c)
    return copied


# ---------------------------------------------------------------------- reading the results
def _label(ball: WeightBall, mode: EpsMode) -> str:
    return f"{ball.value} {mode.value}"


def _scales(model: ModelResult) -> list[dict[str, Any]]:
    return [r.scale for r in model.runs if r.scale]


def parametrization_comparisons(results: StudyResults) -> dict[str, list[Any]]:
    """ "ball mode" -> the claim comparisons (study.verdicts) on that parametrization's scale cells; empty when
    the study ran no scale analysis."""
    from .verdicts import model_comparisons

    hx = results.headline["eps_x"]
    out: dict[str, list[Any]] = {}
    for ball, mode in PARAMETRIZATIONS:
        models, eps = {}, None
        for name, model in results.models.items():
            cells = [
                c
                for s in _scales(model)
                for c in s["cells"]
                if c["weight_ball"] == ball.value and c["weight_mode"] == mode.value
            ]
            if cells:
                models[name] = replace(model, cells=cells, extra_cells={}, certified=[])
                eps = cells[0]["eps_w"]
        if models:
            grid = {"eps_x": [0.0, hx], "eps_w": [0.0, eps], "scopes": results.grid["scopes"]}
            out[_label(ball, mode)] = model_comparisons(models, grid)
    return out


def scale_rows(results: StudyResults) -> dict[str, list[dict[str, Any]]]:
    """The scale tables: per-layer statistics (per model and seed) and the rescaling check (per model, seed,
    factor and parametrization: accuracy before and after, in points)."""
    layers, rescaling, verdicts = [], [], []
    for name, model in results.models.items():
        for run in model.runs:
            s = run.scale
            if not s:
                continue
            for layer in s["layers"]:
                layers.append({"model": name, "seed": run.seed, **layer})
            for r in s["rescaling"]:
                for label, after in r["accuracy"].items():
                    before = s["weight_only"].get(label)
                    change = None if before is None or after is None else after - before
                    rescaling.append(
                        {
                            "model": name,
                            "seed": run.seed,
                            "c": r["c"],
                            "parametrization": label,
                            "max_logit_change": r["max_logit_change"],
                            "accuracy": before,
                            "rescaled_accuracy": after,
                            "change": change,
                        }
                    )
    for label, comparisons in parametrization_comparisons(results).items():
        for c in comparisons:
            verdicts.append({**c.row(), "parametrization": label})
    return {"scale_layers": layers, "scale_rescaling": rescaling, "scale_verdicts": verdicts}


def scale_summary(results: StudyResults) -> list[str]:
    """Sentences: how far the rescaling moved each mode's accuracies, and which verdicts hold in every
    parametrization and which depend on the ball or the mode."""
    tables = scale_rows(results)
    lines = []
    if tables["scale_rescaling"]:
        worst_logit = max(r["max_logit_change"] for r in tables["scale_rescaling"])
        for mode in EpsMode:
            changes = [
                abs(r["change"])
                for r in tables["scale_rescaling"]
                if r["parametrization"].endswith(mode.value) and r["change"] is not None
            ]
            if changes:
                moved = (
                    "the logits are bit-identical"
                    if worst_logit == 0
                    else f"the function moves by at most {worst_logit:.2g} in any logit"
                )
                lines.append(
                    f"Rescaling (first layer x c, second / c; {moved}): {mode.value}-mode weight-only accuracies "
                    f"move by up to {points(max(changes), '.1f')} points "
                    f"(mean {points(sum(changes) / len(changes), '.1f')})."
                )
    by_pair: dict[tuple[Any, ...], dict[str, str]] = {}
    for v in tables["scale_verdicts"]:
        by_pair.setdefault((v["claim"], v["subject"], v["reference"], v["scope"]), {})[v["parametrization"]] = v[
            "verdict"
        ]
    for (claim, subject, reference, scope), verdicts in by_pair.items():
        if len(set(verdicts.values())) == 1:
            lines.append(
                f"Claim {claim} ({scope}), {subject} vs {reference}: '{next(iter(verdicts.values()))}' in every "
                "parametrization."
            )
        else:
            listed = "; ".join(f"{p}: {v}" for p, v in verdicts.items())
            lines.append(f"Claim {claim} ({scope}), {subject} vs {reference} depends on the parametrization: {listed}.")
    return lines
