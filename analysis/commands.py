"""The analysis verbs of the CLI as plain functions (orchestrator/cli.py wires them up):
fit, figures, report and import. Bad input raises ValueError with one clear sentence.
"""
from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import pandas as pd
from sqlalchemy import inspect, select

from analysis.external import external_runs, read_external_csv
from analysis.fits import LAWS, fit_study
from analysis.results import Results, load_results
from orchestrator.db import Base, Eval, Run, Study, StudyRun, make_engine, session_scope

__all__ = ["fit_command", "figures_command", "report_command", "import_command", "make_figures"]

DEFAULT_BOOTSTRAP = 200
LAW_FORMULAS = {
    "power": "L(N) = E + A·N^(−alpha)",
    "chinchilla": "L(N, D) = E + A/N^alpha + B/D^beta",
    "distillation": "supervised L(N, D) = E + (A/N^alpha + B/D^beta)^gamma; distilled L_S(N, D, L_T) "
                    "(Busbridge et al. 2025)",
}


def _ensure_schema(db_url: str):
    """Create (or upgrade) the schema: orchestrator.db.init_db (Alembic) when available, else
    Base.metadata.create_all. A database whose tables exist but that Alembic cannot upgrade (one
    made by create_all) is used as it is. Returns an engine."""
    try:
        from orchestrator.db import init_db

        return init_db(db_url)
    except ImportError:
        engine = make_engine(db_url)
        Base.metadata.create_all(engine)
        return engine
    except Exception:
        engine = make_engine(db_url)
        if inspect(engine).has_table("runs") and inspect(engine).has_table("evals"):
            return engine
        engine.dispose()
        raise


def _fmt(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.4g}"


def fit_command(db_url: str, study: str, law: str, *, bootstrap: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> str:
    """Fit `law` ("power", "chinchilla" or "distillation") to the study's held-out losses and
    return a text table of each group's params with percentile bootstrap intervals."""
    if law not in LAWS:
        raise ValueError(f"unknown law {law!r}; expected one of {', '.join(LAWS)}")
    results = load_results(db_url, study)
    if results.metrics.empty or not (results.metrics["name"] == "val_loss").any():
        raise ValueError(f"study {study!r} has no val_loss metrics to fit")
    fits = fit_study(results, law, bootstrap=bootstrap, seed=seed)
    lines = [f"study {study}: {law} law, {LAW_FORMULAS[law]}",
             f"Huber loss on log L summed over points; {bootstrap} bootstrap resamples (seed {seed}), "
             f"95% percentile intervals"]
    rows = []
    for gf in fits:
        head = f"{gf.group}: {len(gf.points)} points"
        if gf.result is None:
            lines.append(f"{head} — not fitted: {gf.note}")
            continue
        lines.append(f"{head}, {gf.result.num_starts} starts, status {gf.result.status}"
                     + (f" ({gf.note})" if gf.note else ""))
        for k, v in gf.result.params.items():
            lo, hi = gf.result.intervals.get(k, (float("nan"), float("nan")))
            rows.append((gf.group, k, _fmt(v), _fmt(lo), _fmt(hi)))
    if not rows:
        raise ValueError(f"study {study!r} has too few runs for a {law} fit: " +
                         "; ".join(f"{g.group}: {g.note}" for g in fits))
    header = ("group", "param", "value", "2.5%", "97.5%")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(5)]
    table = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    table += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines + [""] + table)


