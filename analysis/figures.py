"""The paper's figures (PAPER.md, "Figures a user will want regenerated"), loss curves and fit plots.

Every figure is built in two steps, so it works from our database and from imported tables alike:
`figureN_data(scores)` turns a run_scores frame (analysis.tables.run_scores) into a small tidy
frame, and `plot_*` draws such a frame. `figureN(scores, reference=True)` does both and overlays
the paper's own numbers (shipped in analysis/reference/). Figures are matplotlib `Figure` objects
(no pyplot, so no global backend is touched); `save_figure` writes PNG and PDF.

    1  average score per student size: LM-only, vanilla PD, best PD (grouped bars)
    2  Δ% vs top-p (k fixed) and kept logits per token (right axis, when given)
    3  Δ% vs top-k (p fixed) and kept logits per token
    4  Δ% vs student size, one series per teacher
    5  average score vs training tokens, LM-only and PD per student size
"""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.scaling import ChinchillaFit, FitResult, PowerLawFit
from analysis.tables import parse_param_count

__all__ = [
    "STYLE", "COLORS", "save_figure",
    "figure1_data", "figure2_data", "figure3_data", "figure4_data", "figure5_data",
    "plot_scores_by_size", "plot_delta_vs_truncation", "plot_delta_vs_size", "plot_score_vs_tokens",
    "figure1", "figure2", "figure3", "figure4", "figure5",
    "plot_loss_curves", "plot_power_law_fits", "plot_chinchilla_fit", "reference_scores", "fit_params_text",
]

STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.axisbelow": True,
    "savefig.dpi": 150,
    "figure.dpi": 100,
}
COLORS = {"LM-only": "#8c8c8c", "vanilla PD": "#1f77b4", "best PD": "#d62728", "kept": "#2ca02c",
          "paper": "#000000"}
SERIES_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
PAPER_LABEL = "paper (Peng et al. 2025)"
SIZE = (6.4, 3.8)
TRUNCATION_FACTORS = ("top_p", "top_k", "top_p_k", "truncation")


def _figure(size=SIZE) -> Figure:
    fig = Figure(figsize=size, layout="constrained")
    fig.add_subplot(111)
    return fig


def _styled(fn):
    """Draw inside the house style (rcParams apply at creation, so the whole body runs in it)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return fn(*args, **kwargs)
    return wrapper


def save_figure(fig: Figure, out_dir: str | Path, name: str) -> list[Path]:
    """Write <out_dir>/<name>.png and .pdf; returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    with matplotlib.rc_context(STYLE):
        for ext in ("png", "pdf"):
            p = out_dir / f"{name}.{ext}"
            fig.savefig(p, bbox_inches="tight", metadata={"CreationDate": None} if ext == "pdf" else None)
            paths.append(p)
    return paths


def reference_scores() -> pd.DataFrame:
    """run_scores of the paper's shipped results (computed once per process; a copy each call)."""
    return _reference_scores().copy()


@functools.lru_cache(maxsize=1)
def _reference_scores() -> pd.DataFrame:
    from analysis.external import reference_results
    from analysis.tables import run_scores

    return run_scores(reference_results())


# --------------------------------------------------------------------------------------------
# Tidy data for each figure
# --------------------------------------------------------------------------------------------

def _mode(s: pd.Series):
    s = s.dropna()
    return None if s.empty else s.value_counts(sort=True).index[0]


def _main(scores: pd.DataFrame) -> pd.DataFrame:
    """Final evaluations at the study's main token budget (the most common among PD finals)."""
    f = scores[scores["final"]]
    pd_f = f[~f["is_lm"]]
    budget = _mode(pd_f["tokens_budget"]) if not pd_f.empty else _mode(f["tokens_budget"])
    if budget is None or (isinstance(budget, float) and math.isnan(budget)):
        return f
    return f[f["tokens_budget"] == budget]


def _student_order(df: pd.DataFrame) -> list[str]:
    firsts = df.drop_duplicates("student")
    if firsts["num_params"].notna().all():
        firsts = firsts.sort_values("num_params", kind="stable")
    return list(firsts["student"])


def _agg(df: pd.DataFrame, keys: list[str], col: str) -> pd.DataFrame:
    # an imported table may report one run twice (e.g. the paper's 1.9B baseline in tables 1 and
    # 11): identical external rows are one run, not two seeds
    ext = df["kind"] == "external"
    df = pd.concat([df[~ext], df[ext].drop_duplicates(keys + [col])])
    g = df.groupby(keys, sort=False)[col]
    out = g.agg(["mean", "std", "count"]).reset_index()
    return out.rename(columns={"mean": col, "std": f"{col}_std", "count": "n"})


