"""Δ tables in the paper's style: per-benchmark scores, the average, and Δ against the matching
LM-only baseline, seeds aggregated (mean, std, n) and paired per seed; plus the held-out-loss Δ.

Conventions (PAPER.md):
    average     unweighted mean of the benchmarks (an imported table's own "average" wins)
    Δ (%)       relative change of the average vs the baseline: (S_PD − S_LM) / S_LM · 100
    loss gain   (L_LM − L_PD) / L_LM · 100, positive when distillation lowers the held-out loss
    scores      in percent (lm-eval accuracies in [0, 1] are scaled by 100)
A student's baseline is the run whose config_hash equals the student's `baseline_hash`
(results.attach_baseline: at the same evaluation step, else at the baseline's last); runs that
differ only in their seed form one condition.
"""
from __future__ import annotations

import html
import math
import re
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from analysis.results import stable_hash
from results import Results, attach_baseline, final_losses

__all__ = [
    "run_info",
    "run_scores",
    "delta_table",
    "loss_delta_table",
    "format_table",
    "to_markdown",
    "to_html",
    "parse_param_count",
]

# Metrics preferred when a task reports several (first found wins).
METRIC_PREFERENCE = ("acc", "acc_norm", "exact_match", "em", "f1", "accuracy")
PERCENT_METRICS = {"acc", "acc_norm", "exact_match", "em", "accuracy", "f1"}
# Kinds that are students or baselines (the rest: data, teacher, logits units).
SCORED_KINDS = ("student", "baseline", "external")
NO_TEACHER = {"", "none", "null", "nan"}
PD_STAR_NAMES = {"pd_star", "pd*", "pdstar", "best"}
VANILLA_NAMES = {"pd_vanilla", "vanilla", "pd"}
# Factors that keep the default recipe (a student-size or teacher sweep is still "vanilla PD").
VANILLA_FACTORS = {"student", "teacher", "seed", "student_size", "tokens"}
INFO_COLUMNS = ["run_id", "config_hash", "trial_id", "factor", "value", "kind", "status", "label",
                "condition", "series", "method", "is_lm", "is_baseline", "is_vanilla",
                "baseline_hash", "student", "teacher", "seed", "num_params", "tokens_budget",
                "top_p", "top_k"]