def make_figures(results: Results, out_dir: str | Path | None = None, *, kept_stats: pd.DataFrame | None = None,
                 reference: bool = False, bootstrap: int = DEFAULT_BOOTSTRAP, fits: dict | None = None):
    """Draw every figure the study's results allow. Returns ({name: Figure}, {name: why skipped}).
    When out_dir is given the figures are also saved there (PNG and PDF). fits: already computed
    {"power": [...], "chinchilla": [...]} GroupFit lists (computed here when missing)."""
    from analysis import figures as F
    from analysis.fits import chinchilla_fits, power_law_fits
    from analysis.tables import run_scores

    figs, skipped = {}, {}
    scores = run_scores(results)
    ref = reference and not results.is_external
    specs = [
        ("fig1_scores_by_size", lambda: F.figure1(scores, reference=ref)),
        ("fig2_delta_vs_top_p", lambda: F.figure2(scores, kept=kept_stats, reference=ref)),
        ("fig3_delta_vs_top_k", lambda: F.figure3(scores, kept=kept_stats, reference=ref)),
        ("fig4_delta_vs_size", lambda: F.figure4(scores, reference=ref)),
        ("fig5_score_vs_tokens", lambda: F.figure5(scores, reference=ref)),
    ]
    if scores.empty:
        for name, _ in specs:
            skipped[name] = "the study has no benchmark evaluations"
        specs = []
    for name, make in specs:
        try:
            figs[name] = make()
        except ValueError as e:
            skipped[name] = str(e)
    curves = _loss_curves(results)
    if curves.empty:
        skipped["loss_curves"] = "the study has no val_loss metrics"
    else:
        figs["loss_curves"] = F.plot_loss_curves(curves)
        fits = fits or {}
        power_fits = fits["power"] if "power" in fits else power_law_fits(results, bootstrap=bootstrap)
        power = [(g.group, g.points["num_params"], g.points["L"], g.result)
                 for g in power_fits if g.result is not None]
        if power:
            figs["fit_power_law"] = F.plot_power_law_fits(power)
        else:
            skipped["fit_power_law"] = "needs final losses of at least 4 runs over 2+ sizes per group"
        chin_fits = (fits["chinchilla"] if "chinchilla" in fits
                     else chinchilla_fits(results, bootstrap=bootstrap, groups=("LM-only",)))
        chin = [g for g in chin_fits if g.result is not None and g.group == "LM-only"]
        if chin:
            g = chin[0]
            figs["fit_chinchilla"] = F.plot_chinchilla_fit(g.points["num_params"], g.points["D"], g.points["L"], g.result)
        else:
            skipped["fit_chinchilla"] = "needs LM-only losses at 6+ points over 2+ sizes"
    if out_dir is not None:
        for name, fig in figs.items():
            F.save_figure(fig, out_dir, name)
    return figs, skipped


def _loss_curves(results: Results) -> pd.DataFrame:
    from analysis.tables import run_info

    m = results.metrics
    if m.empty:
        return pd.DataFrame(columns=["label", "tokens", "loss", "is_lm", "student"])
    info = run_info(results).drop_duplicates("run_id")
    m = m[(m["name"] == "val_loss") & m["value"].notna()]
    df = m.drop(columns=["trial_id", "config_hash"]).merge(info[["run_id", "trial_id", "is_lm", "student"]],
                                                           on="run_id")
    return df.rename(columns={"value": "loss", "trial_id": "label"})[["label", "tokens", "loss", "is_lm", "student"]]


_KEPT = re.compile(r"^kept_per_token\[p=([0-9.]+),k=(\d+)\]$")


def kept_stats_from_db(results: Results) -> pd.DataFrame | None:
    """Kept logits per token (columns p, k, mean_kept) measured from the study's logits stores
    (the logits runs record them as metrics), plus the exact top-1.0-k line (k entries)."""
    m = results.metrics
    if m is None or m.empty:
        return None
    rows = []
    for name, value in zip(m["name"], m["value"]):
        hit = _KEPT.match(str(name))
        if hit and value is not None:
            rows.append({"p": float(hit.group(1)), "k": int(hit.group(2)), "mean_kept": float(value)})
    if not rows:
        return None
    frame = pd.DataFrame(rows).groupby(["p", "k"], as_index=False)["mean_kept"].mean()
    ks = sorted(frame["k"].unique())
    plain_top_k = pd.DataFrame({"p": 1.0, "k": ks, "mean_kept": [float(k) for k in ks]})
    return pd.concat([frame, plain_top_k[~plain_top_k["k"].isin(frame[frame["p"] == 1.0]["k"])]],
                     ignore_index=True)