def figure1_data(scores: pd.DataFrame) -> pd.DataFrame:
    """Columns: student, num_params, series ("LM-only", "vanilla PD", "best PD"), score, score_std,
    n, label. Best PD is the paper's PD* where the table has it, else the best PD condition."""
    f = _main(scores)
    if f.empty:
        return pd.DataFrame(columns=["student", "num_params", "series", "score", "score_std", "n", "label"])
    teacher = _mode(f.loc[~f["is_lm"] & f["is_vanilla"], "teacher"])
    parts = []
    lm = f[f["is_baseline"]].assign(series="LM-only")
    van = f[f["is_vanilla"] & (f["method"] == "PD") & (f["teacher"] == teacher)].assign(series="vanilla PD")
    for sub in (lm, van):
        if not sub.empty:
            a = _agg(sub.rename(columns={"average": "score"}), ["student", "series"], "score")
            a["label"] = a["series"]
            parts.append(a)
    star = f[f["method"] == "PD*"]
    best_rows = []
    for student, sub in f[~f["is_lm"]].groupby("student", sort=False):
        ss = star[star["student"] == student]
        if not ss.empty:
            best_rows.append(ss.assign(series="best PD"))
            continue
        if not star.empty:
            continue  # the table names its best config: do not invent one for other sizes
        cond = sub.groupby("condition", sort=False)["average"].mean()
        if len(cond) < 2:
            continue  # one PD condition: "best PD" would only repeat the vanilla bar
        best_rows.append(sub[sub["condition"] == cond.idxmax()].assign(series="best PD"))
    if best_rows:
        b = pd.concat(best_rows)
        a = _agg(b.rename(columns={"average": "score"}), ["student", "series"], "score")
        a["label"] = b.groupby("student", sort=False)["label"].first().reindex(a["student"]).to_numpy()
        parts.append(a)
    if not parts:
        return pd.DataFrame(columns=["student", "num_params", "series", "score", "score_std", "n", "label"])
    out = pd.concat(parts, ignore_index=True)
    have_pd = set(out.loc[out["series"] != "LM-only", "student"])
    out = out[out["student"].isin(have_pd)]
    nparams = f.drop_duplicates("student").set_index("student")["num_params"]
    out["num_params"] = out["student"].map(nparams)
    order = {s: i for i, s in enumerate(_student_order(f[f["student"].isin(have_pd)]))}
    out = out.sort_values(["student"], key=lambda s: s.map(order), kind="stable")
    return out[["student", "num_params", "series", "score", "score_std", "n", "label"]].reset_index(drop=True)


def _truncation_rows(scores: pd.DataFrame) -> pd.DataFrame:
    f = _main(scores)
    f = f[~f["is_lm"] & np.isfinite(f["top_p"].astype(float)) & f["top_k"].notna() & f["delta_pct"].notna()]
    factor = f["factor"].fillna("").str.lower()
    # a list, not Series.apply: on an empty frame apply keeps the string dtype and `|` then fails
    related = pd.Series([any(t in s for t in TRUNCATION_FACTORS) for s in factor], index=f.index, dtype=bool)
    keep = related | f["is_vanilla"]
    f, related = f[keep], related[keep]
    if f.empty:
        return f
    trunc = f[related]
    student = _mode(trunc["student"]) if not trunc.empty else _mode(f["student"])
    teacher = _mode(trunc["teacher"]) if not trunc.empty else _mode(f["teacher"])
    return f[(f["student"] == student) & (f["teacher"] == teacher)]


def _truncation_data(scores: pd.DataFrame, vary: str, fixed: str, fixed_value: float | None) -> pd.DataFrame:
    f = _truncation_rows(scores)
    cols = [vary, fixed, "delta_pct", "delta_pct_std", "n"]
    if f.empty:
        return pd.DataFrame(columns=cols)
    if fixed_value is None:
        counts = f.groupby(fixed)[vary].nunique()
        if counts.max() < 2:
            return pd.DataFrame(columns=cols)
        fixed_value = max(counts[counts == counts.max()].index)
    f = f[f[fixed] == fixed_value]
    out = _agg(f, [vary], "delta_pct").sort_values(vary)
    out[fixed] = fixed_value
    return out[cols].reset_index(drop=True)


