"""The study's report: results.json, one CSV per table, figures, report.md and a self-contained report.html.

Everything is derived from the results dict, so a report can be rebuilt from results.json alone.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path
from typing import Any

from ..checkpoint import atomic_write

__all__ = ["headline_rows", "summarise", "write_report"]

HEADLINE_COLUMNS = ("clean", "input-only", "weight-only", "joint per-example", "joint shared", "certified")


def _cell(model: dict[str, Any], eps_x: float, eps_w: float, scope: str = "per-example") -> float | None:
    for c in model["cells"]:
        if c["eps_x"] == eps_x and c["eps_w"] == eps_w and c["scope"] == scope:
            return c["accuracy"]
    return None


def _certified(model: dict[str, Any], eps_x: float, eps_w: float) -> tuple[float | None, str | None]:
    best: tuple[float | None, str | None] = (None, None)
    for c in model.get("certified", []):
        if c["eps_x"] == eps_x and c["eps_w"] == eps_w and (best[0] is None or c["certified_accuracy"] > best[0]):
            best = (c["certified_accuracy"], c["method"])
    return best


def headline_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model at the headline threat: clean, input-only, weight-only, joint (both scopes), certified."""
    hx, hw = results["headline"]["eps_x"], results["headline"]["eps_w"]
    rows = []
    for name, model in results["models"].items():
        cert, method = _certified(model, hx, hw)
        rows.append(
            {
                "model": name,
                "objective": model["objective"],
                "clean": model["clean_accuracy"],
                "input-only": _cell(model, hx, 0.0),
                "weight-only": _cell(model, 0.0, hw),
                "joint per-example": _cell(model, hx, hw),
                "joint shared": _cell(model, hx, hw, "shared"),
                "certified": cert,
                "certified_method": method,
            }
        )
    return rows


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _mean_weight_only(model: dict[str, Any], grid: dict[str, Any]) -> float | None:
    values = [_cell(model, 0.0, ew) for ew in grid["eps_w"] if ew > 0]
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summarise(results: dict[str, Any]) -> list[str]:
    """Sentences stating, from the numbers, whether the paper's two claims hold in this study."""
    models, grid = results["models"], results["grid"]
    by_objective = {m["objective"]: (n, m) for n, m in models.items()}
    lines = []
    std, adv = by_objective.get("standard"), by_objective.get("pgd-at")
    if std and adv:
        s, a = _mean_weight_only(std[1], grid), _mean_weight_only(adv[1], grid)
        drop_s = std[1]["clean_accuracy"] - s if s is not None else None
        drop_a = adv[1]["clean_accuracy"] - a if a is not None else None
        if s is not None and a is not None:
            holds = a <= s or drop_a >= drop_s
            lines.append(
                f"Claim 1 ({'holds' if holds else 'does not hold'} here): under weight-only attacks (per-example, "
                f"mean over eps_w > 0 at eps_x = 0) the input-adversarially-trained model '{adv[0]}' keeps "
                f"{_pct(a)} accuracy (drop {_pct(drop_a)} from clean) against {_pct(s)} (drop {_pct(drop_s)}) for "
                f"the standard model '{std[0]}': input-AT is {'as or more' if holds else 'less'} fragile to weight "
                "perturbations."
            )
    rows = headline_rows(results)
    reg = next((r for r in rows if r["objective"] == "bound-reg"), None)
    if reg and reg["joint per-example"] is not None:
        others = [r for r in rows if r is not reg and r["joint per-example"] is not None]
        best_other = max(others, key=lambda r: r["joint per-example"]) if others else None
        hx, hw = results["headline"]["eps_x"], results["headline"]["eps_w"]
        if best_other is not None:
            beats = reg["joint per-example"] > best_other["joint per-example"]
            std_row = next((r for r in rows if r["objective"] == "standard"), None)
            cost = f"{_pct(std_row['clean'] - reg['clean'])}" if std_row else "n/a"
            lines.append(
                f"Claim 2 ({'holds' if beats else 'does not hold'} here): at eps_x = {hx:g}, eps_w = {hw:g} "
                f"(per-example joint attack) the bound-regularized model '{reg['model']}' has "
                f"{_pct(reg['joint per-example'])} robust accuracy against {_pct(best_other['joint per-example'])} "
                f"for the best other model '{best_other['model']}', at a cost of {cost} clean accuracy relative to "
                "standard training."
            )
    if not lines:
        lines.append("The study's models do not include the objectives the paper's claims compare.")
    return lines


# ---------------------------------------------------------------------- tables
def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    atomic_write(path, lambda tmp: Path(tmp).write_text(buffer.getvalue()))