def default_output(study: str, name: str) -> Path:
    """artifacts/reports/<study>/<name> under $PDSPACE_HOME (default ./artifacts)."""
    import os

    return Path(os.environ.get("PDSPACE_HOME") or "artifacts") / "reports" / study / name


def figures_command(db_url: str, study: str, out_dir: str | Path | None, *,
                    kept_stats: pd.DataFrame | None = None, reference: bool = False) -> list[Path]:
    """Write the study's figures (PNG and PDF) into out_dir; returns the files written.
    Figures the results cannot support are skipped; ValueError when none can be drawn."""
    results = load_results(db_url, study)
    out_dir = out_dir or default_output(study, "figures")
    if kept_stats is None:
        kept_stats = kept_stats_from_db(results)
    figs, skipped = make_figures(results, None, kept_stats=kept_stats, reference=reference)
    if not figs:
        raise ValueError(f"study {study!r} has nothing to draw yet: "
                         + "; ".join(f"{k}: {v}" for k, v in list(skipped.items())[:2]))
    from analysis.figures import save_figure

    paths: list[Path] = []
    for name, fig in figs.items():
        paths += save_figure(fig, out_dir, name)
    return paths


def report_command(db_url: str, study: str, out: str | Path | None, *,
                   kept_stats: pd.DataFrame | None = None) -> Path:
    """Write the study's self-contained HTML report to `out` (a file, or a folder to put
    <study>.html in; default artifacts/reports/<study>/); returns its path."""
    from analysis.report import write_report

    out = Path(out or default_output(study, ""))
    if kept_stats is None:
        kept_stats = kept_stats_from_db(load_results(db_url, study))
    if out.is_dir() or not out.suffix:
        out = out / f"{study}.html"
    return write_report(db_url, study, out, kept_stats=kept_stats)


def import_command(db_url: str, csv_path: str | Path, study: str) -> int:
    """Import external results (the paper's CSV format, see analysis.external) as study `study`:
    one run of kind "external" per distinct (table, run, student, teacher, tokens_b, step, factor,
    value), with one eval per benchmark (metric "acc"). Re-importing updates in place.
    Returns the number of runs imported."""
    if not study or not str(study).strip():
        raise ValueError("the study name must not be empty")
    df = read_external_csv(csv_path)
    runs = external_runs(df, study)
    sha = hashlib.sha256(Path(csv_path).read_bytes()).hexdigest()
    engine = _ensure_schema(db_url)
    try:
        with session_scope(engine) as s:
            st = s.execute(select(Study).where(Study.name == study)).scalar_one_or_none()
            if st is None:
                st = Study(name=study, spec={"source": "import", "file": Path(csv_path).name, "sha256": sha},
                           spec_hash=sha[:16])
                s.add(st)
                s.flush()
            for r in runs:
                run = s.execute(select(Run).where(Run.config_hash == r.config_hash)).scalar_one_or_none()
                if run is None:
                    run = Run(config_hash=r.config_hash, kind="external", config=r.config, status="completed")
                    s.add(run)
                    s.flush()
                else:
                    run.config = r.config
                link = s.execute(select(StudyRun).where(StudyRun.study_id == st.id,
                                                        StudyRun.trial_id == r.trial_id)).scalar_one_or_none()
                if link is None:
                    s.add(StudyRun(study_id=st.id, run_id=run.id, trial_id=r.trial_id, factor=r.factor,
                                   value=r.value))
                else:
                    link.run_id, link.factor, link.value = run.id, r.factor, r.value
                have = {(e.step, e.task, e.metric): e for e in
                        s.execute(select(Eval).where(Eval.run_id == run.id)).scalars()}
                for e in r.evals:
                    row = have.get((e["step"], e["task"], e["metric"]))
                    if row is None:
                        s.add(Eval(run_id=run.id, **e))
                    else:
                        row.value, row.tokens = e["value"], e["tokens"]
    finally:
        engine.dispose()
    return len(runs)
