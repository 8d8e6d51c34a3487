"""Attack throughput: ours vs torchattacks and ART (input-only), vs explicit per-example weights (joint).

Every timed run ends with the robust accuracy known: the peers' times include the one forward pass that
evaluates their adversarial inputs (ours evaluates inside the attack, keeping each example's worst step).
Each measurement runs in a fresh process (peak memory is per process) with warm-up, repeats and medians.
Models: the digits MLP 64-256-256-10 (trained for a few epochs) and an MLP 784-512-512-10 at batch 256 on
uniform random inputs labelled by the model itself (clean accuracy 100%, so robust accuracy is informative).
"""

from __future__ import annotations

import statistics
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from nonsingular import MLP, PGD, ThreatModel, load_digits

from .timing import bench_device, median_time

STEPS = 10
#: (eps_x, eps_w) and description of each benchmark setting (run.py and profile_joint.py share them).
EPS = {"digits": (0.05, 0.002), "mnist-mlp": (0.02, 0.0005), "wide": (0.02, 0.0005), "deep": (0.02, 0.0005)}
SETTINGS = {
    "digits": "digits MLP 64-256-256-10, batch 360",
    "mnist-mlp": "MLP 784-512-512-10, batch 256",
    "wide": "wide MLP 784-1024-1024-10, batch 200",
    "deep": "deep-narrow MLP 100-300-300-300-300-10, batch 500",
}


def build(setting: str, seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """(model, x, y) for 'digits' or a SYNTHETIC setting on the benchmark device; deterministic (built on the CPU)."""
    model, x, y = _build_cpu(setting, seed)
    device = bench_device()
    return model.to(device), x.to(device), y.to(device)


#: Random-weight MLPs on uniform inputs labelled by the model itself: (input shape, hidden widths, batch).
SYNTHETIC = {
    "mnist-mlp": ((1, 28, 28), (512, 512), 256),
    "wide": ((1, 28, 28), (1024, 1024), 200),
    "deep": ((100,), (300, 300, 300, 300), 500),
}


def synthetic(
    input_shape: tuple[int, ...], widths: tuple[int, ...], batch: int, seed: int = 0
) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A random MLP (normalisation 0.5 / 0.29 first), `batch` uniform inputs and the model's own labels."""
    torch.manual_seed(seed)
    model = MLP(input_shape, widths, 10, 0.5, 0.29).eval()
    x = torch.rand(batch, *input_shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _build_cpu(setting: str, seed: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    if setting == "digits":
        data = load_digits()
        model = MLP(data.input_shape, (256, 256), 10, data.mean, data.std)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(seed)
        for _ in range(10):
            perm = torch.randperm(len(data.y_train), generator=g)
            for i in range(0, len(perm), 64):
                idx = perm[i : i + 64]
                loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        return model.eval(), data.x_test, data.y_test
    return synthetic(*SYNTHETIC[setting], seed=seed)


def layer_sizes(model: torch.nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)]


def _accuracy(model: torch.nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x_adv).argmax(1) == y).float().mean())


# ---------------------------------------------------------------------- input-only PGD
def input_pgd(setting: str, impl: str, eps: float, repeats: int) -> dict[str, Any]:
    model, x, y = build(setting)
    run = _input_runner(model, x, y, impl, eps)
    seconds, x_adv = median_time(run, repeats=repeats)
    return {"seconds": seconds, "robust_accuracy": _accuracy(model, x_adv, y), "batch": len(x)}


