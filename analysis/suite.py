"""One report over a suite of studies (`pdspace report studies/mini/`): the paper's findings checked
one by one, Figures 1-5 drawn from the studies that hold their data (each with the paper's numbers
overlaid), the distillation-law fit, and per study our tables next to the paper's table.

Studies are recognised by their name without the "mini_"/"paper_" prefix (analysis.findings.study_key).
"""
from __future__ import annotations

import datetime as dt
import html
from pathlib import Path
from typing import Mapping

import pandas as pd

from analysis.findings import (CONTRADICTED, INCONCLUSIVE, NOT_TESTABLE, REPRODUCED,
                               check_suite_noise, suite_data,
                               factorial_effects, family_text, findings_frame, gains_over_training, is_pd_star,
                               pd_pairs, study_key)
from results import Results, list_studies, load_results

__all__ = ["load_suite", "render_suite_report", "write_suite_report", "findings_text", "PAPER_TABLES"]

# study key -> (paper table, filter on the paper's rows)
PAPER_TABLES: dict[str, tuple[str, dict]] = {
    "preliminary": ("1", {}),
    "top_p": ("8", {"top_k": 100.0}),
    "top_k": ("8", {"top_p": 0.95}),
    "temperature": ("9", {}),
    "adaptive_temperature": ("3", {}),
    "kd_loss": ("5", {"label": ("LLM-NLL", "LLM-KLD", "LLM-MSE")}),
    "alpha": ("10", {}),
    "schedules": ("5", {"exclude_label": ("LLM-NLL", "LLM-MSE")}),
    "student_size": ("11", {"teacher": ("GLM-4-9B", "none")}),
    "teacher_size": ("11", {}),
    "long_training": ("12", {}),
    "online_offline": ("6", {}),
    "pd_star": ("13", {}),
}

# which study draws which figure (first one present wins; several listed are combined)
FIGURE_SOURCES = {
    "fig1": ("student_size", "pd_star"),
    "fig2": ("top_p",),
    "fig3": ("top_k",),
    "fig4": ("student_size", "teacher_size"),
    "fig5": ("long_training",),
}

VERDICT_CLASS = {REPRODUCED: "up", CONTRADICTED: "down", INCONCLUSIVE: "noise", NOT_TESTABLE: "noise"}


def _paper_rows(key: str) -> pd.DataFrame | None:
    """The paper's table for a study (run_scores rows of the shipped reference), with the baseline
    rows its Δ needs."""
    from analysis.figures import reference_scores

    if key not in PAPER_TABLES:
        return None
    table, flt = PAPER_TABLES[key]
    s = reference_scores()
    rows = s[s["trial_id"].str.startswith(f"{table}/")]
    for col, want in flt.items():
        if col == "label":
            rows = rows[rows["trial_id"].str.split("/").str[1].isin(want) | rows["is_lm"]]
        elif col == "exclude_label":
            rows = rows[~rows["trial_id"].str.split("/").str[1].isin(want)]
        elif isinstance(want, tuple):
            rows = rows[rows[col].isin(want)]
        else:
            rows = rows[((rows[col].astype(float) - want).abs() < 1e-9) | rows["is_lm"]]
    if rows.empty:
        return None
    base = s[s["config_hash"].isin(rows["baseline_hash"].dropna()) & ~s["config_hash"].isin(rows["config_hash"])]
    out = pd.concat([base, rows], ignore_index=True)
    out.attrs.update(s.attrs)
    return out


def _scores(results: list[Results], *, star_from: Results | None = None) -> pd.DataFrame:
    """run_scores of several studies as one frame (a run shared by studies counted once). Rows of
    `star_from` keep only its PD* runs (WSD-α with a WSD LR), marked as such."""
    from analysis.tables import run_scores

    frames = []
    for r in results:
        s = run_scores(r)
        if s.empty:
            continue
        if star_from is not None and r is star_from:
            s = _mark_star(r, s)
        frames.append(s)
    if not frames:
        return pd.DataFrame()
    out = pd.concat(frames, ignore_index=True)
    out = out.drop_duplicates(["config_hash", "step"])
    out.attrs["tasks"] = frames[0].attrs.get("tasks", [])
    return out


