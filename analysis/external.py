"""External results in the paper's long CSV format -> runs of kind "external" with evals.

Format (reference/peng2025_results.csv): one row per run and benchmark, columns
    table, run, student, teacher, tokens_b, step, factor, value, benchmark, score, note
`teacher` is "none" for an LM-only run; `tokens_b` the run's training budget in billions of tokens;
`step` empty for a final result, else the checkpoint; `average` is a benchmark like the others.
A run is one distinct (table, run, student, teacher, tokens_b, step, factor, value).
Its baseline is an LM-only run with the same student, tokens_b and step: one named "lm" first,
from the same table first, else the lowest-numbered table (so WSD-LR rows of table 5 compare to
the plain LM run, as the paper does). This module reads files only; commands.import_command stores them (results.import_external).
"""
from __future__ import annotations

import functools
import io
from importlib import resources
from pathlib import Path

import pandas as pd

from analysis.results import stable_hash
from results import EVAL_COLUMNS, METRIC_COLUMNS, ImportedRun, Results, flatten_config

__all__ = ["REQUIRED_COLUMNS", "ExternalRun", "read_external_csv", "external_runs",
           "results_from_external", "reference_table", "reference_results"]

REQUIRED_COLUMNS = ("table", "run", "student", "teacher", "tokens_b", "factor", "value", "benchmark",
                    "score")
OPTIONAL_COLUMNS = ("step", "note")
IDENTITY = ("table", "run", "student", "teacher", "tokens_b", "step", "factor", "value")
LM_RUN_NAMES = {"lm", "llm-lm", "baseline", "lm_only"}
NO_TEACHER = {"", "none", "null", "nan"}


ExternalRun = ImportedRun
"""One run of the CSV (config_hash, trial_id, factor, value, config, evals): what
results.import_external stores."""


