"""`pdspace validate --explain`: every study setting, its default and docstring, from core's declarations."""
from __future__ import annotations

from cli.main import main


def test_explain_lists_every_setting_with_its_default_and_docstring(capsys):
    assert main(["validate", "--explain"]) == 0
    out = capsys.readouterr().out
    assert "base.optimizer.eps = 1e-08\n    Adam's epsilon." in out
    assert "base.kd.loss = kld" in out and "teachers.<name>.online.capture = false" in out
    assert "name (required)" in out


def test_validate_without_a_study_says_what_it_needs(capsys):
    assert main(["validate"]) == 2
    assert "validate needs a study file or folder" in capsys.readouterr().err