def figure2_data(scores: pd.DataFrame, k: float | None = None) -> pd.DataFrame:
    """Δ% per top-p at a fixed k (default: the k with the most p values). Columns:
    top_p, top_k, delta_pct, delta_pct_std, n."""
    return _truncation_data(scores, "top_p", "top_k", k)


def figure3_data(scores: pd.DataFrame, p: float | None = None) -> pd.DataFrame:
    """Δ% per top-k at a fixed p (default: the p with the most k values). Columns:
    top_k, top_p, delta_pct, delta_pct_std, n."""
    return _truncation_data(scores, "top_k", "top_p", p)


def figure4_data(scores: pd.DataFrame) -> pd.DataFrame:
    """Δ% of vanilla PD per (student, teacher). Columns: student, num_params, teacher, delta_pct,
    delta_pct_std, n."""
    f = _main(scores)
    f = f[f["is_vanilla"] & (f["method"] == "PD") & f["delta_pct"].notna()]
    cols = ["student", "num_params", "teacher", "delta_pct", "delta_pct_std", "n"]
    if f.empty:
        return pd.DataFrame(columns=cols)
    out = _agg(f, ["student", "teacher"], "delta_pct")
    out["num_params"] = out["student"].map(f.drop_duplicates("student").set_index("student")["num_params"])
    order = {s: i for i, s in enumerate(_student_order(f))}
    out = out.sort_values(["teacher", "student"], key=lambda s: s.map(order) if s.name == "student" else s,
                          kind="stable")
    teachers = list(dict.fromkeys(f["teacher"]))
    out = out.sort_values("teacher", key=lambda s: s.map({t: i for i, t in enumerate(teachers)}), kind="stable")
    return out[cols].reset_index(drop=True)


def figure5_data(scores: pd.DataFrame) -> pd.DataFrame:
    """Average score over training, for LM-only and vanilla PD runs evaluated at several steps.
    Columns: student, series ("LM-only" / "PD"), teacher, tokens, score, score_std, n."""
    cols = ["student", "series", "teacher", "tokens", "score", "score_std", "n"]
    if scores.empty:
        return pd.DataFrame(columns=cols)
    steps = scores.groupby("series")["step"].transform("nunique")
    f = scores[(steps >= 2) & (scores["is_baseline"] | (scores["is_vanilla"] & (scores["method"] == "PD")))]
    if f.empty:
        return pd.DataFrame(columns=cols)
    teacher = _mode(f.loc[~f["is_lm"], "teacher"])
    f = f[f["is_lm"] | (f["teacher"] == teacher)]
    f = f.assign(series=np.where(f["is_lm"], "LM-only", "PD"), score=f["average"])
    out = _agg(f, ["student", "series", "teacher", "tokens"], "score")
    order = {s: i for i, s in enumerate(_student_order(f))}
    out = out.sort_values(["student", "series", "tokens"],
                          key=lambda s: s.map(order) if s.name == "student" else s, kind="stable")
    return out[cols].reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------

def _fmt_value(v) -> str:
    if isinstance(v, float) and math.isinf(v):
        return "∞"
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return f"{v:g}"


def _signed_text(v: float, digits: int = 1) -> str:
    return f"{v:+.{digits}f}".replace("-", "−")


def _legend(ax, *extra_axes, loc="best", below: bool = False):
    """One legend for ax and its twins; below=True puts it under the axes (never over data)."""
    handles, labels = ax.get_legend_handles_labels()
    for a in extra_axes:
        h, l = a.get_legend_handles_labels()
        handles += h
        labels += l
    if not handles:
        return
    order = sorted(range(len(labels)), key=lambda i: labels[i].startswith(PAPER_LABEL) or "paper" in labels[i])
    handles, labels = [handles[i] for i in order], [labels[i] for i in order]
    if below:
        ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.16),
                  ncols=min(len(handles), 2), frameon=False)
    else:
        ax.legend(handles, labels, loc=loc, frameon=True, framealpha=0.9)