def _mark_star(results: Results, scores: pd.DataFrame) -> pd.DataFrame:
    runs = results.runs.drop_duplicates("config_hash").set_index("config_hash")
    kind = runs.get("alpha_schedule.kind", pd.Series(dtype=object))
    lr = runs.get("lr_schedule.kind", pd.Series(dtype=object))
    star = set(runs.index[is_pd_star(kind, lr)])
    s = scores[scores["config_hash"].isin(star)].copy()
    s["method"], s["is_vanilla"] = "PD*", False
    return s


def _fig(name: str, make, figs: dict, skipped: dict) -> None:
    try:
        figs[name] = make()
    except (ValueError, KeyError) as e:
        skipped[name] = str(e)


def _loss_truncation(pairs: pd.DataFrame, vary: str, fixed: str, value: float) -> pd.DataFrame:
    p = pairs[(pairs[fixed].astype(float) - value).abs() < 1e-9]
    g = p.groupby(p[vary].astype(float))["gain_pct"]
    out = g.agg(["mean", "std", "count"]).reset_index()
    out = out.rename(columns={"mean": "delta_pct", "std": "delta_pct_std", "count": "n"})
    out[fixed] = value
    return out[[vary, fixed, "delta_pct", "delta_pct_std", "n"]]


def _loss_sizes(pairs: pd.DataFrame) -> pd.DataFrame:
    van = pairs[(pairs["alpha_kind"] == "constant") & (pairs["lr_kind"] == "cosine")]
    if not van.empty:  # one token budget (the most common): sizes are compared at equal tokens
        van = van[van["tokens"] == van["tokens"].mode().iloc[0]]
    out = van.groupby(["student", "teacher"], sort=False).agg(
        num_params=("num_params", "first"), delta_pct=("gain_pct", "mean"), delta_pct_std=("gain_pct", "std"),
        n=("gain_pct", "count")).reset_index()
    return out.sort_values(["teacher", "num_params"])[["student", "num_params", "teacher", "delta_pct",
                                                       "delta_pct_std", "n"]].reset_index(drop=True)


def suite_figures(R: Mapping[str, Results]) -> tuple[dict, dict]:
    """{name: Figure} and {name: why not drawn} for the paper's Figures 1-5 over the suite: each on
    benchmark scores with the paper's numbers overlaid, and Figures 2-4 again on the held-out loss gain."""
    from analysis import figures as F
    from analysis.study_figures import kept_frame, loss_curves

    figs, skipped = {}, {}

    def have(keys):
        return [R[k] for k in keys if k in R]

    def need(name, keys):
        got = have(keys)
        if not got:
            skipped[name] = "the suite has no " + " or ".join(keys) + " study"
        return got

    if got := need("fig1_scores_by_size", FIGURE_SOURCES["fig1"]):
        star = R.get("pd_star")
        _fig("fig1_scores_by_size", lambda: F.figure1(_scores(got, star_from=star), reference=True), figs, skipped)
    for name, key, vary, fixed, value, figure in (
            ("fig2_delta_vs_top_p", "fig2", "top_p", "top_k", 100.0, F.figure2),
            ("fig3_delta_vs_top_k", "fig3", "top_k", "top_p", 0.95, F.figure3)):
        if got := need(name, FIGURE_SOURCES[key]):
            kept = kept_frame(got[0])
            if kept is not None:  # the paper's lines: top-p-k at the k, or top-0.95-k and top-1.0-k
                kept = (kept[(kept["k"] - value).abs() < 1e-9] if vary == "top_p"
                        else kept[kept["p"].isin([value, 1.0])])
            _fig(name, lambda: figure(_scores(got), kept=kept, reference=True), figs, skipped)
            pairs = pd_pairs(got[0])
            ref = F.figure2_data(F.reference_scores(), k=value) if vary == "top_p" else \
                F.figure3_data(F.reference_scores(), p=value)
            _fig(name + "_loss", lambda: F.plot_delta_vs_truncation(
                _loss_truncation(pairs, vary, fixed, value), vary, kept=kept, reference=ref,
                title=f"Held-out loss gain (%) vs {vary.replace('_', '-')}; paper: benchmark Δ%",
                ylabel="held-out loss gain vs LM-only (%)"), figs, skipped)
    if got := need("fig4_delta_vs_size", FIGURE_SOURCES["fig4"]):
        _fig("fig4_delta_vs_size", lambda: F.figure4(_scores(got), reference=True), figs, skipped)
        pairs = pd.concat([pd_pairs(r) for r in got], ignore_index=True).drop_duplicates("config_hash")
        _fig("fig4_delta_vs_size_loss", lambda: F.plot_delta_vs_size(
            _loss_sizes(pairs), title="Held-out loss gain (%) vs student size",
            ylabel="held-out loss gain vs LM-only (%)"), figs, skipped)
    if got := need("fig5_score_vs_tokens", FIGURE_SOURCES["fig5"]):
        _fig("fig5_score_vs_tokens", lambda: F.figure5(_scores(got), reference=True), figs, skipped)
        curves = loss_curves(got[0])
        if not curves.empty:
            figs["fig5_loss_vs_tokens"] = F.plot_loss_curves(curves, title="Held-out loss over training (long run)")
    return figs, skipped


