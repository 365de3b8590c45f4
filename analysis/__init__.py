"""pdspace analysis: a study's results -> Δ tables, scaling-law fits, figures, reports.

Reads the database only through the results package (and writes only through its
import_external, for `pdspace import`). Modules (none imports torch, ray or the orchestrator):
    results        results.load_results & co. under analysis's name (for notebooks); stable_hash
    tables         run_info, run_scores, delta_table, loss_delta_table, to_markdown, to_html
    scaling        fit_power_law, fit_chinchilla, fit_supervised_law, fit_distillation_law, compute_optimal
    fits           which loss points of a study go into which fit
    figures        the paper's Figures 1-5, loss curves, fit plots (matplotlib, PNG and PDF)
    study_figures  make_figures: every figure one study allows; loss_curves, kept_frame
    external       the paper's CSV format; reference_results() = the paper's numbers, shipped here
    report         write_report(db_url, study, out_path) -> one self-contained HTML file
    findings       the paper's findings as calibrated tests on PD-vs-baseline loss gains (pd_pairs)
    suite          the report over a folder of studies
    summary        loss_comparison: what `pdspace run` prints at the end
    commands       fit_command, figures_command, report_command, import_command (the CLI's verbs)
"""
