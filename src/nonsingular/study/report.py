"""The study's report: results.json, one CSV per table, figures, report.md and a self-contained report.html.

Everything is derived from the typed results (study.records), so a report can be rebuilt from results.json alone
(StudyResults.from_json is the one conversion from its JSON).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path
from typing import Any

from ..attacks.sanity import SanityFlag
from ..formatting import percent, points
from ..models.checkpoint import atomic_write
from .quantization_grid import quantization_rows
from .records import StudyResults
from .report_sections import attack_note, quantization_html, quantization_markdown, scale_html, scale_markdown
from .scale import scale_rows
from .selection import validation_candidates, validation_choice
from .stats import Stat, cell_stat, certified_stat, runs
from .verdicts import FLOOR, Z, claim_comparisons, parametrization_views

__all__ = [
    "HEADLINE_COLUMNS",
    "all_flags",
    "headline_rows",
    "headline_stats",
    "summarise",
    "verdict_rows",
    "write_report",
]

HEADLINE_COLUMNS = ("clean", "input-only", "weight-only", "joint per-example", "joint shared", "certified")


def headline_stats(results: StudyResults) -> list[tuple[str, str, dict[str, Stat]]]:
    """(model, objective, column -> Stat) per model at the headline threat."""
    hx, hw = results.headline["eps_x"], results.headline["eps_w"]
    rows = []
    for name, model in results.models.items():
        stats = {
            "clean": Stat.of([r.clean_accuracy for r in runs(model)]),
            "input-only": cell_stat(model, hx, 0.0),
            "weight-only": cell_stat(model, 0.0, hw),
            "joint per-example": cell_stat(model, hx, hw),
            "joint shared": cell_stat(model, hx, hw, "shared"),
            "certified": certified_stat(model, hx, hw)[0],
        }
        rows.append((name, model.objective, stats))
    return rows


def headline_rows(results: StudyResults) -> list[dict[str, Any]]:
    """One row per model at the headline threat: mean over seeds (and `<column> sd`) of clean, input-only,
    weight-only, joint (both scopes) and certified accuracy."""
    hx, hw = results.headline["eps_x"], results.headline["eps_w"]
    rows = []
    for name, objective, stats in headline_stats(results):
        row: dict[str, Any] = {"model": name, "objective": objective, "seeds": stats["clean"].n}
        for column in HEADLINE_COLUMNS:
            row[column], row[f"{column} sd"] = stats[column].mean, stats[column].sd
        row["certified_method"] = certified_stat(results.models[name], hx, hw)[1]
        rows.append(row)
    return rows


def summarise(results: StudyResults) -> list[str]:
    """Sentences stating, from the numbers and by the rule of study.verdicts, whether the paper's two claims hold
    in this study, each with the per-seed differences behind it."""
    comparisons = claim_comparisons(results)
    if not comparisons:
        return ["The study's models do not include the objectives the paper's claims compare."]
    lines = [c.sentence() for c in comparisons]
    against_standard = [
        c
        for c in comparisons
        if c.claim == 2
        and c.mean is not None
        and c.reference in _standard_models(results)
        and c.parametrization == comparisons[0].parametrization  # the main grid's parametrization
    ]
    if len({c.subject for c in against_standard}) > 1:  # several regularized variants: name the best
        best = max(against_standard, key=lambda c: c.mean)  # type: ignore[arg-type, return-value]
        lines.append(
            f"Best regularized variant against standard: '{best.subject}' ({best.scope} scope, mean joint difference "
            f"{points(best.mean, '+.2f')} points vs '{best.reference}', verdict: {best.verdict}; chosen on the "
            "test cells, so optimistic: the validation choice below is the fair one)."
        )
    chosen = validation_choice(results)
    if chosen is not None:
        others = ", ".join(
            f"'{c.model}' {percent(c.mean_robust)}" for c in validation_candidates(results) if c.model != chosen.model
        )
        own = [c for c in comparisons if c.claim == 2 and c.subject == chosen.model]
        verdicts = "; ".join(
            f"vs '{c.reference}' ({c.parametrization}, {c.scope}): {c.verdict} ({points(c.mean, '+.2f')} points)"
            for c in own
        )
        lines.append(
            f"Regularized variant selected on the validation split (held out from the training set; highest mean "
            f"validation joint robust accuracy): '{chosen.model}' at {percent(chosen.mean_robust)} (others: {others}). "
            f"Claim 2 rests on it: {verdicts}."
        )
    return lines


def _standard_models(results: StudyResults) -> set[str]:
    return {name for name, model in results.models.items() if model.objective == "standard"}


def verdict_rows(results: StudyResults) -> list[dict[str, Any]]:
    """One row per judged comparison: claim, subject, reference, scope, verdict and its numbers (fractions)."""
    return [c.row() for c in claim_comparisons(results)]


# ---------------------------------------------------------------------- tables
def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda tmp: Path(tmp).write_text(buffer.getvalue()))


def _tables(results: StudyResults) -> dict[str, list[dict[str, Any]]]:
    robust, summary, certified, radius = [], [], [], []
    for label, view in parametrization_views(results):
        grid = view.grid
        for name, model in view.models.items():
            for c in model.cells:
                robust.append(
                    {"model": name, "seed": c.get("seed"), "parametrization": label}
                    | {k: c[k] for k in ("eps_x", "eps_w", "scope", "accuracy", "checked")}
                )
            for scope in grid["scopes"]:
                for ex in grid["eps_x"]:
                    for ew in grid["eps_w"]:
                        if ex > 0 or ew > 0:
                            st = cell_stat(model, ex, ew, scope)
                            row = {"model": name, "parametrization": label, "eps_x": ex, "eps_w": ew, "scope": scope}
                            summary.append(row | {"mean": st.mean, "sd": st.sd, "seeds": st.n})
    for name, model in results.models.items():
        for c in model.certified:
            certified.append({"model": name, "seed": c.get("seed")} | {k: v for k, v in c.items() if k != "seed"})
        for run in runs(model):
            r = run.radius
            if r:
                for i, (a, c) in enumerate(zip(r["attack"], r["certified"], strict=True)):
                    radius.append(
                        {"model": name, "seed": run.seed, "example": i, "attacked_radius": a, "certified_radius": c}
                    )
    tables = {
        "headline": headline_rows(results),
        "verdicts": verdict_rows(results),
        "robust_accuracy": robust,
        "robust_summary": summary,
        "certified": certified,
        "radius": radius,
        "selection": [c.row() for c in validation_candidates(results)],
        **scale_rows(results),
        "quantization": quantization_rows(results),
    }
    return {name: rows for name, rows in tables.items() if rows}  # an empty table writes no file


# ---------------------------------------------------------------------- documents
def rule_text() -> str:
    """The decision rule of the claims, in one paragraph (see study.verdicts)."""
    return (
        "Decision rule: per pair of models and scope, the per-seed difference is the mean over the cells "
        "(claim 1: weight-only, eps_x = 0; claim 2: joint, both > 0) of subject minus reference accuracy, leaving "
        f"out cells where both models are below {100 * FLOOR:.0f}%. A difference is decided when it has the same "
        f"sign in every seed and its mean exceeds {Z:g} standard errors; one seed is never decided. Claim 1 holds "
        "when input-AT's accuracy is lower (more fragile); claim 2 holds when bound-reg's is higher."
    )


def _intro(results: StudyResults) -> str:
    grid = results.grid
    others = "".join(
        f" Also {p['weight_ball']} {p['weight_mode']}: eps_w in {p['eps_w']} at eps_x in "
        f"{sorted({0.0, results.headline['eps_x']})}."
        for p in grid.get("parametrizations") or []
    )
    return (
        f"Data: {results.data['name']} ({results.data['n_test']} test examples, {results.n_examples} "
        f"evaluated). Seeds: {results.seeds} (every model trained and evaluated once per seed; tables show mean ± "
        f"standard deviation over seeds). Threat grid: eps_x in {grid['eps_x']}, eps_w in {grid['eps_w']} "
        f"({grid['weight_mode']} {grid['weight_ball']}), scopes {', '.join(grid['scopes'])}. Attack: "
        f"`{results.attack}`"
        + (f" (headline point: `{results.headline_attack}`)" if results.headline_attack else "")
        + ". Robust accuracies are attack results checked by the checker (upper bounds on the "
        "truth); certified accuracies are lower bounds." + others + _certify_scope(results)
    )


def _certify_scope(results: StudyResults) -> str:
    """Where the certificates were computed, when not on every example at every grid point."""
    cert = results.config.get("certify", {})
    n, points = cert.get("n_examples"), cert.get("points")
    if n is None and points is None:
        return ""
    where = "at every grid point" if points is None else "at " + ", ".join(f"({ex:g}, {ew:g})" for ex, ew in points)
    first = f"on the first {n} examples" if n is not None else "on every example"
    return (
        f" Certificates ({', '.join(cert.get('methods', []))}) {first} {where}; certified.csv gives the checked "
        "attack's accuracy on the same examples beside each."
    )


def _markdown(results: StudyResults, figures: list[str], summary: list[str]) -> str:
    hx, hw = results.headline["eps_x"], results.headline["eps_w"]
    lines = [
        f"# Study: {results.name}",
        "",
        _intro(results),
        "",
        "## Summary",
        "",
        rule_text() + " " + attack_note(results),
        "",
        *[f"- {s}" for s in summary],
        "",
        f"## Headline (eps_x = {hx:g}, eps_w = {hw:g})",
        "",
        attack_note(results, headline=True),
        "",
        "| model | objective | " + " | ".join(HEADLINE_COLUMNS) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in HEADLINE_COLUMNS) + " |",
    ]
    for name, objective, stats in headline_stats(results):
        lines.append(f"| {name} | {objective} | " + " | ".join(stats[c].text() for c in HEADLINE_COLUMNS) + " |")
    lines += ["", "## Sanity flags", ""]
    lines += [f"- {f.check}: {f.message}" for f in all_flags(results)] or ["- none raised"]
    lines += scale_markdown(results)
    lines += quantization_markdown(results)
    lines += ["", "## Figures", ""]
    lines += [f"![{f}]({f})" for f in figures]
    lines += ["", "## Models", ""]
    lines += [f"- {line}" for line in _model_lines(results)]
    lines += ["", f"Versions: {', '.join(f'{k} {v}' for k, v in results.versions.items())}.", ""]
    return "\n".join(lines)


def all_flags(results: StudyResults) -> list[SanityFlag]:
    """Every model's sanity flags (every seed), in model order (see nonsingular.attacks.sanity)."""
    return [f for model in results.models.values() for f in model.flags]


