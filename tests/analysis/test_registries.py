"""Registries instead of parallel lists: a scaling law is one registered function, and every
place that lists laws (pdspace fit, the report) reads the registry."""
from __future__ import annotations

import pytest

from analysis import fits
from analysis.commands import fit_command
from analysis.scaling import fit_power_law


def test_a_new_law_is_one_registered_function(synth_db, synth_results, monkeypatch):
    monkeypatch.setattr(fits, "LAWS", dict(fits.LAWS))

    @fits.law("power_lm", "L(N) = E + A·N^(−alpha), LM-only runs", "Power law on LM-only runs")
    def _power_lm(results, *, bootstrap=0, seed=0):
        return [g for g in fits.power_law_fits(results, bootstrap=bootstrap, seed=seed) if g.group == "LM-only"]

    text = fit_command(synth_db, "synth", "power_lm", bootstrap=0)
    assert "power_lm law, L(N) = E + A·N^(−alpha), LM-only runs" in text and "LM-only" in text
    [got] = fits.fit_study(synth_results, "power_lm")
    pts = got.points
    want = fit_power_law(pts["num_params"].to_numpy(float), pts["L"].to_numpy(float))
    assert got.result.params == pytest.approx(want.params)


def test_unknown_law_names_the_registered_ones():
    with pytest.raises(ValueError, match=r"unknown law 'chinchila' \(did you mean 'chinchilla'\?\); expected one of power, "
                                         r"chinchilla, distillation"):
        fits.get_law("chinchila")
    with pytest.raises(ValueError, match="registered twice"):
        fits.law("power", "", "")(lambda results, **kw: [])


def test_a_new_study_figure_is_one_registered_function(synth_results, tmp_path, monkeypatch):
    from analysis import study_figures
    from analysis.figures import plot_loss_curves

    monkeypatch.setattr(study_figures, "FIGURES", dict(study_figures.FIGURES))

    @study_figures.study_figure("final_loss_curves")
    def _final(inputs):
        curves = study_figures.loss_curves(inputs.results)
        return plot_loss_curves(curves[curves["tokens"] >= curves["tokens"].max() / 2])

    figs, skipped = study_figures.make_figures(synth_results, tmp_path, bootstrap=0)
    assert "final_loss_curves" in figs and (tmp_path / "final_loss_curves.png").exists()
    assert list(figs)[-1] == "final_loss_curves"  # registry order is report order
