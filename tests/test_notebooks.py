"""Every notebooks/*.ipynb runs top to bottom without an error.

One parametrized test over the glob, so a new notebook is tested by adding
the file. The kernel is the interpreter running pytest (a throwaway
`python3` kernelspec pointing at sys.executable), so the notebook sees the
same installed jaxrl_lm and the 8-device CPU setup of conftest.py. Cells run
with the notebook's folder as working directory; the stored file is not
rewritten. A notebook named in TINY runs with those settings put in as a
cell right after its cell tagged "parameters" (papermill's convention): the
stored file keeps its real settings and the outputs of a real run.
"""

import json
import os
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402
from jupyter_client.manager import KernelManager  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 300
# the reasoning notebooks: a narrower model, a few rows and steps, small batches
_TINY_REASONING = ("HIDDEN, LAYERS = 16, 1\nROWS = 60\nSFT_STEPS = 4\nRL_STEPS = 2\n"
                   "NUM_GROUPS, GROUP_SIZE = 2, 4\nEVAL_SAMPLES = 2\n")
# paprika: a run directory of its own, the smallest stages that still give pairs
_TINY_PAPRIKA = ('import tempfile\nOUT = tempfile.mkdtemp(prefix="paprika_")\nROUNDS = 2\n'
                 'OVERRIDES = ["--warmup.steps", "4", "--generate.tasks", "2", '
                 '"--generate.trajectories", "4", "--eval.episodes", "4", '
                 '"--sft.train.steps", "2", "--sft.train.ckpt_every", "2", '
                 '"--rpo.train.steps", "2", "--rpo.train.ckpt_every", "2"]\n')
TINY = {"opo_vs_grpo.ipynb": _TINY_REASONING + "VAR_BATCHES = 1\n",
        "long_cot.ipynb": _TINY_REASONING, "paprika.ipynb": _TINY_PAPRIKA}


def _with_tiny_settings(nb, name: str):
    if name not in TINY:
        return nb
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name}: TINY needs exactly one cell tagged 'parameters'"
    cell = nbformat.v4.new_code_cell("# tests/test_notebooks.py: tiny settings\n" + TINY[name])
    nb.cells.insert(tagged[0] + 1, cell)
    return nb


def _current_python_kernel(tmp_path: Path) -> KernelManager:
    spec_dir = tmp_path / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (pytest interpreter)", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    ksm = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    return KernelManager(kernel_name="python3", kernel_spec_manager=ksm)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path: Path, tmp_path: Path):
    nb = _with_tiny_settings(nbformat.read(path, as_version=4), path.name)
    km = _current_python_kernel(tmp_path)
    client = nbclient.NotebookClient(
        nb, km=km, kernel_name="python3", timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    try:
        client.execute()  # raises CellExecutionError naming the failing cell
    finally:
        if km.has_kernel:  # nbclient leaves a kernel it was handed running
            km.shutdown_kernel(now=True)
    print(f"{path.name}: {time.perf_counter() - start:.1f}s")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors


def test_notebooks_exist():
    assert NOTEBOOKS, "notebooks/ holds no .ipynb"
    assert os.path.exists(ROOT / "notebooks" / "losses.ipynb")