@_styled
def plot_scores_by_size(data: pd.DataFrame, *, reference: pd.DataFrame | None = None,
                        title: str = "Average score by student size") -> Figure:
    """Grouped bars from figure1_data-shaped frames; reference (same shape) as black markers."""
    if data.empty:
        raise ValueError("figure 1 needs final scores of LM-only and PD runs; none found")
    fig = _figure()
    ax = fig.axes[0]
    students = list(dict.fromkeys(data["student"]))
    series = [s for s in ("LM-only", "vanilla PD", "best PD") if s in set(data["series"])]
    width = 0.8 / len(series)
    x = np.arange(len(students))
    drawn_ref = False
    for i, s in enumerate(series):
        sub = data[data["series"] == s].set_index("student").reindex(students)
        pos = x - 0.4 + width * (i + 0.5)
        ok = sub["score"].notna().to_numpy()
        err = sub["score_std"].to_numpy(dtype=float)
        heights = sub["score"].to_numpy(dtype=float)[ok]
        err = np.where(np.isnan(err), 0.0, err)[ok]
        ax.bar(pos[ok], heights, width * 0.92, color=COLORS[s], label=s,
               yerr=err if err.any() else None, capsize=2)
        for xi, h, e in zip(pos[ok], heights, err):  # value above the error bar, never on it
            ax.annotate(f"{h:.1f}", (xi, h + e), textcoords="offset points", xytext=(0, 2), ha="center",
                        va="bottom", fontsize=7)
        if reference is not None and not reference.empty:
            ref = reference[reference["series"] == s].set_index("student").reindex(students)
            rok = ref["score"].notna().to_numpy()
            if rok.any():
                ax.plot(pos[rok], ref["score"].to_numpy(dtype=float)[rok], linestyle="none", marker="_",
                        markersize=14, markeredgewidth=2, color=COLORS["paper"],
                        label=None if drawn_ref else PAPER_LABEL)
                drawn_ref = True
    if np.isfinite(data["score_std"].to_numpy(dtype=float)).any():
        title += f"  (error bars: std over {int(data['n'].max())} seeds)"
    ax.set_xticks(x, students)
    ax.set_xlabel("student size")
    ax.set_ylabel("average score (%)")
    lo = np.nanmin(data["score"].to_numpy(dtype=float))
    hi = np.nanmax(data["score"].to_numpy(dtype=float) + np.nan_to_num(data["score_std"].to_numpy(dtype=float)))
    pad = max((hi - lo) * 0.15, 1.0)
    ax.set_ylim(max(0.0, lo - 3 * pad), hi + 2 * pad)
    ax.set_title(title)
    ax.grid(axis="x", visible=False)
    _legend(ax, loc="upper left")
    return fig


