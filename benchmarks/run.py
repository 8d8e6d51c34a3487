"""Run every benchmark in one go and write BENCHMARKS.md plus benchmarks/results.json.

    .venv/bin/python -m benchmarks.run [--repeats 5] [--threads 2] [--device auto]
                                       [--sections attacks,shapes,scaling,profile,conv,certificates,training]

Peers (torchattacks, ART, auto_LiRPA) are optional: a missing one is reported in the table, not a crash.
On CUDA (--device auto picks it when present) the figures go to benchmarks/BENCHMARKS-cuda.md instead.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

from . import attacks
from .attacks import EPS, SETTINGS
from .timing import bench_device, in_fresh_process

#: the settings with the full table (ART, explicit per-example references, peak memory); every setting gets
#: the shapes table (ours vs torchattacks, input and joint, 1 and 2 threads)
DETAILED = ("digits", "mnist-mlp")
SHAPE_THREADS = (1, 2)


def _peer_available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def run_shapes(repeats: int) -> dict[str, Any]:
    """Ours (input, joint) and torchattacks (input) taking turns in one process, per setting and thread count."""
    impls = ["nonsingular"] + (["torchattacks"] if _peer_available("torchattacks") else [])
    out: dict[str, Any] = {}
    for setting in SETTINGS:
        eps_x, eps_w = EPS[setting]
        out[setting] = {}
        for threads in SHAPE_THREADS:
            turns = in_fresh_process(attacks.interleaved, setting, eps_x, eps_w, 4 * repeats, impls, threads=threads)
            out[setting][str(threads)] = turns
    return out


def run_attacks(repeats: int, threads: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for setting in DETAILED:
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
        # Times compared as ratios come from one process, attacks taking turns (robust to a shared machine's
        # drifting load); the fresh-process runs above give each one's peak memory and an isolated time.
        impls = [impl for impl in ("nonsingular", "torchattacks", "art") if "error" not in row[f"input/{impl}"]]
        turns = in_fresh_process(attacks.interleaved, setting, eps_x, eps_w, 4 * repeats, impls, threads=threads)
        if "error" not in turns:
            for name in ("joint", *impls):  # (the child also reports its own peak_rss_mb: not an attack)
                timed = turns[name]
                key = "joint/nonsingular" if name == "joint" else f"input/{name}"
                row[key]["isolated_seconds"] = row[key].get("seconds")
                row[key].update(timed)
            row["ceiling"] = turns["ceiling"]
        else:
            row["ceiling"] = in_fresh_process(attacks.matmul_ceiling, setting, repeats, threads=threads)
        out[setting] = row
    return out


def run_conv(repeats: int, batch: int = 128) -> list[dict[str, Any]]:
    """Per-example joint PGD on the small CNN and LeNet (explicit kernels) beside the MLP (Lemma 1), 1 thread."""
    from . import conv_throughput as conv

    return [
        in_fresh_process(conv.measure, name, kind, scope, batch, repeats, threads=1)
        for name, kind, scope in conv.CONFIGS
    ]


def run_profile(threads: int) -> dict[str, Any]:
    """Operator profile (torch.profiler) of our input-only and joint PGD: why joint costs more than input-only."""
    from . import profile_joint

    return {setting: in_fresh_process(profile_joint.profile_both, setting, threads=threads) for setting in SETTINGS}


def run_certificates(threads: int) -> dict[str, Any]:
    from . import certificates

    return in_fresh_process(certificates.bound_comparison, threads=threads)


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
        "Produced by one run of `make bench` (`.venv/bin/python -m benchmarks.run`). 10 PGD steps, no random start,",
        "the same step size (2.5 eps / steps) for every implementation. Our input and joint PGD and the peers' input",
        "PGD are timed in one process taking turns (median of 20 rounds after warm-up), so a shared machine's",
        "drifting load does not bias their ratios; peak RSS comes from running each alone in a fresh process.",
        "The explicit per-example versions run once each in their own process.",
        "",
        f"Machine: {meta['device']}, {meta['threads']} threads, {meta['processor']}; torch {meta['torch']},",
        f"Python {meta['python']}; peers: {meta['peers']}.",
        "",
        "Peers are optional: `make bench` installs torchattacks and ART. auto_LiRPA's releases pin torch < 2.9, so",
        "it is measured only when importable: put its source (github.com/Checked-Intelligence/auto_LiRPA) on",
        "PYTHONPATH, e.g. `PYTHONPATH=/path/to/auto_LiRPA make bench`. Timings on a shared machine vary by about",
        "+-15% between runs; ratios within one run are the figures to compare.",
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
                f"- joint / input-only time (ours, same steps): **{joint_ratio:.2f}x** (target <= 1.15x)",
                f"- dense float32 matmul ceiling at these sizes: {ceiling['gflops']:.1f} GFLOP/s; input-only PGD "
                f"achieves {achieved:.1f} GFLOP/s of forward + input-gradient work = **{share:.0f}%** (target >= 75% "
                "on 784-512-512-10)",
            ]
            if "seconds" in row["joint/vmap"]:
                lines.append(
                    f"- speed-up over explicit per-example weights (vmap): **{_ratio(ours_joint, row['joint/vmap'])}**"
                    " (target >= 100x at batch 256 on 784-512-512-10)"
                )
        lines.append("")
    if results.get("shapes"):
        lines += render_shapes(results["shapes"])
    if results.get("scaling"):
        from .scaling import render_scaling

        lines += render_scaling(results["scaling"])
    profiles = results.get("profile")
    if profiles:
        lines += [
            "## Profile: where joint PGD spends the time input-only PGD does not",
            "",
            "torch.profiler self CPU time of one attack run (`python -m benchmarks.profile_joint` prints the same).",
            "",
        ]
        for setting, prof in profiles.items():
            if "error" in prof:
                lines += [f"- {SETTINGS[setting]}: not measured ({prof['error']})", ""]
                continue
            lines += [f"### {SETTINGS[setting]}", "", "| op | input-only ms | joint ms |", "| --- | --- | --- |"]
            for op, a, b in prof["ops"]:
                lines.append(f"| {op} | {a:.1f} | {b:.1f} |")
            lines += [
                f"| **total** | {prof['input_total']:.1f} | {prof['joint_total']:.1f} |",
                f"| matmuls (addmm, mm) | {prof['input_matmul']:.1f} | {prof['joint_matmul']:.1f} |",
                "",
            ]
    conv_rows = results.get("conv")
    if conv_rows:
        from .conv_throughput import EPS_W, EPS_X, MODELS, STEPS

        lines += [
            f"## Convolutions: joint PGD throughput at batch 128, MNIST shape, 1 thread ({STEPS} steps, "
            f"eps_x={EPS_X}, eps_w={EPS_W})",
            "",
            "Per-example scope perturbs explicit per-example kernels for the convolutions (Lemma 1 does not hold",
            "for them) and takes Lemma 1 for Linear layers; memory is the growth of peak RSS over the attack.",
            "",
            "| model | threat | scope | examples/s | attack memory | explicit W' | robust acc | checked |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in conv_rows:
            if "error" in r:
                lines.append(f"| n/a ({r['error']}) | | | | | | | |")
                continue
            lines.append(
                f"| {MODELS[r['model']]} | {r['threat']} | {r['scope']} | {r['examples_per_s']:.0f} | "
                f"{r['attack_rss_growth_mb']:.0f} MB | {r['explicit_weights_mb']:.1f} MB | "
                f"{100 * r['robust_accuracy']:.1f}% | {r['checked']} |"
            )
        lines.append("")
        speed = {(r["model"], r["threat"], r["scope"]): r["examples_per_s"] for r in conv_rows if "error" not in r}
        for model in ("cnn", "lenet"):
            joint, alone = speed.get((model, "joint", "per-example")), speed.get((model, "input", "per-example"))
            if joint and alone:
                lines.append(
                    f"- {MODELS[model]}: per-example joint / input-only speed **{joint / alone:.2f}x** (target >= 0.6x)"
                )
        lines.append("")
    certs = results.get("certificates")
    if certs and "error" not in certs:
        lines += [
            f"## Certificates: digits MLP, first {certs['n']} test examples, eps_x={certs['eps_x']}, "
            f"eps_w={certs['eps_w']} (per-example, absolute element-wise), float64 on the CPU",
            "",
            f"auto_LiRPA: {certs['auto_LiRPA']}.",
            "",
            "| bound | certified | median worst-margin lower bound | seconds | time ratio (auto_LiRPA / ours) |",
            "| --- | --- | --- | --- | --- |",
        ]
        for label in ("nonsingular ibp", "auto_LiRPA IBP", "nonsingular crown", "auto_LiRPA CROWN"):
            if label not in certs:
                continue
            r = certs[label]
            ours = certs["nonsingular " + label.split()[-1].lower()]
            ratio = f"{r['seconds'] / ours['seconds']:.0f}x" if label.startswith("auto") else "1"
            cert, margin = f"{100 * r['certified']:.1f}%", f"{r['median_margin_lb']:.4g}"
            lines.append(f"| {label} | {cert} | {margin} | {r['seconds']:.3f} | {ratio} |")
        if "crown_at_least_as_tight" in certs:
            lines += [
                "",
                f"- our CROWN bound is at least as tight as auto_LiRPA's on {certs['crown_at_least_as_tight']}/"
                f"{certs['n']} examples (median gain in the worst margin bound {certs['crown_median_gain']:.4g})",
            ]
        lines.append("")
    elif certs:
        lines += ["## Certificates", "", f"not measured: {certs['error']}", ""]
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
            if isinstance(seconds, float) and name != "peak_rss_mb":  # the process's memory, not an objective
                lines.append(f"| {name} | {seconds:.2f} | {seconds / base:.1f}x |")
        if "joint-at" in training and "pgd-at" in training:
            ratio = training["joint-at"] / training["pgd-at"]
            lines += [
                "",
                f"- joint-at / pgd-at time per epoch (same 7 attack steps): **{ratio:.2f}x** (target <= 1.3x)",
            ]
        for setting, times in training.items():
            if isinstance(times, dict) and "joint-at" in times and "pgd-at" in times:
                joint, pgd = times["joint-at"], times["pgd-at"]
                lines.append(
                    f"- {setting}, batch 64: joint-at / pgd-at time per epoch **{joint / pgd:.2f}x** "
                    f"({joint:.2f} vs {pgd:.2f} s; target <= 1.3x)"
                )
        lines.append("")
    elif training:
        lines += ["## Training", "", f"not measured: {training['error']}", ""]
    return "\n".join(lines) + "\n"


def render_shapes(shapes: dict[str, Any]) -> list[str]:
    """The shapes table: per setting and thread count, ours vs torchattacks (input) and our joint attack."""
    lines = [
        "## Every MLP shape: input and joint PGD, ours vs torchattacks, 1 and 2 threads",
        "",
        f"{attacks.STEPS} steps, no random start, step 2.5 eps / steps, eps as in the tables above (digits 0.05 /",
        "0.002, the others 0.02 / 0.0005, absolute element-wise). The three attacks take turns in one process",
        "(median over the rounds after a warm-up); the synthetic MLPs have random weights and labels = their own",
        "predictions. Matmul share: forward + input-gradient matmul work of the 10 steps over input PGD's time,",
        "against the dense float32 rate at the same sizes and thread count.",
        "",
        "| MLP, batch | threads | ours input ms | torchattacks input ms | ours joint ms | joint / input "
        "| torchattacks / ours | matmul share | robust acc: ours / torchattacks / joint |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    joint_ratios, peer_ratios = [], []
    for setting, per_threads in shapes.items():
        for threads, r in per_threads.items():
            if "error" in r:
                lines.append(f"| {SETTINGS[setting]} | {threads} | n/a ({r['error']}) | | | | | | |")
                continue
            ours, joint, ceiling = r["nonsingular"], r["joint"], r["ceiling"]
            peer = r.get("torchattacks", {})
            joint_ratio = joint["seconds"] / ours["seconds"]
            joint_ratios.append(joint_ratio)
            share = ceiling["flops_per_step"] * attacks.STEPS / ours["seconds"] / 1e9 / ceiling["gflops"]
            if "seconds" in peer:
                peer_ratio = peer["seconds"] / ours["seconds"]
                peer_ratios.append(peer_ratio)
                peer_ms, peer_cell = f"{1000 * peer['seconds']:.1f}", f"{peer_ratio:.2f}x"
                peer_acc = f"{100 * peer['robust_accuracy']:.1f}%"
            else:
                peer_ms = peer_cell = peer_acc = "n/a"
            lines.append(
                f"| {SETTINGS[setting]} | {threads} | {1000 * ours['seconds']:.1f} | {peer_ms} | "
                f"{1000 * joint['seconds']:.1f} | {joint_ratio:.2f}x | {peer_cell} | {100 * share:.0f}% | "
                f"{100 * ours['robust_accuracy']:.1f}% / {peer_acc} / {100 * joint['robust_accuracy']:.1f}% |"
            )
    if joint_ratios:
        lines += [
            "",
            f"- joint / input (ours): {min(joint_ratios):.2f}x to **{max(joint_ratios):.2f}x** (target <= 1.15x)",
        ]
    if peer_ratios:
        lines.append(
            f"- torchattacks time / ours (input): **{min(peer_ratios):.2f}x** to {max(peer_ratios):.2f}x "
            "(target >= 1.05x)"
        )
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument(
        "--sections",
        default="attacks,shapes,scaling,profile,conv,certificates,training",
        help="comma-separated: attacks, shapes, scaling, profile, conv, certificates, training",
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument(
        "--markdown", type=Path, default=None, help="[default: BENCHMARKS.md; on CUDA benchmarks/BENCHMARKS-cuda.md]"
    )
    parser.add_argument("--json", type=Path, default=None, help="[default: benchmarks/results.json; -cuda on CUDA]")
    parser.add_argument("--render", type=Path, default=None, help="only re-render the markdown from this results JSON")
    args = parser.parse_args()
    if args.render is not None:
        markdown = args.markdown or Path("BENCHMARKS.md")
        markdown.write_text(render(json.loads(args.render.read_text())) + _kept_sections(markdown))
        print(f"wrote {markdown} from {args.render}")
        return
    sections = set(args.sections.split(","))
    os.environ["NONSINGULAR_BENCH_DEVICE"] = args.device  # the spawned measurement processes read it
    device = bench_device()
    device_name = f"CUDA {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "CPU"
    # GPU figures are kept apart from the CPU ones (BENCHMARKS.md), never mixed into one table.
    gpu = device.type == "cuda"
    markdown = args.markdown or Path("benchmarks/BENCHMARKS-cuda.md" if gpu else "BENCHMARKS.md")
    json_path = args.json or Path("benchmarks/results-cuda.json" if gpu else "benchmarks/results.json")
    peers = {
        m: (importlib.metadata.version(d) if _peer_available(m) else "missing")
        for m, d in (("torchattacks", "torchattacks"), ("art", "adversarial-robustness-toolbox"))
    }
    results: dict[str, Any] = {
        "machine": {
            "device": device_name,
            "threads": args.threads,
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "peers": ", ".join(f"{k} {v}" for k, v in peers.items()),
        }
    }
    if "attacks" in sections:
        results["attacks"] = run_attacks(args.repeats, args.threads)
    if "shapes" in sections:
        results["shapes"] = run_shapes(args.repeats)
    if "scaling" in sections:
        from .scaling import run_scaling

        results["scaling"] = run_scaling(Path("benchmarks/scaling.png"))
    if "profile" in sections:
        results["profile"] = run_profile(args.threads)
    if "conv" in sections:
        results["conv"] = run_conv(args.repeats)
    if "certificates" in sections:
        results["certificates"] = run_certificates(args.threads)
    if "training" in sections:
        results["training"] = run_training(args.threads)
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    markdown.write_text(render(results) + _kept_sections(markdown))
    print(markdown.read_text())


#: sections written by other scripts (strength.py, compare_lirpa_cnn.py, crown_scaling.py, study_ray_nodes.py,
#: rounding.py, check_speed.py, vnncomp.py, bab_fuzzer.py ...), kept when the rendered ones are rewritten
KEPT_SECTIONS = (
    "## Performance work on the attack kernels",
    "## Certificates: CNNs through the graph engine",
    "## Certificates: CNNs on MNIST digits",
    "## Certificates: scaling",
    "## Strength vs time",
    "## A study on Ray",
    "## Certificates under rounding",
    "## Performance work on the checker",
    "## VNN-COMP 2021 mnistfc",
    "## Complete verification",
)


def _kept_sections(markdown: Path) -> str:
    """The KEPT_SECTIONS of the existing file (each runs to the next '## ' heading), to append after a render."""
    if not markdown.exists():
        return ""
    text, kept = markdown.read_text(), []
    for heading in KEPT_SECTIONS:
        start = text.find("\n" + heading)
        if start >= 0:
            end = text.find("\n## ", start + 1)
            kept.append(text[start : end if end >= 0 else len(text)].rstrip() + "\n")
    return "".join(kept)


if __name__ == "__main__":
    import importlib.metadata

    main()
