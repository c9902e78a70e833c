"""The notebooks in ``notebooks/`` are executed top to bottom, so they never go stale."""
from __future__ import annotations

import os

import pytest

nbformat = pytest.importorskip("nbformat", reason="notebook tests need nbformat (test extra)")
nbclient = pytest.importorskip("nbclient", reason="notebook tests need nbclient (test extra)")
pytest.importorskip("ipykernel", reason="notebook tests need ipykernel (test extra)")
pytest.importorskip("matplotlib", reason="the notebooks draw PNG figures: matplotlib (plot extra)")

NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks")
NAMES = sorted(f for f in os.listdir(NOTEBOOKS) if f.endswith(".ipynb")) if os.path.isdir(NOTEBOOKS) else []


def test_there_are_four_notebooks():
    assert NAMES == ["01_quickstart_mpdta.ipynb", "02_cluster_walkthrough.ipynb", "03_medical_policy.ipynb",
                     "04_triple_and_continuous.ipynb"]


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name):
    nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit notebooks without outputs"
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": NOTEBOOKS}})
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "Traceback" not in text
    if name.startswith("01"):
        assert "Group-Time Average Treatment Effects" in text and "Randomization inference" in text
        assert "two_stage_did_estimate" in text and "etwfe_estimate" in text  # the robust-estimator section
    if name.startswith("02"):
        assert "dashboard: http" in text and "Placebo adoption dates" in text
    if name.startswith("03"):
        assert "Covariate balance" in text and "true overall ATT" in text
    if name.startswith("04"):
        assert "true ATT(e)" in text and "true ACRT^o" in text and "covers the true ACRT(d)" in text