@_styled
def plot_delta_vs_truncation(data: pd.DataFrame, vary: str, *, kept: pd.DataFrame | None = None,
                             reference: pd.DataFrame | None = None, title: str | None = None,
                             ylabel: str = "Δ average score vs LM-only (%)") -> Figure:
    """Δ% bars at each value of `vary` ("top_p" or "top_k"); kept logits per token on a right axis
    (kept: columns p, k, mean_kept; one line per value of the other parameter)."""
    if vary not in ("top_p", "top_k"):
        raise ValueError(f"vary must be 'top_p' or 'top_k', got {vary!r}")
    if data.empty:
        raise ValueError(f"figure {'2' if vary == 'top_p' else '3'} needs PD runs that vary {vary} "
                         f"with a matching baseline; none found")
    fixed = "top_k" if vary == "top_p" else "top_p"
    fixed_value = float(data[fixed].iloc[0])
    kcol, other = ("p", "k") if vary == "top_p" else ("k", "p")
    kept_lines = {}
    if kept is not None and not kept.empty:
        missing = {"p", "k", "mean_kept"} - set(kept.columns)
        if missing:
            raise ValueError(f"kept stats need columns p, k, mean_kept; missing {sorted(missing)}")
        kk = kept.copy()
        kk["k"] = kk["k"].astype(float).fillna(np.inf)
        for val, sub in kk.groupby(other, sort=True):
            if sub[kcol].nunique() >= 2:
                kept_lines[val] = sub.sort_values(kcol)
    values = sorted(set(data[vary].astype(float))
                    | {float(v) for s in kept_lines.values() for v in s[kcol]}
                    | (set(reference[vary].astype(float)) if reference is not None and not reference.empty else set()))
    pos = {v: i for i, v in enumerate(values)}
    fig = _figure()
    ax = fig.axes[0]
    d = data.sort_values(vary)
    xs = [pos[float(v)] for v in d[vary]]
    err = np.nan_to_num(d["delta_pct_std"].to_numpy(dtype=float))
    heights = d["delta_pct"].to_numpy(dtype=float)
    n = int(d["n"].max())
    ax.bar(xs, heights, 0.6, color=COLORS["vanilla PD"], alpha=0.85, yerr=err if err.any() else None,
           capsize=2, label="Δ vs LM-only (%)" + (f", mean ± std over {n} seeds" if err.any() else ""))
    for xi, h, e in zip(xs, heights, err):  # the value beyond the error bar, never on it
        ax.annotate(_signed_text(h), (xi, h + e if h >= 0 else h - e), textcoords="offset points",
                    xytext=(0, 2 if h >= 0 else -2), ha="center", va="bottom" if h >= 0 else "top", fontsize=7)
    ax.axhline(0, color="black", linewidth=0.8)
    if reference is not None and not reference.empty:
        r = reference.sort_values(vary)
        ax.plot([pos[float(v)] for v in r[vary]], r["delta_pct"], color=COLORS["paper"], linestyle="--",
                marker="o", markerfacecolor="none", markersize=4, linewidth=0.9, label=f"Δ, {PAPER_LABEL}")
    ymin, ymax = ax.get_ylim()
    span = ymax - ymin
    ax.set_ylim(0.0 if ymin >= 0 else ymin - 0.05 * span, ymax + 0.12 * span)
    ax.set_xticks(range(len(values)), [_fmt_value(v) for v in values])
    sym = "p" if vary == "top_p" else "k"
    ax.set_xlabel(f"{sym} (top-{_fmt_value(fixed_value) + '-k' if vary == 'top_k' else 'p-' + _fmt_value(fixed_value)})")
    ax.set_ylabel(ylabel)
    axes = [ax]
    if kept_lines:
        ax2 = ax.twinx()
        ax2.grid(False)
        for j, (val, sub) in enumerate(kept_lines.items()):
            name = (f"top-p-{_fmt_value(val)}" if vary == "top_p" else f"top-{_fmt_value(val)}-k")
            ax2.plot([pos[float(v)] for v in sub[kcol]], sub["mean_kept"], marker="s", markersize=3.5,
                     color=SERIES_COLORS[(j + 2) % len(SERIES_COLORS)], linewidth=1.2,
                     label=f"kept logits/token, {name}")
        ax2.set_ylabel("kept logits per token")
        ax2.set_ylim(bottom=0)
        axes.append(ax2)
    ax.set_title(title or (f"Δ vs top-p (k = {_fmt_value(fixed_value)})" if vary == "top_p"
                           else f"Δ vs top-k (p = {_fmt_value(fixed_value)})"))
    ax.grid(axis="x", visible=False)
    _legend(ax, *axes[1:], below=True)
    return fig


