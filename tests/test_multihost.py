"""Multi-host: launch/local_multiprocess.sh runs 2 CPU processes (gloo over
loopback, 2 devices each) doing one sharded train step on a (2, 1, 2) mesh;
the loss and the updated params equal the single-process run's."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.test_train_step import engine, host, toy_batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ENTRY = """
import json, jax, numpy as np
from jaxrl_lm.train import loop
assert loop.maybe_initialize_distributed()
from jax.experimental import multihost_utils
from tests.test_train_step import engine, toy_batch
assert jax.process_count() == 2 and jax.device_count() == 4
eng = engine((2, 1, 2), k=2, devices=jax.devices())
state = eng.init_state(0)
for s in range(2):
    state, m = eng.step(state, eng.place_batch(toy_batch(s)))
params = multihost_utils.process_allgather(state.params, tiled=True)
if jax.process_index() == 0:
    print("RESULT " + json.dumps({"loss": float(m["loss"]),
          "params": [np.asarray(x).tolist() for x in jax.tree.leaves(params)]}))
"""


@pytest.mark.multihost
@pytest.mark.slow
def test_two_processes_match_one():
    env = dict(os.environ, PYTHON=sys.executable, LOCAL_DEVICES="2")
    env.pop("XLA_FLAGS", None)
    r = subprocess.run(["bash", os.path.join(ROOT, "launch", "local_multiprocess.sh"), "2",
                        sys.executable, "-c", ENTRY], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    assert len(lines) == 1, r.stdout
    got = json.loads(lines[0][len("RESULT "):])

    eng = engine((2, 1, 2), k=2, devices=jax.devices()[:4])
    state = eng.init_state(0)
    for s in range(2):
        state, m = eng.step(state, eng.place_batch(toy_batch(s)))
    np.testing.assert_allclose(got["loss"], float(m["loss"]), rtol=1e-6)
    want = jax.tree.leaves(host(state.params))
    assert len(want) == len(got["params"])
    for a, b in zip(want, got["params"]):
        np.testing.assert_allclose(np.asarray(b, np.float32), a, rtol=1e-6, atol=1e-7)


def test_launcher_rejects_bad_usage():
    r = subprocess.run(["bash", os.path.join(ROOT, "launch", "local_multiprocess.sh"), "x", "true"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "usage" in r.stderr