def interleaved(setting: str, eps_x: float, eps_w: float, repeats: int, impls: list[str]) -> dict[str, Any]:
    """Input-only PGD of every implementation in `impls` and our joint PGD, timed in turn in ONE process.

    Round r runs each attack once; the medians over rounds are compared. Alternating cancels the drift of a
    shared machine's load, which separate processes measured minutes apart do not (their ratios moved by
    30% between runs). Returns {impl: {seconds, robust_accuracy}, "joint": {...}}.
    """
    model, x, y = build(setting)
    runners = {impl: _input_runner(model, x, y, impl, eps_x) for impl in impls}
    joint_threat = ThreatModel(eps_x=eps_x, eps_w=eps_w)
    attack = PGD(steps=STEPS, random_start=False, batch_size=len(x))
    runners["joint"] = lambda: attack(model, x, y, joint_threat)
    matmuls, flops = _matmul_runner(model, len(x), x.device)
    runners["matmul"] = matmuls  # the dense rate, measured in the same turns (a separate run saw another load)
    for run in runners.values():  # warm-up
        run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    last: dict[str, Any] = {}
    for _ in range(repeats):
        for name, run in runners.items():
            seconds, last[name] = median_time(run, repeats=1, warmup=0)
            times[name].append(seconds)
    out: dict[str, Any] = {}
    seconds = statistics.median(times.pop("matmul"))
    out["ceiling"] = {"seconds": seconds, "gflops": flops / seconds / 1e9, "flops_per_step": flops, "batch": len(x)}
    for name in times:
        if name == "joint":
            accuracy = float((last[name].logits.argmax(1) == y).float().mean())
        else:
            accuracy = _accuracy(model, last[name], y)
        out[name] = {"seconds": statistics.median(times[name]), "robust_accuracy": accuracy, "rounds": repeats}
    return out


def _input_runner(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, impl: str, eps: float):
    """A no-argument function running one input-only PGD of `impl`; it returns the adversarial inputs."""
    alpha = 2.5 * eps / STEPS
    if impl == "nonsingular":
        attack, threat = PGD(steps=STEPS, random_start=False, batch_size=len(x)), ThreatModel(eps_x=eps)

        def run():
            return attack(model, x, y, threat).x_adv

    elif impl == "torchattacks":
        import torchattacks

        atk = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=STEPS, random_start=False)

        def run():
            x_adv = atk(x, y)
            _accuracy(model, x_adv, y)  # the outcome a user needs; ours computes it inside the attack
            return x_adv

    elif impl == "art":
        from art.attacks.evasion import ProjectedGradientDescent
        from art.estimators.classification import PyTorchClassifier

        clf = PyTorchClassifier(
            model,
            loss=torch.nn.CrossEntropyLoss(),
            input_shape=tuple(x.shape[1:]),
            nb_classes=10,
            clip_values=(0.0, 1.0),
            device_type="gpu" if x.is_cuda else "cpu",
        )
        atk = ProjectedGradientDescent(
            clf,
            norm=float("inf"),
            eps=eps,
            eps_step=alpha,
            max_iter=STEPS,
            num_random_init=0,
            batch_size=len(x),
            verbose=False,
        )
        xn, yn = x.cpu().numpy(), y.cpu().numpy()

        def run():
            x_adv = torch.from_numpy(atk.generate(xn, yn)).to(x.device)
            _accuracy(model, x_adv, y)
            return x_adv

    else:
        raise ValueError(impl)
    return run


# ---------------------------------------------------------------------- per-example joint PGD
def joint_pgd(setting: str, impl: str, eps_x: float, eps_w: float, repeats: int) -> dict[str, Any]:
    model, x, y = build(setting)
    runners = {"nonsingular": _ours_joint, "vmap": _vmap_joint, "loop": _loop_joint}
    fn = runners[impl]
    seconds, acc = median_time(lambda: fn(model, x, y, eps_x, eps_w), repeats=repeats, warmup=1 if repeats > 1 else 0)
    return {"seconds": seconds, "robust_accuracy": acc, "batch": len(x)}


def _ours_joint(model, x, y, eps_x, eps_w) -> float:
    result = PGD(steps=STEPS, random_start=False, batch_size=len(x))(model, x, y, ThreatModel(eps_x=eps_x, eps_w=eps_w))
    return float((result.logits.argmax(1) == y).float().mean())