@_styled
def plot_delta_vs_size(data: pd.DataFrame, *, reference: pd.DataFrame | None = None,
                       title: str = "Δ vs student size", ylabel: str = "Δ average score vs LM-only (%)") -> Figure:
    """One line per teacher: Δ% of vanilla PD against the student's size (log N when known)."""
    if data.empty:
        raise ValueError("figure 4 needs vanilla PD runs of several student sizes with baselines; none found")
    fig = _figure()
    ax = fig.axes[0]
    numeric = data["num_params"].notna().all() and (
        reference is None or reference.empty or reference["num_params"].notna().all())
    if numeric:
        xmap = lambda df: df["num_params"].to_numpy(dtype=float)  # noqa: E731
        ax.set_xscale("log")
    else:
        order = list(dict.fromkeys(data["student"]))
        xmap = lambda df: df["student"].map({s: i for i, s in enumerate(order)}).to_numpy(dtype=float)  # noqa: E731
    top = data.groupby("student")["delta_pct"].max()
    for i, (teacher, sub) in enumerate(data.groupby("teacher", sort=False)):
        err = np.nan_to_num(sub["delta_pct_std"].to_numpy(dtype=float))
        x = xmap(sub)
        color = SERIES_COLORS[i % len(SERIES_COLORS)]
        ax.errorbar(x, sub["delta_pct"], yerr=err if err.any() else None,
                    marker="o", markersize=5, capsize=2, linewidth=1.5, color=color, label=f"teacher {teacher}")
        for xi, yi, e, st in zip(x, sub["delta_pct"], err, sub["student"]):
            above = yi >= top[st]  # the higher series labels above its point, the others below
            ax.annotate(_signed_text(yi), (xi, yi + e if above else yi - e), textcoords="offset points",
                        xytext=(0, 3 if above else -3), ha="center", va="bottom" if above else "top",
                        fontsize=7, color=color,
                        bbox=dict(boxstyle="square,pad=0.1", facecolor="white", edgecolor="none", alpha=0.8))
    if reference is not None and not reference.empty:
        rr = reference if numeric else reference[reference["student"].isin(set(data["student"]))]
        for j, (teacher, sub) in enumerate(rr.groupby("teacher", sort=False)):
            ax.plot(xmap(sub), sub["delta_pct"], linestyle="--", marker=["s", "^", "v", "D"][j % 4],
                    markerfacecolor="none", markersize=5, color=COLORS["paper"], linewidth=0.9,
                    label=f"{PAPER_LABEL}, {teacher}")
    ax.axhline(0, color="black", linewidth=0.8)
    students = data.drop_duplicates("student")
    named = students["student"].map(parse_param_count).notna().all()
    if numeric and named and (reference is None or reference.empty or set(reference["student"]) <= set(students["student"])):
        # names such as "1.9B" are sizes: label the ticks with them
        ax.set_xticks(students["num_params"].to_numpy(dtype=float), list(students["student"]))
        ax.minorticks_off()
    elif not numeric:
        ax.set_xticks(range(len(students)), list(students["student"]))
    if numeric:
        lo, hi = ax.get_xlim()
        ax.set_xlim(lo / 1.3, hi * 1.3)
    ax.set_xlabel("student size (parameters, log scale)" if numeric else "student size")
    ax.set_ylabel(ylabel)
    ymin, ymax = ax.get_ylim()
    ax.set_ylim(ymin - 0.05 * (ymax - ymin), ymax + 0.12 * (ymax - ymin))
    if np.isfinite(data["delta_pct_std"].to_numpy(dtype=float)).any():
        title += f"  (error bars: std over {int(data['n'].max())} seeds)"
    ax.set_title(title)
    _legend(ax, below=True)
    return fig


def _token_unit(tokens: np.ndarray) -> tuple[float, str]:
    top = np.nanmax(tokens) if len(tokens) else 0
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if top >= div:
            return div, unit
    return 1.0, ""


@_styled
def plot_score_vs_tokens(data: pd.DataFrame, *, reference: pd.DataFrame | None = None,
                         title: str = "Average score over training") -> Figure:
    """Solid PD and dashed LM-only lines per student size, from figure5_data-shaped frames."""
    if data.empty:
        raise ValueError("figure 5 needs LM-only and PD runs evaluated on benchmarks at several steps "
                         "(set eval.tasks_every_tokens); none found")
    from matplotlib.lines import Line2D

    fig = _figure()
    ax = fig.axes[0]
    div, unit = _token_unit(data["tokens"].to_numpy(dtype=float))
    students = list(dict.fromkeys(data["student"]))
    handles = []
    for i, student in enumerate(students):
        color = SERIES_COLORS[i % len(SERIES_COLORS)]
        handles.append(Line2D([], [], color=color, label=str(student)))
        for series, style, marker in (("LM-only", "--", "o"), ("PD", "-", "s")):
            sub = data[(data["student"] == student) & (data["series"] == series)]
            if sub.empty:
                continue
            err = np.nan_to_num(sub["score_std"].to_numpy(dtype=float))
            ax.errorbar(sub["tokens"] / div, sub["score"], yerr=err if err.any() else None,
                        linestyle=style, marker=marker, markersize=4, capsize=2, color=color,
                        markerfacecolor="white" if series == "LM-only" else color)
    handles += [Line2D([], [], color="black", linestyle="-", marker="s", markersize=4, label="PD"),
                Line2D([], [], color="black", linestyle="--", marker="o", markerfacecolor="white", markersize=4,
                       label="LM-only")]
    if reference is not None and not reference.empty:
        ours, theirs = float(data["tokens"].max()), float(reference["tokens"].max())
        if max(ours, theirs) / min(ours, theirs) <= 10:  # the paper's 500B tokens only overlay a similar scale
            for (_, _), sub in reference.groupby(["student", "series"], sort=False):
                ax.plot(sub["tokens"] / div, sub["score"], linestyle=":", marker="x", markersize=4, linewidth=0.8,
                        color=COLORS["paper"])
            handles.append(Line2D([], [], color=COLORS["paper"], linestyle=":", marker="x", label=PAPER_LABEL))
        else:
            title += "  (paper overlay omitted: different token scale)"
    ax.set_xlabel(f"training tokens ({unit})" if unit else "training tokens")
    ax.set_ylabel("average score (%)")
    ax.set_title(title)
    ax.set_xlim(left=0)
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False,
              ncols=min(len(handles), 4))
    return fig


