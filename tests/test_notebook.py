"""examples/quickstart.ipynb runs top to bottom in a real Jupyter kernel, on the real data."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quickstart_notebook_runs(cifar10_root: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    import nbclient  # a dev dependency (pyproject.toml): missing, the test fails, not skips
    import nbformat

    # The kernel is a new process: it finds the data through the environment, as a user's would.
    monkeypatch.setenv("CIFARLAB_DATA", str(cifar10_root.resolve()))
    notebook = tmp_path / "quickstart.ipynb"
    shutil.copy(REPO / "examples" / "quickstart.ipynb", notebook)
    nb = nbformat.read(notebook, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error

    code = [c for c in nb.cells if c.cell_type == "code"]
    outputs = [o for c in code for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # samples, confusion matrix, predicted vs true, the photo
    text = "".join(o.get("text", "") for o in outputs)
    assert "test accuracy" in text and "weighted avg" in text and "true class:" in text
    assert (tmp_path / "runs" / "quickstart" / "report.html").is_file()
