"""Fixtures of the analysis tests: a synthetic study in a SQLite file (see synth_db.py)."""
import pytest

from tests.analysis.synth_db import build_synthetic_db


@pytest.fixture(scope="session")
def synth_db(tmp_path_factory) -> str:
    return build_synthetic_db(tmp_path_factory.mktemp("synth") / "synth.db")


@pytest.fixture(scope="session")
def synth_results(synth_db):
    from results import load_results

    return load_results(synth_db, "synth")