def parse_param_count(name) -> float:
    """'330M' -> 3.3e8, '1.9B' -> 1.9e9; NaN when the name carries no count (e.g. 'd64l3')."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMBT])\s*", str(name), flags=re.I)
    if not m:
        return float("nan")
    return float(m.group(1)) * {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}[m.group(2).upper()]


def _get(row: pd.Series, *keys, default=None):
    for k in keys:
        if k in row.index:
            v = row[k]
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                return v
    return default


def _no_teacher(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or str(v).strip().lower() in NO_TEACHER


def _label(trial_id: str) -> str:
    """The trial id without its seed part: 'top_k=50,seed=1' -> 'top_k=50'."""
    parts = [p for p in str(trial_id).split(",") if not re.fullmatch(r"seed=\d+", p.strip())]
    out = ",".join(parts)
    if out.endswith(":"):
        out = out[:-1]
    return out or "base"


def run_info(results: Results) -> pd.DataFrame:
    """One row per scored study run (students, baselines, imported rows) with derived columns:

    label (trial id without the seed), condition (identity of the config without its seed),
    series (a training run an evaluation belongs to; imported checkpoints of one run share it),
    method ("LM", "PD" or "PD*"), is_lm, is_baseline, is_vanilla (the default PD recipe),
    student, teacher ("none" for LM-only), seed, num_params (non-embedding where recorded),
    tokens_budget (training tokens), top_p, top_k (teacher truncation; NaN when not PD).
    """
    runs = results.runs
    if runs.empty:
        return pd.DataFrame(columns=INFO_COLUMNS)
    runs = runs[runs["kind"].isin(SCORED_KINDS)]
    rows = []
    for _, r in runs.iterrows():
        external = r["kind"] == "external"
        cfg = results.configs.get(r["config_hash"], {})
        teacher = _get(r, "teacher")
        is_lm = r["kind"] == "baseline" or _no_teacher(teacher)
        baseline_hash = _get(r, "baseline_hash")
        student = str(_get(r, "student", default=""))
        num_params = _get(r, "num_non_embedding_params", "num_params")
        num_params = float(num_params) if num_params is not None else parse_param_count(student)
        top_p, top_k = _get(r, "logits.top_p"), _get(r, "logits.top_k")
        cfactor, cvalue = cfg.get("factor"), cfg.get("value")
        if external:
            name = str(cfg.get("run", "")).strip().lower()
            tokens_budget = float(cfg.get("tokens_b") or float("nan")) * 1e9
            seed = float("nan")
            if cfactor == "top_p_k" and cvalue:
                try:
                    p, k = str(cvalue).split("-", 1)
                    top_p, top_k = float(p), (float("inf") if k.lower() in ("inf", "none") else float(k))
                except ValueError:
                    pass
            is_star = name in PD_STAR_NAMES
            is_vanilla = not is_lm and name in VANILLA_NAMES
            label = f"T{cfg['table']} {cfg.get('run')}" if cfg.get("table") not in (None, "") else str(cfg.get("run"))
            if cfg.get("step") not in (None, ""):
                ident = {k: cfg.get(k) for k in ("table", "run", "student", "teacher", "tokens_b")}
                series = "ext:" + "|".join(str(v) for v in ident.values())
                label = f"{label} @ step {cfg.get('step')}"
            else:
                series = r["config_hash"]
            condition = r["config_hash"]
        else:
            tokens_budget = float(_get(r, "tokens", default=float("nan")))
            seed = _get(r, "seed", default=float("nan"))
            factor = r["factor"] if isinstance(r["factor"], str) else ""  # None or NaN: the study's base
            names = {f.strip().split(".")[-1] for f in factor.split(",") if f.strip()}
            is_star = any(s in str(r["trial_id"]).lower() for s in ("pd_star", "pd*"))
            is_vanilla = not is_lm and (not names or names <= VANILLA_FACTORS)
            label = _label(r["trial_id"])
            series = r["config_hash"]
            ident = {k: v for k, v in cfg.items() if k not in ("seed", "baseline_hash")}
            condition = "cfg:" + stable_hash(ident)
        method = "LM" if is_lm else ("PD*" if is_star else "PD")
        rows.append({
            "run_id": r["run_id"], "config_hash": r["config_hash"], "trial_id": r["trial_id"],
            "factor": r["factor"], "value": r["value"], "kind": r["kind"], "status": r["status"],
            "label": label, "condition": condition, "series": series, "method": method,
            "is_lm": bool(is_lm), "is_baseline": bool(is_lm and baseline_hash is None),
            "is_vanilla": bool(is_vanilla), "baseline_hash": baseline_hash, "student": student,
            "teacher": "none" if _no_teacher(teacher) else str(teacher), "seed": seed,
            "num_params": num_params, "tokens_budget": tokens_budget,
            "top_p": float(top_p) if top_p is not None else float("nan"),
            "top_k": float(top_k) if top_k is not None else float("nan"),
        })
    return pd.DataFrame(rows, columns=INFO_COLUMNS)


def run_scores(results: Results, *, tasks: Sequence[str] | None = None) -> pd.DataFrame:
    """Benchmark scores per (run, evaluation step), wide: run_info columns, step, tokens,
    final (the last evaluation of its series), one column per task (percent), average,
    baseline_average and delta_pct (vs the baseline run at the same step, else its final step).

    `.attrs["tasks"]` lists the task columns in order. Empty frame when the study has no evals.
    """
    info = run_info(results)
    ev = results.evals
    ev = ev[ev["run_id"].isin(info["run_id"]) & ev["value"].notna()] if not ev.empty else ev
    if ev.empty or info.empty:
        out = pd.DataFrame(columns=INFO_COLUMNS + ["step", "tokens", "final", "average",
                                                   "baseline_average", "delta_pct"])
        out.attrs["tasks"] = []
        return out
    ev = _pick_metric(ev)
    external = set(info.loc[info["kind"] == "external", "run_id"])
    scale = ev["metric"].isin(PERCENT_METRICS) & ~ev["run_id"].isin(external) & (ev["value"].abs() <= 1.0)
    # scale a whole (task, metric) only when all its values are fractions
    frac = scale.groupby([ev["task"], ev["metric"]]).transform("all")
    ev = ev.assign(value=np.where(frac, ev["value"] * 100.0, ev["value"]))
    wide = ev.pivot_table(index=["run_id", "step"], columns="task", values="value", aggfunc="mean")
    all_tasks = [t for t in _task_order(ev["task"]) if t != "average"]
    task_cols = [t for t in (tasks or all_tasks) if t in wide.columns]
    missing = [t for t in (tasks or []) if t not in wide.columns]
    if missing:
        raise ValueError(f"tasks {missing} have no evaluations (found: {all_tasks})")
    avg = wide[task_cols].mean(axis=1, skipna=True) if task_cols else pd.Series(np.nan, index=wide.index)
    if "average" in wide.columns and not tasks:
        avg = wide["average"].where(wide["average"].notna(), avg)
    wide = wide[task_cols].assign(average=avg)
    tokens = ev.groupby(["run_id", "step"])["tokens"].max()
    wide = wide.join(tokens).reset_index()
    df = info.merge(wide, on="run_id", how="inner")
    last = df.groupby("series")["step"].transform("max")
    df["final"] = df["step"] == last
    df = attach_baseline(df, "average", on="step", out="baseline_average")
    df["delta_pct"] = (df["average"] - df["baseline_average"]) / df["baseline_average"] * 100.0
    cols = INFO_COLUMNS + ["step", "tokens", "final"] + task_cols + ["average", "baseline_average",
                                                                    "delta_pct"]
    df = df[cols].reset_index(drop=True)
    df.attrs["tasks"] = task_cols
    return df


def _pick_metric(ev: pd.DataFrame) -> pd.DataFrame:
    """One metric per task: the first of METRIC_PREFERENCE it reports, else its first metric."""
    chosen = {}
    for task, metrics in ev.groupby("task")["metric"]:
        have = list(dict.fromkeys(metrics))
        chosen[task] = next((m for m in METRIC_PREFERENCE if m in have), sorted(have)[0])
    return ev[ev["metric"] == ev["task"].map(chosen)]


def _task_order(tasks: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(tasks))


def _condition_table(df: pd.DataFrame, value_cols: list[str], main: str, delta_col: str) -> pd.DataFrame:
    """Aggregate per condition: means (and std) of value_cols over seeds, n, paired deltas."""
    keys = ["condition"]
    first = df.groupby(keys, sort=False).first()
    g = df.groupby(keys, sort=False)
    out = pd.DataFrame(index=first.index)
    for c in ["label", "factor", "value", "method", "student", "teacher", "is_baseline", "is_lm"]:
        out[c] = first[c]
    out["n"] = g["run_id"].nunique()
    for c in value_cols:
        out[c] = g[c].mean()
    out[f"{main}_std"] = g[main].std(ddof=1)
    # the baseline condition(s) of each condition and their mean over their own runs
    cond_of = df.drop_duplicates("config_hash").set_index("config_hash")["condition"]
    labels = df.drop_duplicates("condition").set_index("condition")["label"]
    bl, bmean = [], []
    for cond, sub in g:
        hashes = [h for h in sub["baseline_hash"].dropna().unique() if h in cond_of.index]
        if not hashes:
            bl.append(None)
            bmean.append(np.nan)
            continue
        bconds = list(dict.fromkeys(cond_of[h] for h in hashes))
        bl.append(" / ".join(str(labels.get(c, c)) for c in bconds))
        bmean.append(float(df[df["condition"].isin(bconds)].drop_duplicates("config_hash")[main].mean())
                     if len(hashes) else np.nan)
    out["baseline"] = bl
    out[f"baseline_{main}"] = bmean
    out["paired_n"] = g[delta_col].count()
    out["paired_delta_mean"] = g[delta_col].mean()
    out["paired_delta_std"] = g[delta_col].std(ddof=1)
    return out.reset_index()


def delta_table(results: Results | pd.DataFrame, *, tasks: Sequence[str] | None = None,
                step: int | str = "final", factor: str | None = None) -> pd.DataFrame:
    """The paper's table: one row per condition (seeds aggregated), columns

    label, factor, value, method, student, teacher, is_baseline, n, <task means…>, average,
    average_std, baseline, baseline_average, delta_pct ((mean − baseline mean)/baseline mean · 100),
    paired_n, paired_delta_mean, paired_delta_std (per-seed Δ vs the baseline sharing the seed).

    results: a Results or a run_scores frame. step: "final" (each run's last evaluation) or a step.
    factor: keep only conditions of that factor (and their baselines).
    """
    df = results if isinstance(results, pd.DataFrame) else run_scores(results, tasks=tasks)
    task_cols = list(df.attrs.get("tasks", []))
    if df.empty:
        raise ValueError("no benchmark evaluations to tabulate")
    df = df[df["final"]] if step == "final" else df[df["step"] == int(step)]
    if factor is not None:
        keep = df["factor"] == factor
        keep |= df["config_hash"].isin(df.loc[keep, "baseline_hash"].dropna())
        df = df[keep]
    if df.empty:
        raise ValueError(f"no evaluations at step {step!r}" + (f" for factor {factor!r}" if factor else ""))
    out = _condition_table(df, task_cols + ["average"], "average", "delta_pct")
    out["delta_pct"] = (out["average"] - out["baseline_average"]) / out["baseline_average"] * 100.0
    out = _baselines_first(out)
    cols = (["label", "factor", "value", "method", "student", "teacher", "is_baseline", "n"]
            + task_cols + ["average", "average_std", "baseline", "baseline_average", "delta_pct",
                           "paired_n", "paired_delta_mean", "paired_delta_std"])
    out = out[cols]
    out.attrs.update(kind="score", tasks=task_cols)
    return out


def loss_delta_table(results: Results, *, metric: str = "val_loss") -> pd.DataFrame:
    """Held-out loss per condition (lower is better): label, factor, value, method, student,
    teacher, is_baseline, n, <metric> (mean), <metric>_std, baseline, baseline_<metric>,
    gain_pct ((L_LM − L_PD)/L_LM · 100 from the means), paired_n, paired_delta_mean,
    paired_delta_std (the gain per seed pair)."""
    info = run_info(results)
    fl = final_losses(results, metric)
    if fl.empty or info.empty:
        raise ValueError(f"no {metric} metrics to tabulate")
    df = info.merge(fl[["run_id", "step", metric]].drop_duplicates("run_id"), on="run_id")
    df = attach_baseline(df, metric, on="step", out=f"baseline_{metric}_run")
    df["gain"] = (df[f"baseline_{metric}_run"] - df[metric]) / df[f"baseline_{metric}_run"] * 100.0
    out = _condition_table(df, [metric], metric, "gain")
    out["gain_pct"] = (out[f"baseline_{metric}"] - out[metric]) / out[f"baseline_{metric}"] * 100.0
    out = _baselines_first(out)
    cols = ["label", "factor", "value", "method", "student", "teacher", "is_baseline", "n", metric,
            f"{metric}_std", "baseline", f"baseline_{metric}", "gain_pct", "paired_n",
            "paired_delta_mean", "paired_delta_std"]
    out = out[cols]
    out.attrs.update(kind="loss", metric=metric)
    return out


def _baselines_first(out: pd.DataFrame) -> pd.DataFrame:
    order = np.argsort(~out["is_baseline"].to_numpy(dtype=bool), kind="stable")
    return out.iloc[order].reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

def _num(v, digits=1) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _signed(v, digits=1, arrow=True) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    s = f"{v:+.{digits}f}".replace("-", "−")
    if arrow and round(v, digits) != 0:
        s += " ↑" if v > 0 else " ↓"
    return s


def format_table(table: pd.DataFrame, digits: int = 1) -> pd.DataFrame:
    """Strings for display: scores with ± std when a condition has several seeds, Δ with ↑/↓."""
    kind = table.attrs.get("kind", "score")
    multi = bool((table["n"] > 1).any())
    out = pd.DataFrame()
    out["run"] = table["label"].astype(str)
    for c in ("student", "teacher"):
        if table[c].nunique() > 1:
            out[c] = table[c].astype(str)
    if multi:
        out["n"] = table["n"].astype(int).astype(str)
    if kind == "score":
        for t in table.attrs.get("tasks", []):
            out[t] = [_num(v, digits) for v in table[t]]
        out["avg."] = [_num(m, digits) + (f" ± {_num(s, digits)}" if multi and not math.isnan(s) else "")
                       for m, s in zip(table["average"], table["average_std"].astype(float))]
        out["Δ (%)"] = [_signed(v, digits) for v in table["delta_pct"]]
    else:
        metric = table.attrs.get("metric", "val_loss")
        out[metric] = [_num(m, 4) + (f" ± {_num(s, 4)}" if multi and not math.isnan(s) else "")
                       for m, s in zip(table[metric], table[f"{metric}_std"].astype(float))]
        out["Δ loss (%)"] = [_signed(v, 2) for v in table["gain_pct"]]
    if multi:
        out["paired Δ (%)"] = [
            "—" if n == 0 or math.isnan(m) else
            f"{_signed(m, digits if kind == 'score' else 2, arrow=False)} ± {_num(s, digits if kind == 'score' else 2)}"
            for m, s, n in zip(table["paired_delta_mean"], table["paired_delta_std"].astype(float),
                               table["paired_n"])]
    return out


def to_markdown(table: pd.DataFrame, digits: int = 1) -> str:
    """A GitHub-flavoured markdown table of format_table(table)."""
    f = format_table(table, digits)
    cells = [list(f.columns)] + f.astype(str).values.tolist()
    esc = [[str(c).replace("|", "\\|") for c in row] for row in cells]
    widths = [max(len(r[i]) for r in esc) for i in range(len(esc[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(esc[0], widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in esc[1:]]
    return "\n".join(lines)


def to_html(table: pd.DataFrame, digits: int = 1) -> str:
    """An HTML <table> of format_table(table); Δ cells carry class "up" / "down"."""
    f = format_table(table, digits)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in f.columns)
    body = []
    for _, row in f.iterrows():
        tds = []
        for c, v in row.items():
            cls = ""
            if str(c).startswith("Δ"):
                cls = ' class="up"' if "↑" in v else (' class="down"' if "↓" in v else "")
            tds.append(f"<td{cls}>{html.escape(str(v))}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    return f'<table class="pd-table"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