def _tables(results: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    robust, certified, radius = [], [], []
    for name, model in results["models"].items():
        for c in model["cells"]:
            robust.append({"model": name, **{k: c[k] for k in ("eps_x", "eps_w", "scope", "accuracy", "verified")}})
        for c in model.get("certified", []):
            certified.append({"model": name, **c})
        r = model.get("radius")
        if r:
            for i, (a, c) in enumerate(zip(r["attack"], r["certified"], strict=True)):
                radius.append({"model": name, "example": i, "attacked_radius": a, "certified_radius": c})
    return {"headline": headline_rows(results), "robust_accuracy": robust, "certified": certified, "radius": radius}


# ---------------------------------------------------------------------- documents
def _markdown(results: dict[str, Any], figures: list[str], summary: list[str]) -> str:
    hx, hw = results["headline"]["eps_x"], results["headline"]["eps_w"]
    grid = results["grid"]
    lines = [
        f"# Study: {results['name']}",
        "",
        f"Data: {results['data']['name']} ({results['data']['n_test']} test examples, {results['n_examples']} "
        f"evaluated). Threat grid: eps_x in {grid['eps_x']}, eps_w in {grid['eps_w']} ({grid['weight_mode']} "
        f"{grid['weight_ball']}), scopes {', '.join(grid['scopes'])}. Attack: `{results['attack']}`. "
        "Robust accuracies are attack results checked by the verifier (upper bounds on the truth); certified "
        "accuracies are lower bounds.",
        "",
        "## Summary",
        "",
        *[f"- {s}" for s in summary],
        "",
        f"## Headline (eps_x = {hx:g}, eps_w = {hw:g})",
        "",
        "| model | objective | " + " | ".join(HEADLINE_COLUMNS) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in HEADLINE_COLUMNS) + " |",
    ]
    for row in headline_rows(results):
        lines.append(
            f"| {row['model']} | {row['objective']} | " + " | ".join(_pct(row[c]) for c in HEADLINE_COLUMNS) + " |"
        )
    lines += ["", "## Sanity flags", ""]
    lines += [f"- {f['check']}: {f['message']}" for f in all_flags(results)] or ["- none raised"]
    lines += ["", "## Figures", ""]
    lines += [f"![{f}]({f})" for f in figures]
    lines += ["", "## Models", ""]
    lines += [f"- {line}" for line in _model_lines(results)]
    lines += ["", f"Versions: {', '.join(f'{k} {v}' for k, v in results['versions'].items())}.", ""]
    return "\n".join(lines)


def _model_lines(results: dict[str, Any]) -> list[str]:
    """Per model: where it came from (trained now, or reused from the cache and which file) and the timings."""
    lines = []
    for name, model in results["models"].items():
        origin = (
            f"reused from the cache ({model.get('cache_file') or 'cached model'}; trained in "
            f"{model['train_seconds']:.1f} s when it was made)"
            if model.get("cached")
            else f"trained in this run in {model['train_seconds']:.1f} s"
        )
        lines.append(f"{name}: {origin}; evaluated in {model['eval_seconds']:.1f} s")
    return lines


def all_flags(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every model's sanity flags, in model order (see nonsingular.sanity)."""
    return [f for model in results["models"].values() for f in model.get("flags", [])]


def _html(results: dict[str, Any], folder: Path, figures: list[str], summary: list[str]) -> str:
    hx, hw = results["headline"]["eps_x"], results["headline"]["eps_w"]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ("model", "objective", *HEADLINE_COLUMNS))
    body = "".join(
        "<tr>"
        + f"<td>{html.escape(r['model'])}</td><td>{html.escape(r['objective'])}</td>"
        + "".join(f"<td class='num'>{_pct(r[c])}</td>" for c in HEADLINE_COLUMNS)
        + "</tr>"
        for r in headline_rows(results)
    )
    images = "".join(
        f"<figure><img alt='{html.escape(f)}' src='data:image/png;base64,"
        f"{base64.b64encode((folder / f).read_bytes()).decode()}'><figcaption>{html.escape(f)}</figcaption></figure>"
        for f in figures
    )
    grid = results["grid"]
    flags = "".join(f"<li>{html.escape(f['check'])}: {html.escape(f['message'])}</li>" for f in all_flags(results))
    flags = flags or "<li>none raised</li>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>nonsingular study: {html.escape(results["name"])}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }} th, td {{ border: 1px solid #ccc; padding: 4px 10px; }}
th {{ background: #f0f0f0; }} td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; border: 1px solid #eee; }} li {{ margin: .4em 0; }}
</style></head><body>
<h1>Study: {html.escape(results["name"])}</h1>
<p>Data: {html.escape(results["data"]["name"])}, {results["n_examples"]} test examples evaluated. Threat grid:
eps_x in {grid["eps_x"]}, eps_w in {grid["eps_w"]} ({grid["weight_mode"]} {grid["weight_ball"]}).
Attack: <code>{html.escape(results["attack"])}</code>. Robust accuracies are verified attack results (upper bounds);
certified accuracies are lower bounds.</p>
<h2>Summary</h2><ul>{"".join(f"<li>{html.escape(s)}</li>" for s in summary)}</ul>
<h2>Headline (eps_x = {hx:g}, eps_w = {hw:g})</h2>
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<h2>Sanity flags</h2><ul>{flags}</ul>
<h2>Figures</h2>{images}
<h2>Models</h2><ul>{"".join(f"<li>{html.escape(line)}</li>" for line in _model_lines(results))}</ul>
<p>Versions: {html.escape(", ".join(f"{k} {v}" for k, v in results["versions"].items()))}</p>
</body></html>
"""


def write_report(results: dict[str, Any], folder: Path) -> Path:
    """Write results.json, CSVs, PNGs, report.md and report.html into `folder`; returns report.html's path."""
    folder.mkdir(parents=True, exist_ok=True)
    summary = summarise(results)
    results = {**results, "summary": summary}
    text = json.dumps(results, indent=2, allow_nan=False) + "\n"
    atomic_write(folder / "results.json", lambda tmp: Path(tmp).write_text(text))
    for name, rows in _tables(results).items():
        _write_csv(folder / f"{name}.csv", rows)
    from .plots import write_figures  # matplotlib takes ~0.5 s to import: only commands that plot pay it

    figures = write_figures(results, folder)
    markdown = _markdown(results, figures, summary)
    atomic_write(folder / "report.md", lambda tmp: Path(tmp).write_text(markdown))
    page = _html(results, folder, figures, summary)
    atomic_write(folder / "report.html", lambda tmp: Path(tmp).write_text(page))
    return folder / "report.html"