def _maybe_reference(builder, reference: bool, **kw) -> pd.DataFrame | None:
    if not reference:
        return None
    return builder(reference_scores(), **kw)


def figure1(scores: pd.DataFrame, *, reference: bool = False) -> Figure:
    return plot_scores_by_size(figure1_data(scores), reference=_maybe_reference(figure1_data, reference))


def figure2(scores: pd.DataFrame, *, kept: pd.DataFrame | None = None, reference: bool = False,
            k: float | None = None) -> Figure:
    data = figure2_data(scores, k)
    ref = _maybe_reference(figure2_data, reference, k=float(data["top_k"].iloc[0]) if len(data) else None)
    return plot_delta_vs_truncation(data, "top_p", kept=kept, reference=ref)


def figure3(scores: pd.DataFrame, *, kept: pd.DataFrame | None = None, reference: bool = False,
            p: float | None = None) -> Figure:
    data = figure3_data(scores, p)
    ref = _maybe_reference(figure3_data, reference, p=float(data["top_p"].iloc[0]) if len(data) else None)
    return plot_delta_vs_truncation(data, "top_k", kept=kept, reference=ref)


def figure4(scores: pd.DataFrame, *, reference: bool = False) -> Figure:
    return plot_delta_vs_size(figure4_data(scores), reference=_maybe_reference(figure4_data, reference))


def figure5(scores: pd.DataFrame, *, reference: bool = False) -> Figure:
    return plot_score_vs_tokens(figure5_data(scores), reference=_maybe_reference(figure5_data, reference))


# --------------------------------------------------------------------------------------------
# Loss curves and fits
# --------------------------------------------------------------------------------------------

@_styled
def plot_loss_curves(curves: pd.DataFrame, *, title: str = "Held-out loss during training",
                     metric_label: str = "held-out loss (nats/token)") -> Figure:
    """Loss vs tokens per run. curves: columns label, tokens, loss, and optionally is_lm
    (LM-only runs dashed) and student (one color per student when there are several)."""
    if curves.empty:
        raise ValueError("loss curves need val_loss metrics; none found")
    fig = _figure((6.4, 4.0))
    ax = fig.axes[0]
    div, unit = _token_unit(curves["tokens"].to_numpy(dtype=float))
    labels = list(dict.fromkeys(curves["label"]))
    color_key = "student" if "student" in curves and curves["student"].nunique() > 1 else "label"
    keys = list(dict.fromkeys(curves[color_key]))
    cmap = matplotlib.colormaps["viridis"] if len(keys) > len(SERIES_COLORS) else None
    for label in labels:
        sub = curves[curves["label"] == label].sort_values("tokens")
        k = keys.index(sub[color_key].iloc[0])
        color = cmap(k / max(len(keys) - 1, 1)) if cmap else SERIES_COLORS[k % len(SERIES_COLORS)]
        lm = bool(sub["is_lm"].iloc[0]) if "is_lm" in sub else False
        ax.plot(sub["tokens"] / div, sub["loss"], linestyle="--" if lm else "-", color=color, linewidth=1.2,
                marker="." if len(sub) < 30 else None, label=label)
    ax.set_xlabel(f"training tokens ({unit})" if unit else "training tokens")
    ax.set_ylabel(metric_label)
    ax.set_title(title + ("  (dashed: LM-only)" if "is_lm" in curves and curves["is_lm"].any() else ""))
    if color_key == "student":  # one entry per student (color) and per method (line style)
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=(cmap(k / max(len(keys) - 1, 1)) if cmap else
                                         SERIES_COLORS[k % len(SERIES_COLORS)]), label=str(key))
                   for k, key in enumerate(keys)]
        if "is_lm" in curves and curves["is_lm"].any():
            handles += [Line2D([], [], color="black", linestyle="-", label="PD"),
                        Line2D([], [], color="black", linestyle="--", label="LM-only")]
        ax.legend(handles=handles, loc="upper right", fontsize=7, ncols=1 if len(handles) <= 8 else 2)
    elif len(labels) <= 12:
        ax.legend(loc="upper right", ncols=1 if len(labels) <= 6 else 2, fontsize=7)
    return fig


