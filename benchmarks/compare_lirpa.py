"""Our joint-threat CROWN and IBP beside auto_LiRPA's on the same MLP, inputs and threat (optional peer).

    python -m benchmarks.compare_lirpa --checkpoint digits.safetensors --eps-x 0.01 --eps-w 0.0005 [--n-examples 100]
    python -m benchmarks.compare_lirpa --train 100,100,100 --data mnist-sample --epochs 2 --n-examples 29

The second form trains the MLP first with the project's own trainer (standard objective, in memory, seeded):
784-100-100-100-10 on mnist-sample is the network of the bound-call overhead requirement. auto_LiRPA needs
about 1-2 GB and ~0.6 CPU s per example on it with weight perturbations; ours takes milliseconds.

auto_LiRPA certifies weight perturbations by making each weight a `BoundedParameter` with an l_inf box and
relaxing every product W h bilinearly. Its PyPI release pins torch < 2.9, so it is not a dependency of this
project (nor an extra); install it from source into a separate environment that also sees nonsingular and run
this script there (BENCHMARKS.md says how it was made importable beside torch 2.13). Without it the script says
so and only prints our numbers.

Both tools get the same problem: the input box after the model's normalisation (an exact box map), the
element-wise weight box |D| <= eps_w of every Linear layer (absolute mode, as auto_LiRPA's example) and the
margins z_y - z_k as the specification, in float64. Printed: certified accuracy, quantiles of the worst margin
lower bound, wall and CPU seconds of each tool's whole run (ours: one call, the trace included; auto_LiRPA: its
BoundedModule built and `compute_bounds` called `--lirpa-chunk` examples at a time, its fastest setting here),
the time ratios, and per example how our bound compares with auto_LiRPA's (higher is tighter). On a shared
machine the CPU seconds (`time.process_time`) are the stable figure.
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
from nonsingular.datasets import Dataset, load_data
from nonsingular.models import Normalize, load_checkpoint
from nonsingular.training import TrainConfig, Trainer


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


def _summary(name: str, worst: Tensor, seconds: float, cpu: float) -> str:
    q = torch.quantile(worst, torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64)).tolist()
    cert = f"{int((worst > 0).sum())}/{len(worst)}"
    return f"{name:<22} {cert:>9} {q[0]:10.4g} {q[1]:10.4g} {q[2]:10.4g} {seconds:8.3f} {cpu:8.3f}"


def compare(model: nn.Sequential, x: Tensor, y: Tensor, threat: ThreatModel, chunk: int = 1) -> dict[str, Any]:
    """Worst-margin lower bounds and times of our IBP/CROWN and, when importable, auto_LiRPA's, on the CPU.

    Returns {label: {"worst": (N,) float64, "seconds": wall s, "cpu": CPU s}} plus "auto_LiRPA" = its version
    or "missing".
    """
    model, x = copy.deepcopy(model).cpu().double(), x.cpu().double()
    y = y.cpu()
    out: dict[str, Any] = {}
    for method in ("ibp", "crown"):
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.no_grad():
            worst = _worst(margin_bounds(model, x, y, threat, method).lower, y)
        out[f"nonsingular {method}"] = {
            "worst": worst,
            "seconds": time.perf_counter() - t0,
            "cpu": time.process_time() - c0,
        }
    if importlib.util.find_spec("auto_LiRPA") is None:
        out["auto_LiRPA"] = "missing"
        return out
    import auto_LiRPA

    out["auto_LiRPA"] = auto_LiRPA.__version__
    for method, label in (("IBP", "auto_LiRPA IBP"), ("backward", "auto_LiRPA CROWN")):
        t0, c0 = time.perf_counter(), time.process_time()
        default = torch.get_default_dtype()
        try:
            # auto_LiRPA creates some relaxation tensors in the default dtype; make it float64 like ours.
            torch.set_default_dtype(torch.float64)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                worst = _worst(_lirpa_margins(model, x, y, threat, method, chunk), y)
        finally:
            torch.set_default_dtype(default)
        out[label] = {"worst": worst, "seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0}
    return out


def trained_mlp(data: Dataset, source: str, widths: list[int], epochs: int, seed: int) -> nn.Sequential:
    """An MLP trained by the project's trainer (standard objective, in memory) on the training split of `data`,
    which is `load_data(source)`."""
    fields: dict[str, Any] = {"data": source, "widths": widths, "epochs": epochs, "seed": seed}
    config = TrainConfig(**fields, eval_steps=0, device="cpu")
    model = Trainer(config, paths=None, data=data).fit().model
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"expected the trainer's MLP to be an nn.Sequential, got {type(model).__name__}")
    return model


def _widths(text: str) -> list[int]:
    try:
        widths = [int(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected hidden widths such as 100,100,100, got {text!r}") from None
    if not widths or min(widths) <= 0:
        raise argparse.ArgumentTypeError(f"hidden widths must be positive, got {text!r}")
    return widths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a saved MLP (its data source is read from it)")
    source.add_argument("--train", type=_widths, metavar="WIDTHS", help="train an MLP with these hidden widths")
    parser.add_argument("--data", default="mnist-sample", help="data source of --train (default mnist-sample)")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs of --train (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="training seed of --train (default 0)")
    parser.add_argument("--eps-x", type=float, default=0.01)
    parser.add_argument("--eps-w", type=float, default=0.0005)
    parser.add_argument("--n-examples", type=int, default=100)
    parser.add_argument(
        "--lirpa-chunk", type=int, default=1, help="examples per auto_LiRPA call (~2 GB each; 1 is its fastest)"
    )
    args = parser.parse_args()
    if args.n_examples < 1 or args.lirpa_chunk < 1 or args.epochs < 1:
        parser.error("--n-examples, --lirpa-chunk and --epochs must be positive")
    logging.basicConfig(level=logging.WARNING)

    if args.checkpoint is not None:
        ckpt = load_checkpoint(args.checkpoint)
        model, name = ckpt.model, args.checkpoint.name
        data = load_data(ckpt.metadata.get("data", {}).get("source", "digits"))
    else:
        data = load_data(args.data)
        model = trained_mlp(data, args.data, args.train, args.epochs, args.seed)
        name = f"MLP {'-'.join(map(str, [data.x_test[0].numel(), *args.train, data.num_classes]))} on {args.data}"
    if not isinstance(model, nn.Sequential):
        raise SystemExit(f"compare_lirpa: expected an MLP (nn.Sequential), got {type(model).__name__}")
    x, y = data.x_test[: args.n_examples], data.y_test[: args.n_examples]
    threat = ThreatModel(eps_x=args.eps_x, eps_w=args.eps_w, domain=data.domain)
    print(f"{name}: {len(y)} examples, threat {threat}")
    print(f"{'bound':<22} {'certified':>9} {'lb p5':>10} {'lb p50':>10} {'lb p95':>10} {'wall s':>8} {'CPU s':>8}")
    results = compare(model, x, y, threat, args.lirpa_chunk)
    for label, r in results.items():
        if label != "auto_LiRPA":
            print(_summary(label, r["worst"], r["seconds"], r["cpu"]))
    if results["auto_LiRPA"] == "missing":
        print("auto_LiRPA is not installed here: no peer numbers (see this script's docstring)")
        return
    print(f"auto_LiRPA {results['auto_LiRPA']}")
    for method, peer in (("ibp", "auto_LiRPA IBP"), ("crown", "auto_LiRPA CROWN")):
        mine, theirs = results[f"nonsingular {method}"], results[peer]
        print(
            f"{method}: auto_LiRPA / ours {theirs['cpu'] / mine['cpu']:.1f}x CPU time, "
            f"{theirs['seconds'] / mine['seconds']:.1f}x wall time"
        )
    ours, theirs = results["nonsingular crown"]["worst"], results["auto_LiRPA CROWN"]["worst"]
    diff = ours - theirs
    print(
        f"CROWN, ours - auto_LiRPA's worst margin bound per example: min {float(diff.min()):.4g}, "
        f"median {float(diff.median()):.4g}, max {float(diff.max()):.4g}; ours at least as tight on "
        f"{int((diff >= -1e-9).sum())}/{len(diff)} examples"
    )


if __name__ == "__main__":
    main()
