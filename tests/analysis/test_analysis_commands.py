"""analysis.commands: import, fit, report; one clear ValueError per bad input."""
import pytest

from analysis.commands import fit_command, import_command, report_command
from analysis.report import write_report
from results import load_results

HEADER = "table,run,student,teacher,tokens_b,step,factor,value,benchmark,score,note\n"


def test_import_is_idempotent_and_maps_rows(tmp_path):
    csv = tmp_path / "ext.csv"
    csv.write_text(HEADER
                   + "1,lm,1B,none,10,,method,lm,a,40.0,\n1,lm,1B,none,10,,method,lm,b,50.0,\n"
                   + "1,pd,1B,T,10,,method,pd,a,44.0,x\n1,pd,1B,T,10,,method,pd,b,55.0,x\n"
                   + "2,lm,1B,none,10,500,checkpoint_step,500,a,30.0,\n2,lm,1B,none,10,1000,checkpoint_step,1000,a,41.0,\n")
    url = f"sqlite:///{tmp_path}/x.db"
    assert import_command(url, csv, "ext") == 4
    assert import_command(url, csv, "ext") == 4
    r = load_results(url, "ext")
    assert len(r.runs) == 4 and (r.runs["kind"] == "external").all()
    assert len(r.evals) == 6 and set(r.evals["metric"]) == {"acc"}
    pd_run = r.runs[r.runs["run"] == "pd"].iloc[0]
    lm_run = r.runs[(r.runs["run"] == "lm") & (r.runs["table"] == "1")].iloc[0]
    assert pd_run["baseline_hash"] == lm_run["config_hash"] and pd_run["note"] == "x"
    steps = r.evals[r.evals["run_id"].isin(r.runs.loc[r.runs["table"] == "2", "run_id"])]
    assert sorted(steps["step"]) == [500, 1000] and sorted(steps["tokens"]) == [5e9, 10e9]


@pytest.mark.parametrize("text,match", [
    ("table,run,student\n1,lm,1B\n", "missing the column.*teacher, tokens_b, factor, value, benchmark, score"),
    (HEADER + "1,lm,1B,none,10,,method,lm,a,high,\n", "'score' must be numeric.*line.* 2"),
    (HEADER, "has no rows"),
])
def test_import_rejects_bad_files(tmp_path, text, match):
    csv = tmp_path / "bad.csv"
    csv.write_text(text)
    with pytest.raises(ValueError, match=match):
        import_command(f"sqlite:///{tmp_path}/x.db", csv, "s")


def test_import_missing_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        import_command(f"sqlite:///{tmp_path}/x.db", tmp_path / "nope.csv", "s")


def test_fit_command_prints_params_with_intervals(synth_db):
    text = fit_command(synth_db, "synth", "power", bootstrap=20)
    assert "LM-only" in text and "PD (t8m)" in text and "alpha" in text and "97.5%" in text
    assert "converged" in text
    with pytest.raises(ValueError, match="unknown law"):
        fit_command(synth_db, "synth", "cubic")
    with pytest.raises(ValueError, match="no val_loss"):
        fit_command(synth_db, "empty", "power")


def test_fit_command_distillation_uses_teacher_loss(synth_db):
    text = fit_command(synth_db, "synth", "distillation", bootstrap=0)
    assert "supervised" in text and "distilled" in text and "c0" in text


def test_report_is_self_contained_html(synth_db, tmp_path):
    out = write_report(synth_db, "synth", tmp_path / "r" / "synth.html", bootstrap=10)
    html = out.read_text()
    assert html.startswith("<!DOCTYPE html>") and "</html>" in html
    assert '<img alt="fig4_delta_vs_size" src="data:image/png;base64,' in html
    assert html.count("data:image/png;base64,") >= 6
    assert "Δ (%)" in html and "paired Δ (%)" in html and "Δ loss (%)" in html
    assert "Chinchilla" in html and "bootstrap" in html
    assert "http://" not in html and "https://" not in html and "<script" not in html


def test_report_command_to_a_folder(synth_db, tmp_path):
    path = report_command(synth_db, "empty", tmp_path)
    assert path == tmp_path / "empty.html" and "no runs yet" in path.read_text()


def test_import_into_an_existing_database_keeps_its_studies(tmp_path):
    from tests.analysis.synth_db import build_synthetic_db

    url = build_synthetic_db(tmp_path / "s.db")  # tables made by create_all, no Alembic version
    csv = tmp_path / "ext.csv"
    csv.write_text(HEADER + "1,lm,1B,none,10,,method,lm,a,40.0,\n")
    assert import_command(url, csv, "ext") == 1
    assert len(load_results(url, "ext").runs) == 1 and len(load_results(url, "synth").runs) > 1
