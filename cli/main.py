"""The `pdspace` command: each verb is a short function over library code (orchestrator,
results, analysis); `pdspace run` composes them: the orchestrator runs, analysis summarises and
reports.

Exit codes: 0 success, 1 a run failed, 2 bad input. Errors are one sentence on stderr; `--debug`
shows the traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path
from typing import Any, Sequence

EXAMPLES = textwrap.dedent(
    """\
    examples:
      pdspace run studies/quickstart.yaml            train what is missing, print PD vs LM
      pdspace plan studies/paper/top_k.yaml          units, sizes, FLOPs, GPU-hours, reuse
      pdspace validate studies/mini/                 check every study in a folder
      pdspace run studies/quickstart.yaml --set base.tokens=250000 --max-concurrent 2
      pdspace status quickstart                      runs and their state
      pdspace results quickstart --format csv > quickstart.csv
      pdspace export quickstart --out quickstart/    every row as Parquet (pandas, Polars, DuckDB)
      pdspace gc                                     what artifacts no study needs (--yes removes them)
      pdspace query "SELECT trial_id, status FROM study_runs JOIN runs ON runs.id = run_id"
      pdspace fit quickstart --law power
      pdspace figures quickstart --out figures/
      pdspace report quickstart                      one HTML file: tables, fits, figures
      pdspace report studies/mini/                   the paper's findings checked over a suite
      pdspace import ../shared/reference/peng2025_results.csv --study paper

    database: --db URL or PATH, else $PDSPACE_DB, else ./pdspace.db
    artifacts: $PDSPACE_HOME, else ./artifacts
    """
)


class UsageError(ValueError):
    """Bad input from the command line (exit code 2)."""


def study_files(target: str) -> list[Path]:
    """The study file, or every study file (*.yaml not starting with "_") under a folder."""
    path = Path(target)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.yaml") if not p.name.startswith("_"))
        if not files:
            raise UsageError(f"{target}: the folder holds no study files (*.yaml)")
        return files
    if not path.exists():
        raise UsageError(f"{target}: no such study file")
    return [path]


def cmd_validate(args: argparse.Namespace) -> int:
    from orchestrator.study import load_study

    if args.explain:
        from orchestrator.schema import explain

        print(explain())
        return 0
    if args.study is None:
        raise ValueError("validate needs a study file or folder (or --explain to list every setting)")
    for f in study_files(args.study):
        study = load_study(f, overrides=args.set)
        try:
            check_study_tasks(study)
        except ValueError as exc:  # valid, but not runnable on this machine yet
            print(f"{f}: warning: {exc}; `pdspace run` refuses it until then", file=sys.stderr)
        print(f"{f}: ok ({study.name})")
    return 0


def check_study_tasks(study: Any) -> None:
    """Standard lm-eval tasks must be loadable before any training starts."""
    if study.eval.tasks:
        from core.lmeval import check_tasks_available

        check_tasks_available(list(study.eval.tasks))


def cmd_plan(args: argparse.Namespace) -> int:
    from orchestrator.plan import build_plan, check_memory, check_regions, format_plan
    from orchestrator.study import load_study
    from results import database_exists

    db_url = _db(args)
    for f in study_files(args.study):
        plan = build_plan(load_study(f, overrides=args.set), artifacts=_artifacts())
        checked = check_regions(plan, _artifacts())
        print(format_plan(plan, db_url=db_url if database_exists(db_url) else None))
        check_memory(plan)  # after the table, so the refusal's numbers can be read against it
        if not checked and any(u.kind == "teacher" for u in plan.units):
            print("data not prepared yet: `pdspace run` checks that no student reads the scratch "
                  "teacher's half of it before any training")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from orchestrator.study import load_study

    db_url = _db(args)
    studies = [load_study(f, overrides=args.set) for f in study_files(args.study)]
    for study in studies:
        check_study_tasks(study)
    # a log file gets the plain progress lines; a terminal also gets the live view. Several studies
    # (a folder) run as one schedule: shared units once, one Ray session, no idle slot while a
    # long teacher trains.
    status = run_and_summarise(studies, db_url=db_url, artifacts=_artifacts(), address=args.address,
                               max_concurrent=args.max_concurrent, quiet=args.quiet,
                               live=not args.quiet and sys.stdout.isatty())
    if len(studies) > 1 and not args.quiet:
        print(f"`pdspace report {args.study}` checks the paper's findings over these {len(studies)} studies")
    return status


def run_and_summarise(studies: list[Any], *, db_url: str, artifacts: Path, address: str | None = None,
                      max_concurrent: int | None = None, quiet: bool = False, live: bool = False,
                      report: bool = True) -> int:
    """Run what is missing of the studies (orchestrator.run.run_studies), then per study print PD
    vs LM on held-out loss (analysis.summary) and its failed units, and write its report when
    something ran. Returns the exit status: 0 when every unit completed, 1 when some failed."""
    from analysis.summary import loss_comparison
    from orchestrator.run import run_studies

    result = run_studies(studies, db_url=db_url, artifacts=artifacts, address=address,
                         max_concurrent=max_concurrent, quiet=quiet, live=live)
    one = len(result.studies) == 1
    for name in result.studies:
        print(loss_comparison(db_url, name))
        for trial_id, error in result.failed.get(name, []):
            print(f"FAILED {'' if one else name + ' '}{trial_id}: {error}", file=sys.stderr)
        if report and result.ran:
            _write_report(db_url, name, quiet)
    done = result.done_line()
    if done and not quiet:
        print(done, flush=True)
    return result.exit_code


def _write_report(db_url: str, study: str, quiet: bool) -> None:
    try:
        from analysis.commands import report_command

        path = report_command(db_url, study, None)
        if not quiet:
            print(f"report: {path}", flush=True)
    except Exception as exc:  # noqa: BLE001 - a report problem must not fail a finished study
        print(f"pdspace: the report could not be written: {exc}", file=sys.stderr)


def cmd_status(args: argparse.Namespace) -> int:
    from orchestrator.run import format_status

    print(format_status(_db(args, must_exist=True), args.study))
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from results import results_frame

    frame = results_frame(_db(args, must_exist=True), args.study)
    if args.format == "parquet":
        if not args.out:
            raise UsageError("--format parquet needs --out FILE")
        frame.to_parquet(args.out, index=False)
        print(f"wrote {args.out}")
        return 0
    _print_frame(frame.fillna("") if args.format == "table" else frame, args.format)
    if args.format == "table":
        from orchestrator.run import lm_eval_hint

        hint = lm_eval_hint(_db(args), args.study, _artifacts())
        if hint:
            print("\n" + hint)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from results.export import export_study

    for path, rows in export_study(_db(args, must_exist=True), args.study, args.out).values():
        print(f"wrote {path} ({rows:,} rows)")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from orchestrator.artifacts import collect_garbage, format_bytes, remove_garbage

    artifacts = _artifacts()
    garbage = collect_garbage(_db(args, must_exist=True), artifacts)
    if not garbage:
        print(f"nothing to remove under {artifacts}: every artifact there is still needed")
        return 0
    for g in garbage:
        print(f"{format_bytes(g.num_bytes):>9}  {g.path}  ({g.why})")
    total = sum(g.num_bytes for g in garbage)
    if not args.yes:
        print(f"{len(garbage)} artifact(s), {format_bytes(total)}; nothing removed (dry run): "
              "`pdspace gc --yes` removes them")
        return 0
    freed = remove_garbage(garbage, artifacts)
    print(f"removed {len(garbage)} artifact(s), freed {format_bytes(freed)}")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from results import query

    _print_frame(query(_db(args, must_exist=True), args.sql), args.format)
    return 0


def _print_frame(frame: Any, fmt: str) -> None:
    """A frame on stdout as csv, json (records) or a plain table."""
    import pandas as pd

    if fmt == "csv":
        frame.to_csv(sys.stdout, index=False)
    elif fmt == "json":
        print(frame.to_json(orient="records", indent=2))
    else:
        with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200):
            print(frame.to_string(index=False))


def cmd_fit(args: argparse.Namespace) -> int:
    from analysis.commands import fit_command

    print(fit_command(_db(args, must_exist=True), args.study, args.law))
    return 0


def cmd_figures(args: argparse.Namespace) -> int:
    from analysis.commands import figures_command

    for path in figures_command(_db(args, must_exist=True), args.study, args.out):
        print(path)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from analysis.commands import report_command

    db_url = _db(args, must_exist=True)
    target = Path(args.study)
    if target.exists() and (target.is_dir() or target.suffix in (".yaml", ".yml")):
        from orchestrator.study import load_study

        names = [load_study(f).name for f in study_files(args.study)]
        if not target.is_dir():
            print(report_command(db_url, names[0], args.out))
            return 0
        from analysis.commands import default_output
        from analysis.suite import findings_text, load_suite, write_suite_report

        title = target.resolve().name
        out = Path(args.out or default_output(title, ""))
        if out.is_dir() or not out.suffix:
            out = out / f"{title}.html"
        results, missing = load_suite(db_url, names)
        print(write_suite_report(results, out, missing=missing, title=f"{title} ({args.study})"))
        print(findings_text(results))
        return 0
    print(report_command(db_url, args.study, args.out))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from analysis.commands import import_command

    n = import_command(_db(args), args.csv, args.study)
    print(f"imported {n} runs into study '{args.study}'")
    return 0


def _db(args: argparse.Namespace, must_exist: bool = False) -> str:
    from results import database_exists, resolve_db_url

    url = resolve_db_url(args.db)
    if must_exist and not database_exists(url):
        raise UsageError(f"no results database at {url.removeprefix('sqlite:///')}; run a study first or pass --db")
    return url


def _artifacts() -> Path:
    from core.utils import artifacts_root

    return artifacts_root()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pdspace", description="Design-space studies of pre-training distillation, from one command.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--db", help="results database: SQLAlchemy URL or SQLite path")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    # The same options after the verb (`pdspace status --db x.db`); unset ones keep the above.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", default=argparse.SUPPRESS, help="results database: SQLAlchemy URL or SQLite path")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    common.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress output")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, func: Any, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, epilog=EXAMPLES, parents=[common],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=func)
        return p

    for name, func, help_ in (("validate", cmd_validate, "check study files; exit 2 with dotted-path errors"),
                              ("plan", cmd_plan, "what would run: units, sizes, tokens, FLOPs, time, reuse")):
        p = verb(name, func, help_)
        p.add_argument("study", help="study YAML file or folder", **({"nargs": "?"} if name == "validate" else {}))
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a study field")
        if name == "validate":
            p.add_argument("--explain", action="store_true",
                           help="list every study setting with its default and what it does, and exit")
    p = verb("run", cmd_run, "run a study (or every study in a folder): only what is missing")
    p.add_argument("study", help="study YAML file or folder")
    p.add_argument("--address", help="join an existing Ray cluster (default: start a local one)")
    p.add_argument("--max-concurrent", type=int, help="at most this many trials at once")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a study field")
    p = verb("status", cmd_status, "runs and their state")
    p.add_argument("study", nargs="?", help="study name (default: all)")
    p = verb("results", cmd_results, "one row per run: config, final held-out loss, evaluations")
    p.add_argument("study")
    p.add_argument("--format", choices=("table", "csv", "json", "parquet"), default="table")
    p.add_argument("--out", help="output file (parquet)")
    p = verb("export", cmd_export, "a study's runs, metrics, evals and kept_stats as Parquet files (streamed)")
    p.add_argument("study")
    p.add_argument("--out", required=True, help="output folder (runs.parquet, metrics.parquet, ...)")
    p = verb("gc", cmd_gc, "list (and with --yes remove) artifacts no study needs, and logits stores "
                           "whose students are all done")
    p.add_argument("--yes", action="store_true", help="remove them (default: a dry run that only lists them)")
    p = verb("query", cmd_query, "read-only SQL on the results database")
    p.add_argument("sql")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p = verb("fit", cmd_fit, "fit a scaling law to a study's runs")
    p.add_argument("study")
    p.add_argument("--law", default="power", help="a registered law (analysis.fits.LAWS): power, chinchilla, "
                                                "distillation, ...")
    p = verb("figures", cmd_figures, "paper-style figures (PNG and PDF)")
    p.add_argument("study")
    p.add_argument("--out", default=None, help="output folder (default: artifacts/reports/STUDY/figures)")
    p = verb("report", cmd_report, "one self-contained HTML report: tables, fits, figures")
    p.add_argument("study", help="a study name, a study file, or a folder of studies (one suite report: "
                                 "the paper's findings checked, Figures 1-5, the distillation-law fit)")
    p.add_argument("--out", default=None, help="output file (default: artifacts/reports/STUDY/STUDY.html)")
    p = verb("import", cmd_import, "import external results in the reference CSV's format")
    p.add_argument("csv")
    p.add_argument("--study", required=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quiet:
        os.environ["PDSPACE_QUIET"] = "1"
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("pdspace: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `pdspace status | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except Exception as exc:  # noqa: BLE001 - the CLI's one place that turns errors into sentences
        if args.debug:
            raise
        if isinstance(exc, (ValueError, FileNotFoundError, LookupError)):
            print(f"pdspace: {_sentence(exc)}", file=sys.stderr)
            return 2
        print(f"pdspace: {type(exc).__name__}: {_sentence(exc)} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1


def _sentence(exc: BaseException) -> str:
    text = str(exc).strip()
    return text if text else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
