"""Every figure one study's results allow (what `pdspace figures` saves and the report embeds):
the paper's Figures 1-5 from its benchmark scores, the kept-logits axis of Figures 2-3 from its
logits runs' kept_stats rows, held-out loss curves, and the scaling-law fit plots."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
from matplotlib.figure import Figure

from results import Results

__all__ = ["make_figures", "loss_curves", "kept_frame", "FIGURES", "study_figure", "FigureInputs", "StudyFigure"]

DEFAULT_BOOTSTRAP = 200


@dataclass
class FigureInputs:
    """What a study figure draws from, computed once per call of make_figures (fits lazily)."""

    results: Results
    scores: pd.DataFrame
    kept: pd.DataFrame | None
    reference: bool
    bootstrap: int
    fits: dict = field(default_factory=dict)

    def fit(self, law: str) -> list:
        """The study's fits of a registered law (analysis.fits.LAWS), computed at most once."""
        from analysis.fits import fit_study

        if law not in self.fits:
            self.fits[law] = fit_study(self.results, law, bootstrap=self.bootstrap)
        return self.fits[law]


@dataclass(frozen=True)
class StudyFigure:
    """A figure of one study: ``draw(inputs)`` returns it, or raises ValueError saying what is
    missing (shown as 'not drawn' in the report)."""

    name: str
    draw: Callable[[FigureInputs], Figure]


FIGURES: dict[str, StudyFigure] = {}
"""The figures of one study, in report order; add one with @study_figure."""


def study_figure(name: str):
    """Register ``draw(inputs) -> Figure`` as the study figure ``name``."""

    def register(fn):
        if name in FIGURES:
            raise ValueError(f"figure {name!r} is registered twice")
        FIGURES[name] = StudyFigure(name, fn)
        return fn

    return register


def _scored(inputs: FigureInputs) -> pd.DataFrame:
    if inputs.scores.empty:
        raise ValueError("the study has no benchmark evaluations")
    return inputs.scores


@study_figure("fig1_scores_by_size")
def _fig1(i: FigureInputs):
    from analysis import figures as F

    return F.figure1(_scored(i), reference=i.reference)


@study_figure("fig2_delta_vs_top_p")
def _fig2(i: FigureInputs):
    from analysis import figures as F

    return F.figure2(_scored(i), kept=i.kept, reference=i.reference)


@study_figure("fig3_delta_vs_top_k")
def _fig3(i: FigureInputs):
    from analysis import figures as F

    return F.figure3(_scored(i), kept=i.kept, reference=i.reference)


@study_figure("fig4_delta_vs_size")
def _fig4(i: FigureInputs):
    from analysis import figures as F

    return F.figure4(_scored(i), reference=i.reference)


@study_figure("fig5_score_vs_tokens")
def _fig5(i: FigureInputs):
    from analysis import figures as F

    return F.figure5(_scored(i), reference=i.reference)


def _curves(i: FigureInputs) -> pd.DataFrame:
    curves = loss_curves(i.results)
    if curves.empty:
        raise ValueError("the study has no val_loss metrics")
    return curves


@study_figure("loss_curves")
def _loss_curves(i: FigureInputs):
    from analysis import figures as F

    return F.plot_loss_curves(_curves(i))


@study_figure("fit_power_law")
def _fit_power(i: FigureInputs):
    from analysis import figures as F

    _curves(i)
    power = [(g.group, g.points["num_params"], g.points["L"], g.result) for g in i.fit("power")
             if g.result is not None]
    if not power:
        raise ValueError("needs final losses of at least 4 runs over 2+ sizes per group")
    return F.plot_power_law_fits(power)


@study_figure("fit_chinchilla")
def _fit_chinchilla(i: FigureInputs):
    from analysis import figures as F

    from analysis.fits import chinchilla_fits

    _curves(i)
    fits = i.fits.get("chinchilla") or chinchilla_fits(i.results, bootstrap=i.bootstrap, groups=("LM-only",))
    chin = [g for g in fits if g.result is not None and g.group == "LM-only"]
    if not chin:
        raise ValueError("needs LM-only losses at 6+ points over 2+ sizes")
    g = chin[0]
    return F.plot_chinchilla_fit(g.points["num_params"], g.points["D"], g.points["L"], g.result)


def make_figures(results: Results, out_dir: str | Path | None = None, *, kept_stats: pd.DataFrame | None = None,
                 reference: bool = False, bootstrap: int = DEFAULT_BOOTSTRAP, fits: dict | None = None):
    """Draw every registered figure (FIGURES) the study's results allow. Returns ({name: Figure},
    {name: why skipped}). When out_dir is given the figures are also saved there (PNG and PDF).
    kept_stats: the kept logits per token (columns p, k, mean_kept; default: kept_frame(results)).
    fits: already computed {law: [GroupFit]} (computed here when a figure needs them)."""
    from analysis import figures as F
    from analysis.tables import run_scores

    inputs = FigureInputs(results, run_scores(results), kept_frame(results) if kept_stats is None else kept_stats,
                          reference and not results.is_external, bootstrap, dict(fits or {}))
    figs, skipped = {}, {}
    for fig in FIGURES.values():
        try:
            figs[fig.name] = fig.draw(inputs)
        except ValueError as e:
            skipped[fig.name] = str(e)
    if out_dir is not None:
        for name, figure in figs.items():
            F.save_figure(figure, out_dir, name)
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
