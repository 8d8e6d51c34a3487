"""Run every benchmark in one go and write BENCHMARKS.md plus benchmarks/results.json.

    .venv/bin/python -m benchmarks.run [--repeats 5] [--threads 2] [--sections attacks,ceiling,training]

Peers (torchattacks, ART) are optional: a missing one is reported in the table, not a crash.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
from pathlib import Path
from typing import Any

import torch

from . import attacks
from .timing import in_fresh_process

EPS = {"digits": (0.05, 0.002), "mnist-mlp": (0.02, 0.0005)}
SETTINGS = {"digits": "digits MLP 64-256-256-10, batch 360", "mnist-mlp": "MLP 784-512-512-10, batch 256"}


def _peer_available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def run_attacks(repeats: int, threads: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for setting in SETTINGS:
        eps_x, eps_w = EPS[setting]
        row: dict[str, Any] = {"eps_x": eps_x, "eps_w": eps_w}
        for impl, module in (("nonsingular", "nonsingular"), ("torchattacks", "torchattacks"), ("art", "art")):
            if not _peer_available(module):
                row[f"input/{impl}"] = {"error": f"{module} not installed (pip install .[bench])"}
                continue
            row[f"input/{impl}"] = in_fresh_process(attacks.input_pgd, setting, impl, eps_x, repeats, threads=threads)
        for impl, reps in (("nonsingular", repeats), ("vmap", 1), ("loop", 1)):
            row[f"joint/{impl}"] = in_fresh_process(
                attacks.joint_pgd, setting, impl, eps_x, eps_w, reps, threads=threads
            )
        row["ceiling"] = in_fresh_process(attacks.matmul_ceiling, setting, repeats, threads=threads)
        out[setting] = row
    return out


def run_training(threads: int) -> dict[str, Any]:
    if importlib.util.find_spec("benchmarks.training") is None:
        return {"error": "benchmarks/training.py not present"}
    from . import training

    return in_fresh_process(training.epoch_times, threads=threads)


def _ratio(a: dict[str, Any], b: dict[str, Any]) -> str:
    if "seconds" not in a or "seconds" not in b:
        return "n/a"
    return f"{b['seconds'] / a['seconds']:.2f}x"


def _cell(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"n/a ({result['error']})"
    return f"{1000 * result['seconds']:.1f} ms, robust acc {100 * result['robust_accuracy']:.1f}%"


def render(results: dict[str, Any]) -> str:
    meta = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        "Produced by one run of `make bench` (`.venv/bin/python -m benchmarks.run`). Medians over repeats after",
        "warm-up; each measurement in a fresh process (peak RSS is that process's growth). 10 PGD steps, no random",
        "start, the same step size (2.5 eps / steps) for every implementation.",
        "",
        f"Machine: {meta['device']}, {meta['threads']} threads, {meta['processor']}; torch {meta['torch']},",
        f"Python {meta['python']}; peers: {meta['peers']}.",
        "",
    ]
    for setting, row in results.get("attacks", {}).items():
        ours_in, ours_joint = row["input/nonsingular"], row["joint/nonsingular"]
        ceiling = row["ceiling"]
        lines += [
            f"## {SETTINGS[setting]} (eps_x={row['eps_x']}, eps_w={row['eps_w']} absolute element-wise)",
            "",
            "| measurement | time, robust accuracy | ratio (their time / ours) | peak RSS |",
            "| --- | --- | --- | --- |",
        ]
        for impl in ("nonsingular", "torchattacks", "art"):
            r = row[f"input/{impl}"]
            lines.append(
                f"| input-only PGD, {impl} | {_cell(r)} | {_ratio(ours_in, r) if impl != 'nonsingular' else '1'} "
                f"| {r.get('peak_rss_mb', float('nan')):.0f} MB |"
            )
        for impl, label in (("nonsingular", "Lemma 1"), ("vmap", "explicit, vmap"), ("loop", "explicit, loop")):
            r = row[f"joint/{impl}"]
            ratio = _ratio(ours_joint, r) if impl != "nonsingular" else "1"
            rss = r.get("peak_rss_mb", float("nan"))
            lines.append(f"| per-example joint PGD, {label} | {_cell(r)} | {ratio} | {rss:.0f} MB |")
        if "seconds" in ours_in and "seconds" in ours_joint:
            achieved = ceiling["flops_per_step"] * attacks.STEPS / ours_in["seconds"] / 1e9
            joint_ratio = ours_joint["seconds"] / ours_in["seconds"]
            share = 100 * achieved / ceiling["gflops"]
            lines += [
                "",
                f"- joint / input-only time (ours, same steps): **{joint_ratio:.2f}x** (target <= 1.25x)",
                f"- dense float32 matmul ceiling at these sizes: {ceiling['gflops']:.1f} GFLOP/s; input-only PGD "
                f"achieves {achieved:.1f} GFLOP/s of forward + input-gradient work = **{share:.0f}%** (target >= 70%)",
            ]
            if "seconds" in row["joint/vmap"]:
                lines.append(
                    f"- speed-up over explicit per-example weights (vmap): **{_ratio(ours_joint, row['joint/vmap'])}**"
                    " (target >= 100x at batch 256 on 784-512-512-10)"
                )
        lines.append("")
    training = results.get("training")
    if training and "error" not in training:
        lines += [
            "## Training: time per epoch on digits, relative to standard",
            "",
            "| objective | s/epoch | ratio |",
            "| --- | --- | --- |",
        ]
        base = training["standard"]
        for name, seconds in training.items():
            if isinstance(seconds, float):
                lines.append(f"| {name} | {seconds:.2f} | {seconds / base:.1f}x |")
        lines.append("")
    elif training:
        lines += ["## Training", "", f"not measured: {training['error']}", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--sections", default="attacks,training", help="comma-separated: attacks, training")
    parser.add_argument("--markdown", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results.json"))
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    peers = {
        m: (importlib.metadata.version(d) if _peer_available(m) else "missing")
        for m, d in (("torchattacks", "torchattacks"), ("art", "adversarial-robustness-toolbox"))
    }
    results: dict[str, Any] = {
        "machine": {
            "device": "CPU",
            "threads": args.threads,
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "peers": ", ".join(f"{k} {v}" for k, v in peers.items()),
        }
    }
    if "attacks" in sections:
        results["attacks"] = run_attacks(args.repeats, args.threads)
    if "training" in sections:
        results["training"] = run_training(args.threads)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    args.markdown.write_text(render(results))
    print(args.markdown.read_text())


if __name__ == "__main__":
    import importlib.metadata

    main()
