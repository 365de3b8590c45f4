"""pdspace analysis: results database -> tidy frames, Δ tables, scaling-law fits, figures, reports.

Modules (none imports torch or ray):
    results   load_results(db_url, study) -> Results (runs, metrics, evals frames); final_losses
    tables    run_scores, delta_table, loss_delta_table, to_markdown, to_html
    scaling   fit_power_law, fit_chinchilla, fit_supervised_law, fit_distillation_law, compute_optimal
    fits      which loss points of a study go into which fit
    figures   the paper's Figures 1-5, loss curves, fit plots (matplotlib, PNG and PDF)
    external  the paper's CSV format; reference_results() = the paper's numbers, shipped here
    report    write_report(db_url, study, out_path) -> one self-contained HTML file
    commands  fit_command, figures_command, report_command, import_command (the CLI's verbs)
"""
