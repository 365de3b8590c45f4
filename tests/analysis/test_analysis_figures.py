"""Figures: the paper's Figures 1-5 regenerated from an import of its own table, and figures
from a synthetic study in the database."""
import numpy as np
import pandas as pd
import pytest

from analysis import figures as F
from analysis.commands import figures_command, import_command, make_figures
from analysis.external import reference_table
from analysis.tables import run_scores

PAPER_FIG4_9B = {"330M": -1.5, "670M": 0.7, "1.9B": 1.6, "3.8B": 6.8, "6.8B": 6.9}


@pytest.fixture(scope="module")
def paper_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("paper") / "paper.db"
    csv = tmp_path_factory.mktemp("csv") / "peng.csv"
    reference_table().to_csv(csv, index=False)
    url = f"sqlite:///{path}"
    assert import_command(url, csv, "peng2025") == 92
    return url


@pytest.fixture(scope="module")
def paper_scores(paper_db):
    from results import load_results

    return run_scores(load_results(paper_db, "peng2025"))


def test_import_then_figures_regenerates_the_paper_figures(paper_db, tmp_path):
    paths = figures_command(paper_db, "peng2025", tmp_path)
    names = {p.name for p in paths}
    for stem in ("fig1_scores_by_size", "fig2_delta_vs_top_p", "fig3_delta_vs_top_k", "fig4_delta_vs_size",
                 "fig5_score_vs_tokens"):
        assert {f"{stem}.png", f"{stem}.pdf"} <= names
    for p in paths:
        assert p.stat().st_size > 1000
        assert p.read_bytes()[:4] in (b"\x89PNG", b"%PDF")


def test_figure4_values_are_the_papers(paper_scores):
    d = F.figure4_data(paper_scores)
    nine = d[d["teacher"] == "GLM-4-9B"].set_index("student")["delta_pct"]
    assert list(nine.index) == list(PAPER_FIG4_9B)  # ordered by size
    for student, value in PAPER_FIG4_9B.items():
        assert nine[student] == pytest.approx(value, abs=0.3), student  # PAPER.md: ±0.1-0.3 from rounding
    assert set(d["teacher"]) == {"GLM-4-9B", "GLM-4-32B"}
    assert (d["n"] == 1).all()  # table 1's and table 11's identical 1.9B rows count once


def test_figure1_2_3_5_values(paper_scores):
    f1 = F.figure1_data(paper_scores).set_index(["student", "series"])["score"]
    assert f1[("1.9B", "LM-only")] == 37.7 and f1[("1.9B", "vanilla PD")] == 38.3
    assert f1[("6.8B", "best PD")] == 49.8 and ("330M", "best PD") not in f1.index
    f2 = F.figure2_data(paper_scores)
    assert list(f2["top_p"]) == [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95] and (f2["top_k"] == 100).all()
    f3 = F.figure3_data(paper_scores).set_index("top_k")["delta_pct"]
    assert list(f3.index) == [1, 3, 5, 10, 20, 50, 100]
    assert f3[50] == pytest.approx(4.9, abs=0.3) and f3.idxmax() == 50  # k = 50 was best
    f5 = F.figure5_data(paper_scores)
    assert set(f5["student"]) == {"1.9B", "3.8B"} and f5["tokens"].max() == 500e9
    final = f5[f5["tokens"] == 500e9].set_index(["student", "series"])["score"]
    assert final[("3.8B", "PD")] == 53.7 and final[("3.8B", "LM-only")] == 50.2


def test_kept_logits_axis_and_reference_overlay(paper_scores, tmp_path):
    kept = pd.DataFrame({"p": [0.5, 0.95, 0.5, 0.95], "k": [100, 100, np.inf, np.inf],
                         "mean_kept": [1.5, 20.0, 1.5, 30.0]})
    fig = F.figure2(paper_scores, kept=kept, reference=True)
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "kept logits per token"
    labels = fig.axes[0].get_legend().get_texts()
    assert any("top-p-∞" in t.get_text() for t in labels) and any("paper" in t.get_text() for t in labels)
    assert len(F.figure3(paper_scores).axes) == 1  # no kept stats: no right axis
    with pytest.raises(ValueError, match="mean_kept"):
        F.figure2(paper_scores, kept=pd.DataFrame({"p": [0.5], "k": [100]}))
    F.save_figure(F.figure4(paper_scores, reference=True), tmp_path, "f4")
    assert (tmp_path / "f4.png").exists()


def test_figures_from_a_synthetic_study(synth_results, tmp_path):
    figs, skipped = make_figures(synth_results, tmp_path, bootstrap=10)
    assert {"fig1_scores_by_size", "fig3_delta_vs_top_k", "fig4_delta_vs_size", "fig5_score_vs_tokens",
            "loss_curves", "fit_power_law", "fit_chinchilla"} <= set(figs)
    assert "top_p" in skipped["fig2_delta_vs_top_p"]  # the study never varies p
    kept_axis = figs["fig3_delta_vs_top_k"].axes[1]  # from the logits run's kept_stats rows
    assert kept_axis.get_ylabel() == "kept logits per token"
    assert [list(line.get_ydata()) for line in kept_axis.get_lines()][0] == [1.0, 4.6, 12.5, 21.0]
    assert (tmp_path / "fit_chinchilla.pdf").exists()
    d = F.figure3_data(run_scores(synth_results))
    assert list(d["top_k"]) == [1, 5, 20, 100] and (d["n"] == 3).all()


def test_diverged_fit_curves_draw_without_numpy_warnings():
    """A non-converged fit (e.g. three sizes, one seed) can overflow away from its data: the
    figure leaves those points out and the user sees no RuntimeWarning (the suite run printed them)."""
    import warnings

    from analysis.scaling import ChinchillaFit, PowerLawFit

    N, D, L = np.array([2e4, 2e4, 1.5e5, 1.5e5]), np.array([2e5, 4e5, 2e5, 4e5]), np.array([6.6, 6.1, 6.3, 5.5])
    chin = ChinchillaFit("chinchilla", {"E": 1.0, "A": 1.0, "B": 1.0, "alpha": -80.0, "beta": 0.3},
                         "not_converged: test", 0.0, 4, 1)
    power = PowerLawFit("power_law", {"E": 1.0, "A": 1.0, "alpha": -80.0}, "not_converged: test", 0.0, 4, 1)
    with np.errstate(all="warn"), warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        F.plot_chinchilla_fit(N, D, L, chin)
        F.plot_power_law_fits([("PD", N, L, power)])