@_styled
def plot_power_law_fits(fits: Sequence[tuple[str, np.ndarray, np.ndarray, PowerLawFit]], *,
                        extrapolate: float = 10.0, title: str = "Final loss vs student size") -> Figure:
    """Points, the fitted L(N) (solid over the data, dashed extrapolated up to extrapolate×max N)
    and its bootstrap band. fits: (label, N, L, fit) tuples."""
    if not fits:
        raise ValueError("no power-law fits to draw")
    fig = _figure()
    ax = fig.axes[0]
    for i, (label, N, L, fit) in enumerate(fits):
        color = SERIES_COLORS[i % len(SERIES_COLORS)]
        N, L = np.asarray(N, float), np.asarray(L, float)
        ax.scatter(N, L, s=16, color=color, zorder=3, label=f"{label} (runs)")
        grid_in = np.geomspace(N.min(), N.max(), 100)
        grid_out = np.geomspace(N.max(), N.max() * extrapolate, 50)
        p = fit.params
        ax.plot(grid_in, fit.predict(grid_in), color=color, linewidth=1.4,
                label=f"{label}: {p['E']:.3g} + {p['A']:.3g}·N^(−{p['alpha']:.3g})")
        ax.plot(grid_out, fit.predict(grid_out), color=color, linewidth=1.2, linestyle="--")
        if fit.samples is not None:
            g = np.concatenate([grid_in, grid_out])
            lo, hi = fit.predict_interval(g)
            ax.fill_between(g, lo, hi, color=color, alpha=0.15, linewidth=0,
                            label=f"{int(fit.ci * 100)}% bootstrap band")
    ax.set_xscale("log")
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("final held-out loss (nats/token)")
    ax.set_title(title + "  (dashed: extrapolation)")
    ax.legend(loc="upper right", fontsize=7)
    return fig


@_styled
def plot_chinchilla_fit(N, D, L, fit: ChinchillaFit, *, extrapolate: float = 10.0,
                        title: str = "Chinchilla fit: loss vs tokens per model size") -> Figure:
    """Points per model size against tokens D, the fitted L(N, D) per size (dashed beyond the data,
    up to extrapolate×max D) with bootstrap bands, plus the compute-optimal frontier's parameters."""
    N, D, L = (np.asarray(v, float) for v in (N, D, L))
    fig = _figure((6.4, 4.0))
    ax = fig.axes[0]
    sizes = np.unique(N)
    cmap = matplotlib.colormaps["viridis"]
    for i, n in enumerate(sizes):
        color = cmap(i / max(len(sizes) - 1, 1)) if len(sizes) > len(SERIES_COLORS) else SERIES_COLORS[i]
        m = N == n
        ax.scatter(D[m], L[m], s=12, color=color, zorder=3, label=f"N = {n:.3g}")
        d_in = np.geomspace(D[m].min(), D[m].max(), 60)
        d_out = np.geomspace(D[m].max(), D[m].max() * extrapolate, 30)
        ax.plot(d_in, fit.predict(n, d_in), color=color, linewidth=1.2)
        ax.plot(d_out, fit.predict(n, d_out), color=color, linewidth=1.0, linestyle="--")
        if fit.samples is not None:
            g = np.concatenate([d_in, d_out])
            lo, hi = fit.predict_interval(n, g)
            ax.fill_between(g, lo, hi, color=color, alpha=0.15, linewidth=0)
    p = fit.params
    ax.text(0.02, 0.03, f"E={p['E']:.3g}  A={p['A']:.3g}  B={p['B']:.3g}  α={p['alpha']:.3g}  β={p['beta']:.3g}",
            transform=ax.transAxes, fontsize=7, va="bottom")
    ax.set_xscale("log")
    ax.set_xlabel("training tokens D")
    ax.set_ylabel("held-out loss (nats/token)")
    ax.set_title(title + "  (dashed: extrapolation)")
    if len(sizes) <= 12:
        ax.legend(loc="upper right", fontsize=7, ncols=1 if len(sizes) <= 6 else 2)
    return fig


def fit_params_text(fit: FitResult) -> str:
    """'E = 1.82 [1.78, 1.85], …' for captions."""
    parts = []
    for k, v in fit.params.items():
        iv = fit.intervals.get(k)
        parts.append(f"{k} = {v:.4g}" + (f" [{iv[0]:.4g}, {iv[1]:.4g}]" if iv else ""))
    return ", ".join(parts)
