"""notebooks/quickstart.ipynb runs top to bottom (train, sweep, prune, save, reload, sparse fine-tune).

Executed with nbclient in a fresh kernel that runs *this* interpreter (a kernelspec written to a temp dir,
so a python3 kernelspec installed elsewhere on the machine cannot take its place), from a temporary
working directory. Any cell error — the notebook asserts its own checks — fails the test.
"""

import json
import os
import sys

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "quickstart.ipynb")
KERNEL = "cram-hf-test-python"


def kernel_manager(directory) -> KernelManager:
    spec_dir = os.path.join(directory, KERNEL)
    os.makedirs(spec_dir)
    with open(os.path.join(spec_dir, "kernel.json"), "w") as f:
        json.dump(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "cram_hf tests",
                "language": "python",
            },
            f,
        )
    return KernelManager(kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=[directory]))


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert any(cell.cell_type == "code" for cell in nb.cells)
    workdir = tmp_path / "work"
    workdir.mkdir()
    # The kernel inherits the environment: offline, and its temp files under tmp_path.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    client = NotebookClient(
        nb,
        km=kernel_manager(str(tmp_path / "kernels")),
        timeout=600,
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell

    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    text = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    assert "target sparsity before 70.00%, after fine-tuning 70.00%" in text
    assert any("image/png" in out.get("data", {}) for out in outputs)  # the sweep plot