def _model_lines(results: StudyResults) -> list[str]:
    """Per model and seed: where it came from (trained now, or reused from the cache and which file), timings."""
    lines = []
    for name, model in results.models.items():
        for run in runs(model):
            origin = (
                f"reused from the cache ({run.cache_file or 'cached model'}; trained in "
                f"{run.train_seconds:.1f} s when it was made)"
                if run.cached
                else f"trained in this run in {run.train_seconds:.1f} s"
            )
            lines.append(
                f"{name} seed {run.seed}: clean {percent(run.clean_accuracy)}; {origin}; "
                f"evaluated in {run.eval_seconds:.1f} s"
            )
    return lines


def _html(results: StudyResults, folder: Path, figures: list[str], summary: list[str]) -> str:
    hx, hw = results.headline["eps_x"], results.headline["eps_w"]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ("model", "objective", *HEADLINE_COLUMNS))
    body = "".join(
        "<tr>"
        + f"<td>{html.escape(name)}</td><td>{html.escape(objective)}</td>"
        + "".join(f"<td class='num'>{html.escape(stats[c].text())}</td>" for c in HEADLINE_COLUMNS)
        + "</tr>"
        for name, objective, stats in headline_stats(results)
    )
    verdicts = verdict_rows(results)
    keys = ("parametrization", "claim", "subject", "reference", "scope", "verdict")
    vhead = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    vhead += "<th>mean difference</th><th>standard error</th><th>seeds</th><th>cells (excluded)</th>"
    vbody = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(str(v[k]))}</td>" for k in keys)
        + f"<td class='num'>{points(v['mean_difference'], '+.2f')}</td>"
        + f"<td class='num'>{points(v['standard_error'], '.2f')}</td>"
        + f"<td class='num'>{v['seeds']}</td><td class='num'>{v['cells']} ({v['excluded']})</td>"
        + "</tr>"
        for v in verdicts
    )
    flags = "".join(f"<li>{html.escape(f.check)}: {html.escape(f.message)}</li>" for f in all_flags(results))
    flags = flags or "<li>none raised</li>"
    images = "".join(
        f"<figure><img alt='{html.escape(f)}' src='data:image/png;base64,"
        f"{base64.b64encode((folder / f).read_bytes()).decode()}'><figcaption>{html.escape(f)}</figcaption></figure>"
        for f in figures
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>nonsingular study: {html.escape(results.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }} th, td {{ border: 1px solid #ccc; padding: 4px 10px; }}
th {{ background: #f0f0f0; }} td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; border: 1px solid #eee; }} li {{ margin: .4em 0; }}
</style></head><body>
<h1>Study: {html.escape(results.name)}</h1>
<p>{html.escape(_intro(results))}</p>
<h2>Summary</h2><p>{html.escape(rule_text() + " " + attack_note(results))}</p>
<table><thead><tr>{vhead}</tr></thead><tbody>{vbody}</tbody></table>
<ul>{"".join(f"<li>{html.escape(s)}</li>" for s in summary)}</ul>
<h2>Headline (eps_x = {hx:g}, eps_w = {hw:g}; mean ± sd over seeds)</h2>
<p>{html.escape(attack_note(results, headline=True))}</p>
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<h2>Sanity flags</h2><ul>{flags}</ul>
{scale_html(results)}
{quantization_html(results)}
<h2>Figures</h2>{images}
<h2>Models</h2><ul>{"".join(f"<li>{html.escape(line)}</li>" for line in _model_lines(results))}</ul>
<p>Versions: {html.escape(", ".join(f"{k} {v}" for k, v in results.versions.items()))}</p>
</body></html>
"""


def write_report(results: StudyResults, folder: Path) -> Path:
    """Write results.json, CSVs, PNGs, report.md and report.html into `folder`; returns report.html's path.

    results.json holds the results (StudyResults.to_json) with the summary and the verdict rows added; a report
    is rebuilt from it by `write_report(StudyResults.from_json(json.loads(text)), folder)`.
    """
    folder.mkdir(parents=True, exist_ok=True)
    summary = summarise(results)
    document = {**results.to_json(), "summary": summary, "verdicts": verdict_rows(results)}
    text = json.dumps(document, indent=2, allow_nan=False) + "\n"
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
