"""The report's optional sections (scale, quantization) in Markdown and HTML, and the attack note every table
carries: split from study.report so that each file has one job (report.py: the summary, the tables and the
documents' frame).
"""

from __future__ import annotations

import html
from typing import Any

from ..formatting import points
from .quantization_grid import COLUMNS as QUANTIZATION_COLUMNS
from .quantization_grid import SURVIVAL_POINTS, quantization_stats, quantization_summary
from .records import StudyResults
from .scale import scale_rows, scale_summary
from .stats import runs

__all__ = ["SCALE_INTRO", "attack_note", "quantization_html", "quantization_markdown", "scale_html", "scale_markdown"]


def attack_note(results: StudyResults, headline: bool = False) -> str:
    """Which attack a results table's robust accuracies come from (its repr), so that a number is never read
    against another attack's (e.g. `nonsingular evaluate`'s default ensemble). `headline`: the headline
    point's cells, which `headline_kind` may give their own attack."""
    if headline:
        return f"Attack: `{results.headline_attack or results.attack}`."
    special = results.headline_attack
    return f"Attack: `{results.attack}`" + (f" (headline point: `{special}`)." if special else ".")


SCALE_INTRO = (
    "ReLU networks are positively homogeneous: scaling a layer by c and the next by 1/c leaves the function "
    "unchanged. Relative radii scale with the weights and are invariant under that rescaling; absolute radii are "
    "not, so an absolute-mode verdict may measure weight scale. Lemma 1: the per-example element-wise weight "
    "adversary's power at layer l is eps_w * ||h_{l-1}||_1 (input_l1 below)."
)


def _layer_means(results: StudyResults) -> list[dict[str, Any]]:
    """Per model and layer, the layer statistics averaged over seeds."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in scale_rows(results)["scale_layers"]:
        grouped.setdefault((row["model"], row["layer"]), []).append(row)
    keys = ("max_abs", "operator", "frobenius", "input_l1")
    return [
        {"model": m, "layer": layer, **{k: sum(r[k] for r in rows) / len(rows) for k in keys}}
        for (m, layer), rows in grouped.items()
    ]


def scale_markdown(results: StudyResults) -> list[str]:
    tables = scale_rows(results)
    if not tables["scale_layers"]:
        return []
    lines = ["", "## Scale: parametrizations and rescaling", "", SCALE_INTRO + " " + attack_note(results), ""]
    lines += [f"- {line}" for line in scale_summary(results)]
    lines += ["", "| parametrization | claim | subject | reference | scope | verdict | mean difference (points) |"]
    lines += ["| --- | --- | --- | --- | --- | --- | ---: |"]
    for v in tables["scale_verdicts"]:
        lines.append(
            f"| {v['parametrization']} | {v['claim']} | {v['subject']} | {v['reference']} | {v['scope']} | "
            f"{v['verdict']} | {points(v['mean_difference'], '+.2f')} |"
        )
    lines += ["", "| model | layer | max abs w | l_inf operator norm | Frobenius | mean input l1 |"]
    lines += ["| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in _layer_means(results):
        lines.append(
            f"| {r['model']} | {r['layer']} | {r['max_abs']:.3g} | {r['operator']:.3g} | {r['frobenius']:.3g} | "
            f"{r['input_l1']:.3g} |"
        )
    return lines


def _quantization_intro(results: StudyResults) -> str:
    section = next((r.quantization for m in results.models.values() for r in runs(m) if r.quantization), {})
    return (
        f"Integer weight grids ({section.get('scheme', '')} scales from each tensor's or output channel's range; "
        f"{section.get('n_examples', '')} examples). Accuracies of the model quantized by round-to-nearest, by "
        "random rounding and by the worst-case rounding the attack finds (shared: one deployed model for all "
        "inputs; per-example: a rounding per input), measured by the ordinary module on weights exactly on the "
        f"grid; certified ({section.get('method', '')}): every weight within half a grid step of its float value, "
        f"jointly with eps_x. A model survives a grid when its worst shared rounding costs at most "
        f"{SURVIVAL_POINTS:g} points of its float accuracy (mean over seeds)."
    )


def _quantization_table(results: StudyResults) -> tuple[list[str], list[list[str]]]:
    header = ["model", "grid", "eps_x", *QUANTIZATION_COLUMNS]
    rows = [
        [e["model"], f"int{e['bits']} {e['granularity']}", f"{e['eps_x']:g}"]
        + [e["stats"][c].text() for c in QUANTIZATION_COLUMNS]
        for e in quantization_stats(results)
    ]
    return header, rows


def quantization_markdown(results: StudyResults) -> list[str]:
    header, rows = _quantization_table(results)
    if not rows:
        return []
    intro = _quantization_intro(results) + " " + attack_note(results)
    lines = ["", "## Quantization: which defences survive deployment", "", intro, ""]
    lines += [f"- {line}" for line in quantization_summary(results)]
    lines += [
        "",
        "| " + " | ".join(header) + " |",
        "| --- | --- | ---: | " + " | ".join("---:" for _ in header[3:]) + " |",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def quantization_html(results: StudyResults) -> str:
    header, rows = _quantization_table(results)
    if not rows:
        return ""
    items = "".join(f"<li>{html.escape(line)}</li>" for line in quantization_summary(results))
    return (
        "<h2>Quantization: which defences survive deployment</h2>"
        f"<p>{html.escape(_quantization_intro(results) + ' ' + attack_note(results))}</p>"
        f"<ul>{items}</ul>{_table_html(header, rows)}"
    )


def _table_html(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def scale_html(results: StudyResults) -> str:
    tables = scale_rows(results)
    if not tables["scale_layers"]:
        return ""
    verdicts = _table_html(
        ["parametrization", "claim", "subject", "reference", "scope", "verdict", "mean difference (points)"],
        [
            [
                v["parametrization"],
                str(v["claim"]),
                v["subject"],
                v["reference"],
                v["scope"],
                v["verdict"],
                points(v["mean_difference"], "+.2f"),
            ]
            for v in tables["scale_verdicts"]
        ],
    )
    layers = _table_html(
        ["model", "layer", "max abs w", "l_inf operator norm", "Frobenius", "mean input l1"],
        [
            [r["model"], r["layer"]] + [f"{r[k]:.3g}" for k in ("max_abs", "operator", "frobenius", "input_l1")]
            for r in _layer_means(results)
        ],
    )
    items = "".join(f"<li>{html.escape(line)}</li>" for line in scale_summary(results))
    return (
        "<h2>Scale: parametrizations and rescaling</h2>"
        f"<p>{html.escape(SCALE_INTRO + ' ' + attack_note(results))}</p><ul>{items}</ul>"
        f"{verdicts}{layers}"
    )
