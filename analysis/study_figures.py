"""Every figure one study's results allow (what `pdspace figures` saves and the report embeds):
the paper's Figures 1-5 from its benchmark scores, the kept-logits axis of Figures 2-3 from its
logits runs' kept_stats rows, held-out loss curves, and the scaling-law fit plots."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from results import Results

__all__ = ["make_figures", "loss_curves", "kept_frame"]

DEFAULT_BOOTSTRAP = 200


def make_figures(results: Results, out_dir: str | Path | None = None, *, kept_stats: pd.DataFrame | None = None,
                 reference: bool = False, bootstrap: int = DEFAULT_BOOTSTRAP, fits: dict | None = None):
    """Draw every figure the study's results allow. Returns ({name: Figure}, {name: why skipped}).
    When out_dir is given the figures are also saved there (PNG and PDF). kept_stats: the kept
    logits per token (columns p, k, mean_kept; default: kept_frame(results)). fits: already
    computed {"power": [...], "chinchilla": [...]} GroupFit lists (computed here when missing)."""
    from analysis import figures as F
    from analysis.fits import chinchilla_fits, power_law_fits
    from analysis.tables import run_scores

    if kept_stats is None:
        kept_stats = kept_frame(results)
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
    curves = loss_curves(results)
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


def loss_curves(results: Results) -> pd.DataFrame:
    """Held-out loss over training per scored run: label (trial id), tokens, loss, is_lm, student."""
    from analysis.tables import run_info

    m = results.metrics
    if m.empty:
        return pd.DataFrame(columns=["label", "tokens", "loss", "is_lm", "student"])
    info = run_info(results).drop_duplicates("run_id")
    m = m[(m["name"] == "val_loss") & m["value"].notna()]
    df = m.drop(columns=["trial_id", "config_hash"]).merge(info[["run_id", "trial_id", "is_lm", "student"]],
                                                           on="run_id")
    return df.rename(columns={"value": "loss", "trial_id": "label"})[["label", "tokens", "loss", "is_lm", "student"]]


def kept_frame(results: Results) -> pd.DataFrame | None:
    """Kept logits per token (columns p, k, mean_kept) measured from the study's logits stores
    (their kept_stats rows, averaged over stores), plus the exact top-1.0-k line (k entries);
    None when the study has none."""
    kept = results.kept_stats
    if kept is None or kept.empty:
        return None
    kept = kept[kept["mean_kept_per_token"].notna()]
    if kept.empty:
        return None
    frame = (kept.assign(p=kept["top_p"].astype(float), k=kept["top_k"].astype(int),
                         mean_kept=kept["mean_kept_per_token"].astype(float))
             .groupby(["p", "k"], as_index=False)["mean_kept"].mean())
    ks = sorted(frame["k"].unique())
    plain_top_k = pd.DataFrame({"p": 1.0, "k": ks, "mean_kept": [float(k) for k in ks]})
    return pd.concat([frame, plain_top_k[~plain_top_k["k"].isin(frame[frame["p"] == 1.0]["k"])]],
                     ignore_index=True)
