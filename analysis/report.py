"""One self-contained HTML report per study: run summary, Δ tables, fits with intervals, figures
embedded as base64 PNG (no external files, no scripts)."""
from __future__ import annotations

import base64
import datetime as dt
import html
import io
from pathlib import Path

import pandas as pd

from analysis.fits import LAWS, fit_study
from results import Results, load_results

__all__ = ["write_report", "render_report"]

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
     color:#222;line-height:1.4;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table.pd-table{border-collapse:collapse;font-size:.85em;margin:.8em 0;display:block;overflow-x:auto}
table.pd-table th,table.pd-table td{border:1px solid #ddd;padding:.25em .5em;text-align:right;white-space:nowrap}
table.pd-table th{background:#f4f4f4}table.pd-table td:first-child{text-align:left}
td.up{color:#1a7f37}td.down{color:#cf222e}
figure{margin:1.2em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}.note{color:#666;font-size:.9em}
"""


def _png_b64(fig) -> str:
    from analysis.figures import STYLE

    import matplotlib

    buf = io.BytesIO()
    with matplotlib.rc_context(STYLE):
        fig.savefig(buf, format="png", bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _summary(results: Results) -> str:
    runs = results.runs
    if runs.empty:
        return "<p>This study has no runs yet.</p>"
    counts = runs.groupby(["kind", "status"]).size().unstack(fill_value=0)
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td>" + "".join(f"<td>{int(v)}</td>" for v in r) + "</tr>"
                   for k, r in counts.iterrows())
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in counts.columns)
    out = f'<table class="pd-table"><thead><tr><th>kind</th>{head}</tr></thead><tbody>{rows}</tbody></table>'
    failed = runs[runs["status"] == "failed"]
    if not failed.empty:
        items = "".join(f"<li><code>{html.escape(str(r.trial_id))}</code>: {html.escape(str(r.error or '?'))}</li>"
                        for r in failed.itertuples())
        out += f"<p>Failed runs:</p><ul>{items}</ul>"
    return out


def figures_html(figs: dict, skipped: dict) -> str:
    """Each figure as an embedded PNG with its name, then the ones not drawn and why."""
    parts = [f'<figure><img alt="{name}" src="data:image/png;base64,{_png_b64(fig)}">'
             f"<figcaption>{html.escape(name)}</figcaption></figure>" for name, fig in figs.items()]
    if skipped:
        items = "".join(f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in skipped.items())
        parts.append(f"<p class='note'>Not drawn:</p><ul class='note'>{items}</ul>")
    return "".join(parts)


def _study_fits(results: Results, bootstrap: int) -> dict:
    """{law: [GroupFit] or an error message}; empty when the study has no held-out losses."""
    if results.metrics.empty or not (results.metrics["name"] == "val_loss").any():
        return {}
    out = {}
    for law in LAWS:
        try:
            out[law] = fit_study(results, law, bootstrap=bootstrap)
        except (ValueError, ArithmeticError) as e:  # a fit that cannot be made is reported, not fatal
            out[law] = f"{type(e).__name__}: {e}" if isinstance(e, ArithmeticError) else str(e)
    return out


def bootstrap_text(fit) -> str:
    """What a fit's bootstrap resampled and how many of its refits did not converge."""
    unit = {"runs": "runs (a run's evaluations together)", "points": "points"}.get(fit.resample, fit.resample)
    failed = (f"{fit.bootstrap_failed} of {fit.num_bootstrap} refits did not converge and are left out of the "
              "intervals" if fit.bootstrap_failed else f"all {fit.num_bootstrap} refits converged")
    stages = ("; each refit the supervised law too" if getattr(fit, "supervised_samples", None) is not None else "")
    return f"bootstrap over {unit}{stages}: {failed}"


def _fits_html(all_fits: dict, bootstrap: int) -> str:
    parts = []
    if not all_fits:
        return '<p class="note">No held-out losses (val_loss) to fit.</p>'
    for law, fits in all_fits.items():
        title = LAWS[law].title
        if isinstance(fits, str):
            parts.append(f"<h3>{title}</h3><p class='note'>Not fitted: {html.escape(fits)}</p>")
            continue
        rows = []
        notes = []
        for g in fits:
            if g.result is None:
                notes.append(f"{html.escape(g.group)}: not fitted ({html.escape(g.note)})")
                continue
            r = g.result
            for k, v in r.params.items():
                lo, hi = r.intervals.get(k, (float("nan"), float("nan")))
                rows.append(f"<tr><td>{html.escape(g.group)}</td><td>{k}</td><td>{v:.4g}</td>"
                            f"<td>[{lo:.4g}, {hi:.4g}]</td><td>{len(g.points)}</td>"
                            f"<td>{html.escape(r.status)}</td></tr>")
            if g.note:
                notes.append(f"{html.escape(g.group)}: {html.escape(g.note)}")
            if r.num_bootstrap:
                notes.append(f"{html.escape(g.group)}: {html.escape(bootstrap_text(r))}")
        body = ""
        if rows:
            body = ('<table class="pd-table"><thead><tr><th>group</th><th>param</th><th>value</th>'
                    f"<th>95% interval ({bootstrap} bootstrap resamples of runs)</th><th>points</th><th>status</th>"
                    "</tr></thead>"
                    f"<tbody>{''.join(rows)}</tbody></table>")
        if notes:
            body += "<p class='note'>" + "<br>".join(notes) + "</p>"
        parts.append(f"<h3>{title}</h3>{body}")
    return "".join(parts)


def render_report(results: Results, *, kept_stats: pd.DataFrame | None = None, bootstrap: int = 200,
                  reference: bool = True) -> str:
    """The report's HTML text (see write_report)."""
    from analysis.study_figures import make_figures
    from analysis.tables import delta_table, loss_delta_table, run_scores, to_html

    title = f"pdspace report: {html.escape(results.study)}"
    sections = [f"<h1>{title}</h1>",
                f"<p class='note'>Generated {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}. "
                "Δ is the relative change of the average score against the matching LM-only baseline "
                "(same student, data, tokens, schedule and seed); the loss gain is (L<sub>LM</sub> − "
                "L<sub>PD</sub>)/L<sub>LM</sub>. With several seeds, scores are mean ± std and the paired "
                "Δ is the mean ± std of per-seed differences.</p>",
                "<h2>Runs</h2>", _summary(results)]
    scores = run_scores(results)
    sections.append("<h2>Benchmark scores and Δ</h2>")
    if scores.empty:
        sections.append("<p class='note'>No benchmark evaluations yet.</p>")
    else:
        sections.append(to_html(delta_table(scores)))
    sections.append("<h2>Held-out loss</h2>")
    try:
        sections.append(to_html(loss_delta_table(results)))
    except ValueError as e:
        sections.append(f"<p class='note'>{html.escape(str(e))}.</p>")
    sections.append("<h2>Scaling-law fits</h2>")
    all_fits = _study_fits(results, bootstrap)
    sections.append(_fits_html(all_fits, bootstrap))
    sections.append("<h2>Figures</h2>")
    figs, skipped = make_figures(results, None, kept_stats=kept_stats, reference=reference,
                                 bootstrap=bootstrap,
                                 fits={k: v for k, v in all_fits.items() if not isinstance(v, str)})
    sections.append(figures_html(figs, skipped))
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{title}</title><style>{CSS}</style></head><body>{''.join(sections)}</body></html>")


def write_report(db_url: str, study: str, out_path: str | Path, kept_stats: pd.DataFrame | None = None,
                 *, bootstrap: int = 200) -> Path:
    """Write one self-contained HTML file for `study` (tables, fit params with intervals, figures
    as base64 PNG) to out_path; returns the path."""
    results = load_results(db_url, study, curves=0)  # the report draws held-out losses only
    return write_text_atomic(out_path, render_report(results, kept_stats=kept_stats, bootstrap=bootstrap))


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write text to path through a temporary file (a reader never sees half a report)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return out
