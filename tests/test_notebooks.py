"""Every notebook under notebooks/ runs from top to bottom without an error.

The notebooks carry their own checks (``assert`` in cells), so an exception in any cell fails the
test. A "python3" kernelspec for *this* interpreter is installed into a temporary folder put first
on JUPYTER_PATH, so the notebooks run with the interpreter (and elbokit) under test whatever
kernels the machine has, and CI needs only ``ipykernel`` installed.
"""
import json
import os
import pathlib
import subprocess
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS_DIR = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))


@pytest.fixture(scope="session")
def python3_kernel(tmp_path_factory):
    """Installs a "python3" kernelspec running sys.executable under a temporary prefix and puts
    it first on JUPYTER_PATH for the session."""
    prefix = tmp_path_factory.mktemp("jupyter-prefix")
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--prefix", str(prefix), "--name", "python3",
                    "--display-name", "Python 3 (elbokit tests)"], check=True, capture_output=True, text=True)
    data_dir = prefix / "share" / "jupyter"
    spec = json.loads((data_dir / "kernels" / "python3" / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable, spec["argv"]
    with pytest.MonkeyPatch.context() as mp:
        old = os.environ.get("JUPYTER_PATH")
        mp.setenv("JUPYTER_PATH", str(data_dir) + (os.pathsep + old if old else ""))
        yield "python3"


def test_notebooks_found():
    assert NOTEBOOKS, f"no notebooks in {NOTEBOOKS_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_has_no_outputs(path):
    """Notebooks are committed clean: no outputs, no execution counts."""
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, f"{path.name}: code cells {dirty} have outputs; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, python3_kernel):
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name=python3_kernel, startup_timeout=120,
                                     resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:
        pytest.fail(f"{path.name} failed:\n{e}", pytrace=False)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
