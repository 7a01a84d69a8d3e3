"""The README's Python example runs as written.

The first ```python block of README.md is extracted and executed in a fresh
namespace; it must finish without error and leave a finite loss and a model
whose parameters the update changed.
"""

import pathlib
import re

import jax
import numpy as np
from flax import nnx

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def first_python_block(text: str) -> str:
    match = re.search(r"^```python\n(.*?)^```", text, re.S | re.M)
    assert match, "README.md has no ```python block"
    return match.group(1)


def test_readme_has_one_example_first():
    code = first_python_block(README.read_text())
    assert "import" in code and "optimizer.update" in code


def test_readme_example_runs():
    code = first_python_block(README.read_text())
    namespace = {"__name__": "readme_example"}
    exec(compile(code, str(README) + ":python", "exec"), namespace)
    assert np.isfinite(float(namespace["loss"]))
    traj = namespace["traj"]
    assert traj.active.shape[1] == 8  # 2 groups x 4 episodes
    # the update moved the parameters
    before = nnx.state(namespace["default_policy"](0)[0], nnx.Param)
    after = nnx.state(namespace["model"], nnx.Param)
    moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), before, after)
    assert any(jax.tree.leaves(moved))