def _table_html(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for _, r in frame.iterrows():
        cells = []
        for c, v in r.items():
            cls = f" class='{VERDICT_CLASS.get(v, '')}'" if c in ("verdict", "Holm") else ""
            cells.append(f"<td{cls} style='white-space:normal;text-align:left'>{html.escape(str(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="pd-table"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _study_section(key: str, results: Results) -> str:
    from analysis.report import _summary
    from analysis.tables import delta_table, loss_delta_table, to_html

    parts = [f"<h3 id='{html.escape(results.study)}'>{html.escape(results.study)}</h3>",
             f"<p class='note'>{html.escape(str(results.spec.get('description', '')))}</p>", _summary(results)]
    try:
        parts.append("<p>Held-out loss (ours):</p>" + to_html(loss_delta_table(results), digits=3))
    except ValueError as e:
        parts.append(f"<p class='note'>{html.escape(str(e))}.</p>")
    try:
        parts.append("<p>Benchmarks (ours; builtin tasks at CPU scale):</p>" + to_html(delta_table(results)))
    except ValueError as e:
        parts.append(f"<p class='note'>{html.escape(str(e))}.</p>")
    if key == "long_training":
        curve = gains_over_training(results)
        if not curve.empty:
            c = curve.assign(tokens=curve["tokens"].map(lambda t: f"{t / 1e6:g}M"))
            parts.append("<p>Held-out loss gain over training (ours):</p>"
                         + _table_html(c.round({"lm": 4, "pd": 4, "gain_pct": 2})))
    paper = _paper_rows(key)
    if paper is not None:
        parts.append(f"<p>The paper (Table {PAPER_TABLES[key][0]}):</p>" + to_html(delta_table(paper)))
    return "".join(parts)


def _interactions(results: Results, noise) -> tuple[pd.DataFrame, pd.DataFrame]:
    pairs = pd_pairs(results)
    cells = pairs[["trial_id", "top_k", "temperature", "alpha_kind", "lr_kind", "gain_pct"]].sort_values(
        "gain_pct", ascending=False)
    return cells, factorial_effects(pairs, noise)


def _interactions_html(results: Results, noise) -> str:
    cells, eff = _interactions(results, noise)
    if eff.empty:
        return "<p class='note'>The interactions study has no two-level grid of finished PD runs yet.</p>"
    return ("<p class='note'>Held-out loss gain (%) of every cell (one seed), best first; then the grid's "
            "main effects and two-way interactions with 95% half-widths from σ<sub>ε</sub>. An interaction "
            "that is real means the best value of one knob depends on another: the paper's one-factor-at-"
            "a-time sweeps could not see it.</p>"
            + _table_html(cells.round({"gain_pct": 2}))
            + _table_html(eff.round({"estimate": 2, "half_width": 2})))


def fit_warnings(results: Results, fits) -> list[str]:
    """Why a distillation-law fit may not be identified by its points: LM-only losses that do not
    fall with model size at a fixed budget (the law assumes they do), and fitted values at a
    degenerate corner (E collapsed to ~0, an exponent far outside the published range)."""
    from analysis.fits import loss_points

    out = []
    pts = loss_points(results)
    lm = pts[pts["is_lm"] & pts["final"]]
    for budget, g in lm.groupby("tokens_budget"):
        by = g.groupby("student").agg(N=("num_params", "first"), L=("L", "mean")).sort_values("N")
        worse = [(a, b) for a, b in zip(by.index[:-1], by.index[1:]) if by.loc[b, "L"] > by.loc[a, "L"] + 1e-9]
        for a, b in worse:
            out.append(f"at {budget / 1e6:g}M tokens the larger {b} ends worse than {a} "
                       f"({by.loc[b, 'L']:.3f} vs {by.loc[a, 'L']:.3f}): the law assumes loss falls with size")
    for g in fits:
        if g.result is None:
            continue
        p = g.result.params
        if "E" in p and p["E"] < 0.05 * float(g.points["L"].min()):
            out.append(f"{g.group}: the irreducible loss E collapsed to {p['E']:.3g}")
        for k in ("alpha", "beta", "gamma"):
            if k in p and not 0.01 <= p[k] <= 5.0:
                out.append(f"{g.group}: {k} = {p[k]:.3g} is far outside the published range (0.3 to 0.8)")
    return out


def _distillation_fit(results: Results, bootstrap: int) -> str:
    from analysis.fits import fit_study
    from analysis.report import _fits_html

    try:
        fits = fit_study(results, "distillation", bootstrap=bootstrap)
    except (ValueError, ArithmeticError) as e:
        return f"<p class='note'>Not fitted: {html.escape(str(e))}</p>"
    warn = fit_warnings(results, fits)
    text = _fits_html({"distillation": fits}, bootstrap)
    if warn:
        text += ("<p class='note down'>This fit is not identified by its points, so read its parameters "
                 "as a description of these points only:</p><ul class='note'>"
                 + "".join(f"<li>{html.escape(w)}</li>" for w in warn) + "</ul>")
    return text


def _eq(runs: pd.DataFrame, col: str, value) -> pd.Series:
    if col not in runs:
        return pd.Series(False, index=runs.index)
    if isinstance(value, float):
        return (pd.to_numeric(runs[col], errors="coerce") - value).abs() < 1e-9
    return runs[col].astype(str) == value


# the suite's default PD recipe (studies/mini/_base.yaml) and its LM-only baseline
VANILLA = {"alpha_schedule.kind": "constant", "alpha_schedule.alpha": 0.9, "lr_schedule.kind": "cosine",
           "kd.kind": "kld", "kd.normalization": "renormalize", "kd.temperature": 1.0,
           "logits.source": "offline", "logits.top_p": 0.95, "logits.top_k": 100.0}


def pooled_vanilla(results: Mapping[str, Results]) -> Results:
    """Every teacher, cosine-LR LM-only baseline and default-recipe PD run of the suite's studies
    as one Results (each run once): the points a scaling-law fit over the whole suite uses."""
    frames = [r for r in results.values() if not r.runs.empty]
    if not frames:
        raise ValueError("the suite has no runs")
    runs = pd.concat([r.runs for r in frames], ignore_index=True).drop_duplicates("config_hash")
    student = runs["kind"] == "student"
    for col, value in VANILLA.items():
        student &= _eq(runs, col, value)
    if "kd.adaptive" in runs:
        student &= runs["kd.adaptive"].isna() | (runs["kd.adaptive"].astype(str) == "None")
    baseline = (runs["kind"] == "baseline") & _eq(runs, "lr_schedule.kind", "cosine")
    runs = runs[student | baseline | (runs["kind"] == "teacher")].reset_index(drop=True)
    keep = set(runs["run_id"])

    def cat(attr):
        out = pd.concat([getattr(r, attr) for r in frames], ignore_index=True)
        out = out[out["run_id"].isin(keep)]
        key = ["run_id", "step", "name"] if attr == "metrics" else ["run_id", "step", "task", "metric"]
        return out.drop_duplicates(key).reset_index(drop=True)

    configs = {}
    for r in frames:
        configs.update(r.configs)
    return Results("suite: default recipe, pooled", {}, runs, cat("metrics"), cat("evals"), configs)


MEASURES = (
    "Measures. Benchmark accuracy, the paper's own metric: the mean accuracy over the benchmark tasks the "
    "study recorded, PD minus its matching LM-only baseline (same student, data, tokens, LR schedule and "
    "seed), in accuracy points, tested with margins in accuracy points taken from the paper (its Δ% "
    "converted at its 37.7 LM-only average); at CPU scale the scores sit near chance, so these verdicts are "
    "often inconclusive. Loss proxy, in its own columns: the held-out loss gain 100·(L_LM − L_PD)/L_LM, "
    "tested with its own margins in loss-gain points, never against the paper's benchmark numbers. Each "
    "finding is a test: one-sided for an effect, an equivalence test (TOST) for no effect, "
    "intersection-union for a claim over several conditions, Bonferroni over the candidates of a selected "
    "best; verdicts reproduced, contradicted, inconclusive (the data cannot tell at this margin), not "
    "testable here (the design cannot test it, or the study recorded no benchmark scores).")


def _counts(frame) -> str:
    return "; ".join(f"{m}: " + ", ".join(f"{v} {k}" for k, v in frame[f"verdict, {m}"].value_counts().items())
                     for m in ("accuracy", "loss proxy"))


def _noise_text(noise, unit: str = "pts") -> str:
    def one(n):
        eps = f", sigma_eps {n.sigma_eps:.2f} ({n.dof_eps} dof)" if n.dof_eps else ""
        return f"sigma_seed {n.sigma_seed:.2f} {unit} ({n.dof_seed} dof){eps}"

    per = "; ".join(f"{s}: {one(n)}" for s, n in getattr(noise, "by_student", {}).items() if n.dof_seed)
    return f"noise from distinct runs, all sizes pooled: {one(noise)}" + (f"; per student: {per}" if per else "")


def render_suite_report(results: Mapping[str, Results], *, missing: list[str] = (), title: str = "suite",
                        bootstrap: int = 200) -> str:
    """The suite report's HTML text (see the module docstring)."""
    from analysis.report import CSS, figures_html

    R = {study_key(name): r for name, r in results.items()}
    findings, noises = check_suite_noise(suite_data(results))
    noise = noises["loss"]
    frame = findings_frame(findings)
    secs = [f"<h1>pdspace report: {html.escape(title)}</h1>",
            f"<p class='note'>Generated {dt.datetime.now().strftime('%Y-%m-%d %H:%M')} from "
            f"{len(results)} studies: " + ", ".join(f"<a href='#{html.escape(n)}'>{html.escape(n)}</a>"
                                                      for n in results) + ".</p>",
            ("<p class='note'>Not run yet: " + html.escape(", ".join(missing)) + "</p>" if missing else ""),
            "<h2>The paper's findings, checked</h2>",
            "<p class='note'>" + html.escape(MEASURES) + " Standard errors: t over seeds where a condition has "
            "several; otherwise the seed noise of the condition's student size from distinct runs (σ<sub>seed</sub> "
            "for one gain, σ<sub>ε</sub>, the condition × baseline residual, for a contrast on one baseline), t at "
            "their degrees of freedom. Accuracy: " + html.escape(_noise_text(noises["accuracy"], "accuracy pts"))
            + ". Loss proxy: " + html.escape(_noise_text(noise)) + ".</p>",
            "<p class='note'>" + html.escape(family_text(findings)) + "</p>",
            "<p>" + html.escape(_counts(frame)) + "</p>",
            _table_html(frame.drop(columns=["runs", "verdict"]).assign(runs=frame["runs"]))]
    if "interactions" in R:
        secs.append("<h2>Beyond the paper: interactions</h2>" + _interactions_html(R["interactions"], noise))
    secs.append("<h2>Figures 1–5</h2><p class='note'>Each figure is drawn from our runs; the paper's numbers "
                "are overlaid (black markers or lines). Figures 2–4 are drawn twice: on benchmark Δ% as "
                "in the paper, and on the held-out loss gain.</p>")
    secs.append(figures_html(*suite_figures(R)))
    secs.append("<h2>Distillation scaling law</h2>")
    if "distillation_law" in R:
        secs.append("<h3>On the distillation_law study (its design: teachers × students × budgets)</h3>"
                    + _distillation_fit(R["distillation_law"], bootstrap))
    else:
        secs.append("<p class='note'>The suite has no distillation_law study.</p>")
    secs.append("<h3>Pooled over the suite: every teacher, cosine LM-only baseline and default-recipe PD "
                "run (more sizes, budgets and teachers)</h3>" + _distillation_fit(pooled_vanilla(results), bootstrap))
    secs.append("<h2>Studies: our tables next to the paper's</h2>")
    for name, r in results.items():
        secs.append(_study_section(study_key(name), r))
    css = CSS + "td.noise{color:#9a6700}"
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>pdspace report: {html.escape(title)}</title><style>{css}</style></head>"
            f"<body>{''.join(secs)}</body></html>")


def load_suite(db_url: str, studies: list[str]) -> tuple[dict[str, Results], list[str]]:
    """({name: Results} of the studies the database holds, [names it does not hold yet]);
    ValueError when it holds none of them."""
    known = set(list_studies(db_url))
    missing = [s for s in studies if s not in known]
    if len(missing) == len(studies):
        raise ValueError(f"none of the {len(studies)} studies is in the database yet (run them first)")
    return {s: load_results(db_url, s) for s in studies if s in known}, missing


def write_suite_report(results: Mapping[str, Results], out_path: str | Path, *, missing: list[str] = (),
                       title: str = "suite", bootstrap: int = 200) -> Path:
    """Write the suite report over `results` (see load_suite) to out_path; returns the path.
    Studies not run yet (`missing`) are named in a note."""
    from analysis.report import write_text_atomic

    text = render_suite_report(results, missing=missing, title=title, bootstrap=bootstrap)
    return write_text_atomic(out_path, text)


def findings_text(results: Mapping[str, Results]) -> str:
    """The findings table as Markdown (for notes and the terminal)."""
    findings, noises = check_suite_noise(suite_data(results))
    noise = noises["loss"]
    frame = findings_frame(findings)
    lines = [MEASURES, "noise, accuracy: " + _noise_text(noises["accuracy"], "accuracy pts"),
             "noise, loss proxy: " + _noise_text(noise), family_text(findings), "verdicts: " + _counts(frame), "",
             "| finding | paper (benchmark Δ) | test, accuracy (δ, accuracy pts) | ours, accuracy (pts) | 90% interval "
             "| p reproduce / contradict | verdict, accuracy | Holm, accuracy | test, loss proxy (δ, loss-gain pts) "
             "| ours, loss proxy (held-out loss gain) | 90% interval | p reproduce / contradict "
             "| verdict, loss proxy | Holm, loss proxy |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in frame.iterrows():
        cells = [r["finding"], r["paper (benchmark Δ)"]]
        for m, test in (("accuracy", "test, accuracy (δ in accuracy pts)"),
                        ("loss proxy", "test, loss proxy (δ in loss-gain pts)")):
            ours = next(r[c] for c in frame.columns if c.startswith(f"ours, {m}")) or r[f"note, {m}"]
            cells += [r[test], ours, r[f"interval, {m} (90%)"], r[f"p reproduce / contradict, {m}"],
                      r[f"verdict, {m}"], r[f"Holm, {m}"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    inter = {study_key(n): r for n, r in results.items()}.get("interactions")
    if inter is not None:
        cells, eff = _interactions(inter, noise)
        if not eff.empty:
            lines += ["", "interactions (gain % points; 95% half-width from sigma_eps):"]
            lines += [f"  {e.effect:<28} {e.levels:<22} {e.estimate:+.2f} ± {e.half_width:.2f}  {e.verdict}"
                      for e in eff.itertuples()]
            best = cells.iloc[0]
            lines.append(f"  best cell: {best['trial_id']} {best['gain_pct']:+.2f}%")
    return "\n".join(lines)

