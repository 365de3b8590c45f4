"""The analysis verbs of the CLI as plain functions (cli/main.py wires them up): fit, figures,
report and import. Bad input raises ValueError with one clear sentence. Reads through the results
package; import is the one verb that writes, through results.import_external.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pandas as pd

from analysis.external import external_runs, read_external_csv
from analysis.fits import fit_study, get_law
from analysis.report import bootstrap_text
from analysis.study_figures import DEFAULT_BOOTSTRAP, make_figures
from results import import_external, load_results

__all__ = ["fit_command", "figures_command", "report_command", "import_command", "make_figures",
           "default_output"]


def _fmt(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.4g}"


def fit_command(db_url: str, study: str, law: str, *, bootstrap: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> str:
    """Fit `law` ("power", "chinchilla" or "distillation") to the study's held-out losses and
    return a text table of each group's params with percentile bootstrap intervals."""
    formula = get_law(law).formula
    results = load_results(db_url, study, curves=0)  # held-out losses and evaluations only
    if results.metrics.empty or not (results.metrics["name"] == "val_loss").any():
        raise ValueError(f"study {study!r} has no val_loss metrics to fit")
    fits = fit_study(results, law, bootstrap=bootstrap, seed=seed)
    lines = [f"study {study}: {law} law, {formula}",
             f"Huber loss on log L summed over points; {bootstrap} bootstrap resamples (seed {seed}), "
             f"95% percentile intervals"]
    rows = []
    for gf in fits:
        head = f"{gf.group}: {len(gf.points)} points"
        if gf.result is None:
            lines.append(f"{head} — not fitted: {gf.note}")
            continue
        lines.append(f"{head}, {gf.result.num_starts} starts, status {gf.result.status}"
                     + (f" ({gf.note})" if gf.note else "")
                     + (f"; {bootstrap_text(gf.result)}" if gf.result.num_bootstrap else ""))
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


def default_output(study: str, name: str) -> Path:
    """artifacts/reports/<study>/<name> under $PDSPACE_HOME (default ./artifacts)."""
    import os

    return Path(os.environ.get("PDSPACE_HOME") or "artifacts") / "reports" / study / name


def figures_command(db_url: str, study: str, out_dir: str | Path | None, *,
                    kept_stats: pd.DataFrame | None = None, reference: bool = False) -> list[Path]:
    """Write the study's figures (PNG and PDF) into out_dir; returns the files written.
    Figures the results cannot support are skipped; ValueError when none can be drawn.
    kept_stats: kept logits per token (p, k, mean_kept); default: the study's logits runs'."""
    results = load_results(db_url, study, curves=0)  # held-out losses and evaluations only
    out_dir = out_dir or default_output(study, "figures")
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
    return import_external(db_url, study, runs, spec={"source": "import", "file": Path(csv_path).name, "sha256": sha},
                           spec_hash=sha[:16])