def read_external_csv(source) -> pd.DataFrame:
    """Read and check a CSV (path, or a file-like object); ValueError names what is wrong."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"results file {str(path)!r} does not exist")
        where = str(path)
    else:
        where = "the input"
    try:
        df = pd.read_csv(source, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise ValueError(f"{where} is not a readable CSV file ({e.__class__.__name__})") from None
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{where} is missing the column(s) {', '.join(missing)} "
                         f"(expected {', '.join(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)})")
    if df.empty:
        raise ValueError(f"{where} has no rows")
    for c in OPTIONAL_COLUMNS:
        if c not in df.columns:
            df[c] = ""
    df = df.apply(lambda s: s.str.strip())
    for c, allow_empty in (("score", False), ("tokens_b", True), ("step", True)):
        num = pd.to_numeric(df[c].replace("", None), errors="coerce")
        bad = (num.isna() & (df[c] != "")) | (num.isna() if not allow_empty else False)
        if bool(bad.any()):
            lines = ", ".join(str(i + 2) for i in df.index[bad][:5])
            raise ValueError(f"{where}: column {c!r} must be numeric; bad value(s) on line(s) {lines}")
    if (df["benchmark"] == "").any():
        lines = ", ".join(str(i + 2) for i in df.index[df["benchmark"] == ""][:5])
        raise ValueError(f"{where}: column 'benchmark' is empty on line(s) {lines}")
    return df


def _num(v):
    if v in ("", None):
        return None
    f = float(v)
    return int(f) if f.is_integer() else f


def _table_order(t: str):
    try:
        return (0, float(t), "")
    except ValueError:
        return (1, 0.0, t)


def external_runs(df: pd.DataFrame, study: str) -> list[ExternalRun]:
    """Group a checked CSV frame into runs (see the module docstring), in file order."""
    groups = df.groupby(list(IDENTITY), sort=False)
    ident = [dict(zip(IDENTITY, key)) for key, _ in groups]
    hashes = [stable_hash({**{k: i[k] for k in IDENTITY}, "study": study}) for i in ident]
    is_lm = [i["teacher"].lower() in NO_TEACHER for i in ident]
    # final tokens of a series of checkpoints: tokens_b at the largest step of the series
    series_max: dict[tuple, float] = {}
    for i in ident:
        if i["step"] != "":
            key = (i["table"], i["run"], i["student"], i["teacher"], i["tokens_b"])
            series_max[key] = max(series_max.get(key, 0.0), float(i["step"]))
    runs: list[ExternalRun] = []
    trial_ids: set[str] = set()
    for (key, rows), i, h in zip(groups, ident, hashes):
        cands = [j for j, c in enumerate(ident) if is_lm[j] and c["student"] == i["student"]
                 and c["tokens_b"] == i["tokens_b"] and c["step"] == i["step"]]
        cands.sort(key=lambda j: (ident[j]["run"].lower() not in LM_RUN_NAMES,
                                  ident[j]["table"] != i["table"], _table_order(ident[j]["table"])))
        baseline = hashes[cands[0]] if cands and hashes[cands[0]] != h else None
        tokens_total = (_num(i["tokens_b"]) or 0) * 1e9
        if i["step"] != "":
            smax = series_max[(i["table"], i["run"], i["student"], i["teacher"], i["tokens_b"])]
            tokens = tokens_total * float(i["step"]) / smax if smax > 0 else tokens_total
        else:
            tokens = tokens_total
        step = _num(i["step"])
        notes = [n for n in dict.fromkeys(rows["note"]) if n]
        config = {"kind": "external", "study": study, **{k: i[k] for k in ("table", "run", "student", "teacher")},
                  "tokens_b": _num(i["tokens_b"]), "step": step, "factor": i["factor"] or None,
                  "value": i["value"] or None, "note": "; ".join(notes) or None, "baseline_hash": baseline}
        trial = f"{i['table']}/{i['run']}/{i['student']}/{i['teacher']}/{i['tokens_b']}B"
        if step is not None:
            trial += f"/step={step}"
        if trial in trial_ids:
            trial += f"/{i['factor']}={i['value']}"
        n = 2
        base_trial = trial
        while trial in trial_ids:
            trial, n = f"{base_trial}#{n}", n + 1
        trial_ids.add(trial)
        evals = []
        for bench, sub in rows.groupby("benchmark", sort=False):
            evals.append({"step": step or 0, "tokens": int(round(tokens)), "task": bench, "metric": "acc",
                          "value": float(sub["score"].astype(float).mean()), "stderr": None})
        runs.append(ExternalRun(config_hash=h, trial_id=trial, factor=i["factor"] or None,
                                value=i["value"] or None, config=config, evals=evals))
    return runs


def results_from_external(df: pd.DataFrame, study: str) -> Results:
    """The Results an import of `df` would load, built in memory (no database)."""
    runs = external_runs(df, study)
    records, evals, configs = [], [], {}
    for n, r in enumerate(runs, start=1):
        rec = {"run_id": n, "config_hash": r.config_hash, "trial_id": r.trial_id, "factor": r.factor,
               "value": r.value, "kind": "external", "status": "completed", "error": None,
               "attempts": 0, "started_at": None, "finished_at": None, "duration_s": None,
               "host": None, "git_rev": None, "artifact_dir": None}
        for k, v in flatten_config(r.config).items():
            rec[f"config.{k}" if k in rec else k] = v
        records.append(rec)
        configs[r.config_hash] = r.config
        evals += [{"run_id": n, "config_hash": r.config_hash, "trial_id": r.trial_id, **e} for e in r.evals]
    return Results(study=study, spec={"source": "external"}, runs=pd.DataFrame.from_records(records),
                   metrics=pd.DataFrame(columns=METRIC_COLUMNS),
                   evals=pd.DataFrame.from_records(evals, columns=EVAL_COLUMNS), configs=configs)


def reference_table() -> pd.DataFrame:
    """The paper's published results (Peng et al. 2025), shipped in the package."""
    text = resources.files("analysis").joinpath("reference", "peng2025_results.csv").read_text("utf-8")
    return read_external_csv(io.StringIO(text))


@functools.lru_cache(maxsize=1)
def reference_results() -> Results:
    """The paper's results as a study named "peng2025" (in memory; cached)."""
    return results_from_external(reference_table(), "peng2025")
