"""Our joint-threat CROWN and IBP beside auto_LiRPA's on the same MLP, inputs and threat (optional peer).

    python -m benchmarks.compare_lirpa --checkpoint digits.safetensors --eps-x 0.01 --eps-w 0.0005 [--n-examples 100]

auto_LiRPA needs about 1 GB and 1-5 s per example on this MLP; ours takes milliseconds.

auto_LiRPA certifies weight perturbations by making each weight a `BoundedParameter` with an l_inf box and
relaxing every product W h bilinearly. Its PyPI release pins torch < 2.9, so it is not a dependency of this
project (nor an extra); install it from source into a separate environment that also sees nonsingular and run
this script there. Without it the script says so and only prints our numbers.

Both tools get the same problem: the input box after the model's normalisation (an exact box map), the
element-wise weight box |D| <= eps_w of every Linear layer (absolute mode, as auto_LiRPA's example) and the
margins z_y - z_k as the specification, in float64. Printed: certified accuracy, quantiles of the worst margin
lower bound, and per example how our bound compares with auto_LiRPA's (higher is tighter).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nonsingular import ThreatModel
from nonsingular.bounds import margin_bounds
from nonsingular.datasets import load_data
from nonsingular.models import Normalize, load_checkpoint


def _lirpa_margins(model: nn.Sequential, x: Tensor, y: Tensor, threat: ThreatModel, method: str, chunk: int) -> Tensor:
    """(N, K) margin lower bounds from auto_LiRPA (column y set to 0), same threat as ours.

    Examples go `chunk` at a time: with weight perturbations auto_LiRPA keeps coefficient tensors per example
    and weight entry (about 1 GB per example for a 64-256-256-10 MLP).
    """
    from auto_LiRPA import BoundedModule, BoundedParameter, BoundedTensor
    from auto_LiRPA.perturbations import PerturbationLpNorm

    layers = list(model)
    if not isinstance(layers[0], Normalize) or not isinstance(layers[1], nn.Flatten):
        raise ValueError("expected an MLP: Normalize, Flatten, Linear, ReLU, ..., Linear")
    lb, ub = threat.input_bounds(x)
    # Normalisation is element-wise monotone: the box of normalised inputs is exactly its image.
    lb, ub, x_hat = (layers[1](layers[0](t)) for t in (lb, ub, x))
    net = copy.deepcopy(nn.Sequential(*layers[2:])).double()
    for name, module in net.named_modules():
        if isinstance(module, nn.Linear):
            # As auto_LiRPA's own example does: an l_inf ball of radius eps around the weight (absolute mode).
            eps = threat.eps_w_for(f"{int(name) + 2}")
            module.weight = BoundedParameter(module.weight.data, PerturbationLpNorm(norm=float("inf"), eps=eps))
    # auto_LiRPA's own weight-perturbation test turns its sparse intermediate specifications off (its weight
    # relaxation does not take them).
    opts = {
        "sparse_intermediate_bounds": False,
        "sparse_conv_intermediate_bounds": False,
        "sparse_intermediate_bounds_with_ibp": False,
    }
    bounded = BoundedModule(net, torch.zeros_like(x_hat[:1]), bound_opts=opts, device="cpu", verbose=False)
    k = model[-1].out_features
    eye = torch.eye(k, dtype=torch.float64)
    spec = eye[y][:, None, :] - eye[None, :, :]
    parts = []
    for s in range(0, len(y), chunk):
        part = slice(s, s + chunk)
        xb = BoundedTensor(x_hat[part], PerturbationLpNorm(norm=float("inf"), x_L=lb[part], x_U=ub[part]))
        lower, _ = bounded.compute_bounds(x=(xb,), C=spec[part], method=method, bound_upper=False)
        parts.append(lower.detach())
    return torch.cat(parts).masked_fill(torch.nn.functional.one_hot(y, k).bool(), 0.0)


def _worst(lower: Tensor, y: Tensor) -> Tensor:
    return lower.masked_fill(torch.nn.functional.one_hot(y, lower.shape[1]).bool(), float("inf")).amin(dim=1)


def _summary(name: str, worst: Tensor, seconds: float) -> str:
    q = torch.quantile(worst, torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64)).tolist()
    cert = 100 * float((worst > 0).double().mean())
    return f"{name:<22} {cert:8.1f}% {q[0]:10.4g} {q[1]:10.4g} {q[2]:10.4g} {seconds:8.2f}"


def compare(model: nn.Sequential, x: Tensor, y: Tensor, threat: ThreatModel, chunk: int = 2) -> dict[str, Any]:
    """Worst-margin lower bounds and times of our IBP/CROWN and, when importable, auto_LiRPA's, on the CPU.

    Returns {label: {"worst": (N,) float64, "seconds": s}} plus "auto_LiRPA" = its version or "missing".
    """
    model, x = copy.deepcopy(model).cpu().double(), x.cpu().double()
    y = y.cpu()
    out: dict[str, Any] = {}
    for method in ("ibp", "crown"):
        t0 = time.perf_counter()
        with torch.no_grad():
            worst = _worst(margin_bounds(model, x, y, threat, method).lower, y)
        out[f"nonsingular {method}"] = {"worst": worst, "seconds": time.perf_counter() - t0}
    if importlib.util.find_spec("auto_LiRPA") is None:
        out["auto_LiRPA"] = "missing"
        return out
    import auto_LiRPA

    out["auto_LiRPA"] = auto_LiRPA.__version__
    for method, label in (("IBP", "auto_LiRPA IBP"), ("backward", "auto_LiRPA CROWN")):
        t0 = time.perf_counter()
        default = torch.get_default_dtype()
        try:
            # auto_LiRPA creates some relaxation tensors in the default dtype; make it float64 like ours.
            torch.set_default_dtype(torch.float64)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                worst = _worst(_lirpa_margins(model, x, y, threat, method, chunk), y)
        finally:
            torch.set_default_dtype(default)
        out[label] = {"worst": worst, "seconds": time.perf_counter() - t0}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--eps-x", type=float, default=0.01)
    parser.add_argument("--eps-w", type=float, default=0.0005)
    parser.add_argument("--n-examples", type=int, default=100)
    parser.add_argument("--lirpa-chunk", type=int, default=2, help="examples per auto_LiRPA call (~1 GB each)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    ckpt = load_checkpoint(args.checkpoint)
    data = load_data(ckpt.metadata.get("data", {}).get("source", "digits"))
    x, y = data.x_test[: args.n_examples], data.y_test[: args.n_examples]
    threat = ThreatModel(eps_x=args.eps_x, eps_w=args.eps_w, domain=data.domain)
    print(f"{args.checkpoint.name}: {len(y)} examples, threat {threat}")
    print(f"{'bound':<22} {'certified':>9} {'lb p5':>10} {'lb p50':>10} {'lb p95':>10} {'seconds':>8}")
    results = compare(ckpt.model, x, y, threat, args.lirpa_chunk)
    for label, r in results.items():
        if label != "auto_LiRPA":
            print(_summary(label, r["worst"], r["seconds"]))
    if results["auto_LiRPA"] == "missing":
        print("auto_LiRPA is not installed here: no peer numbers (see this script's docstring)")
        return
    ours, theirs = results["nonsingular crown"]["worst"], results["auto_LiRPA CROWN"]["worst"]
    diff = ours - theirs
    print(
        f"CROWN, ours - auto_LiRPA's worst margin bound per example: min {float(diff.min()):.4g}, "
        f"median {float(diff.median()):.4g}, max {float(diff.max()):.4g}; ours at least as tight on "
        f"{int((diff >= -1e-9).sum())}/{len(diff)} examples"
    )


if __name__ == "__main__":
    main()
