"""The `pdspace` command: a thin layer over orchestrator (validate, plan, run, status), results
(results, query) and analysis (fit, figures, report, import, and the summary after a run).
Entry point: cli.main:main."""