def _explicit_step(params, names, forward, x_adv, delta, y, lb, ub, eps_x, eps_w):
    x_adv.requires_grad_(True)
    for d in delta:
        d.requires_grad_(True)
    logits = forward({k: params[k] + d for k, d in zip(names, delta, strict=True)}, x_adv)
    grads = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), [x_adv, *delta])
    with torch.no_grad():
        x_new = torch.min(torch.max(x_adv + 2.5 / STEPS * eps_x * grads[0].sign(), lb), ub)
        d_new = [
            (d + 2.5 / STEPS * eps_w * g.sign()).clamp(-eps_w, eps_w) for d, g in zip(delta, grads[1:], strict=True)
        ]
    return x_new.detach(), [d.detach() for d in d_new], logits.detach()


def _vmap_joint(model, x, y, eps_x, eps_w) -> float:
    """What a researcher writes with torch.func: a weight tensor per example, vmap over functional_call."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    names = [k for k in params if k.endswith("weight")]

    def one(p, xi):
        return functional_call(model, {**params, **p}, (xi[None],))[0]

    forward = vmap(one)
    lb, ub = (x - eps_x).clamp(0, 1), (x + eps_x).clamp(0, 1)
    x_adv, delta = x.clone(), [x.new_zeros(len(x), *params[k].shape) for k in names]
    fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for _ in range(STEPS):
        x_adv, delta, logits = _explicit_step(params, names, forward, x_adv, delta, y, lb, ub, eps_x, eps_w)
        fooled |= logits.argmax(1) != y
    with torch.no_grad():
        fooled |= forward({k: params[k] + d for k, d in zip(names, delta, strict=True)}, x_adv).argmax(1) != y
    return 1 - float(fooled.float().mean())


def _loop_joint(model, x, y, eps_x, eps_w) -> float:
    """The plain version: one example at a time, its own weight copies."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    names = [k for k in params if k.endswith("weight")]

    def forward(p, xb):
        return functional_call(model, {**params, **p}, (xb,))

    robust = 0
    for i in range(len(x)):
        xi, yi = x[i : i + 1], y[i : i + 1]
        lb, ub = (xi - eps_x).clamp(0, 1), (xi + eps_x).clamp(0, 1)
        x_adv, delta, fooled = xi.clone(), [torch.zeros_like(params[k]) for k in names], False
        for _ in range(STEPS):
            x_adv, delta, logits = _explicit_step(params, names, forward, x_adv, delta, yi, lb, ub, eps_x, eps_w)
            fooled |= bool(logits.argmax(1) != yi)
        with torch.no_grad():
            fooled |= bool(
                forward({k: params[k] + d for k, d in zip(names, delta, strict=True)}, x_adv).argmax(1) != yi
            )
        robust += not fooled
    return robust / len(x)


# ---------------------------------------------------------------------- the machine's ceiling
def matmul_ceiling(setting: str, repeats: int) -> dict[str, Any]:
    """Dense float32 GFLOP/s of the matmuls one PGD step needs (forward + input gradient) at these sizes."""
    model, x, _ = build(setting)
    run, flops = _matmul_runner(model, len(x), x.device)
    seconds, _ = median_time(run, repeats=repeats * 4, warmup=2)
    return {"seconds": seconds, "gflops": flops / seconds / 1e9, "flops_per_step": flops, "batch": len(x)}


def _matmul_runner(model: torch.nn.Module, b: int, device: torch.device):
    """(run, flops): one PGD step's dense matmuls (forward + input gradient of every Linear) on random data."""
    sizes = layer_sizes(model)
    acts = [torch.rand(b, n_in, device=device) for n_in, _ in sizes]
    weights = [torch.rand(n_out, n_in, device=device) for n_in, n_out in sizes]
    grads = [torch.rand(b, n_out, device=device) for _, n_out in sizes]

    def run():
        for a, w, g in zip(acts, weights, grads, strict=True):
            a @ w.t()  # forward
            g @ w  # gradient with respect to the layer input
        return None

    return run, sum(4 * b * n_in * n_out for n_in, n_out in sizes)
