"""pdspace results: the results database, in one package. The orchestrator writes through it,
analysis reads through it, nothing else touches the database.

Modules (none imports torch, ray, core, orchestrator or analysis):
    schema    the tables as SQLAlchemy ORM classes (Study, Run, StudyRun, Metric, Eval, Artifact, KeptStat)
    engine    resolve_db_url, make_engine (SQLite: WAL, busy timeout), engine_for, session_scope,
              init_db (migrate to the latest revision), ensure_schema, database_exists
    migrate   Alembic, programmatic: upgrade, downgrade; revisions in results/migrations/versions
    write     register_study, run_id_for, start_run, finish_run, record_metrics, record_evals,
              record_artifact, record_kept_stats, import_external
    read      load_results -> Results (tidy frames), final_losses, list_studies, unit_statuses,
              unit_progress, status_rows, final_run_metrics, results_frame, export_artifact, query,
              artifact_inventory (what `pdspace gc` needs)
    pairs     attach_baseline: every run paired with its LM-only baseline
    series    metric_rows: evaluation rows in full, training curves thinned in SQL (TRAINING_METRICS)
    sqltext   one_statement: the single-statement check in front of `pdspace query`
    legacy    the kept-logits metric names of databases before migration 0002
"""
from results.engine import (DEFAULT_DB, database_exists, engine_for, ensure_schema, init_db, make_engine,
                            resolve_db_url, session_scope)
from results.pairs import attach_baseline
from results.read import (EVAL_COLUMNS, KEPT_COLUMNS, METRIC_COLUMNS, RUN_COLUMNS, Results, artifact_inventory,
                          export_artifact,
                          final_losses, final_run_metrics, flatten_config, list_studies, load_results, query,
                          results_frame, status_rows, unit_progress, unit_statuses)
from results.write import (ImportedRun, TrialRecord, UnitRecord, finish_run, import_external, record_artifact,
                           record_evals, record_kept_stats, record_metrics, register_study, run_id_for, start_run)

__all__ = [
    "DEFAULT_DB", "database_exists", "engine_for", "ensure_schema", "init_db", "make_engine", "resolve_db_url",
    "session_scope", "attach_baseline", "artifact_inventory", "EVAL_COLUMNS", "KEPT_COLUMNS", "METRIC_COLUMNS", "RUN_COLUMNS", "Results",
    "export_artifact", "final_losses", "final_run_metrics", "flatten_config", "list_studies", "load_results",
    "query", "results_frame", "status_rows", "unit_progress", "unit_statuses", "ImportedRun", "TrialRecord",
    "UnitRecord", "finish_run", "import_external", "record_artifact", "record_evals", "record_kept_stats",
    "record_metrics", "register_study", "run_id_for", "start_run",
]
