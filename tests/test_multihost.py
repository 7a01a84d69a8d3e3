"""Multi-host: launch/local_multiprocess.sh runs 2 CPU processes (gloo over
loopback, 2 devices each) doing sharded train steps on a (2, 1, 2) mesh; the
loss and the updated params equal the single-process run's. The same
processes then run the outer loop (logging on process 0 only, checkpoints
written and resumed by both), which must match a single-process run too."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxrl_lm.train import mesh, sft
from jaxrl_lm.train.logging import read_metrics
from tests.test_train_sft import tiny_cfg, toy_data
from tests.test_train_engine import engine, host, toy_batch, toy_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ENTRY = """
import json, sys, jax, numpy as np
from jaxrl_lm.train import mesh, sft
assert mesh.maybe_initialize_distributed()
from jax.experimental import multihost_utils
from tests.test_train_engine import engine, toy_batch
assert jax.process_count() == 2 and jax.device_count() == 4
eng = engine((2, 1, 2), k=2, devices=jax.devices())
state = eng.init_state(0)
for s in range(2):
    state, m = eng.step(state, eng.place_batch(toy_batch(s)))
params = multihost_utils.process_allgather(state.params, tiled=True)
from tests.test_train_sft import tiny_cfg, toy_data
from tests.test_train_engine import toy_model
kw = dict(model=toy_model(), loss_fn=sft.sft_loss, data_fn=toy_data(8))
res = sft.train_sft(tiny_cfg(mesh=(-1, 1, 2), steps=3, ckpt_every=2), sys.argv[1], **kw)
again = sft.train_sft(tiny_cfg(mesh=(-1, 1, 2), steps=3, ckpt_every=2), sys.argv[1], resume=True, **kw)
assert again.resumed_from == 3
loop_params = multihost_utils.process_allgather(again.state.params, tiled=True)
if jax.process_index() == 0:
    print("RESULT " + json.dumps({"loss": float(m["loss"]),
          "params": [np.asarray(x).tolist() for x in jax.tree.leaves(params)],
          "loop_params": [np.asarray(x).tolist() for x in jax.tree.leaves(loop_params)]}))
"""


@pytest.mark.multihost
@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, LOCAL_DEVICES="2")
    env.pop("XLA_FLAGS", None)
    r = subprocess.run(["bash", os.path.join(ROOT, "launch", "local_multiprocess.sh"), "2",
                        sys.executable, "-c", ENTRY, str(tmp_path / "run")], cwd=ROOT, env=env, capture_output=True,
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

    # the outer loop: here on a (4, 1, 2) mesh of this process's 8 devices
    res = sft.train_sft(tiny_cfg(mesh=(-1, 1, 2), steps=3, ckpt_every=2), str(tmp_path / "one"),
                     model=toy_model(), loss_fn=sft.sft_loss, data_fn=toy_data(8))
    want = jax.tree.leaves(host(res.state.params))
    assert len(want) == len(got["loop_params"])
    for a, b in zip(want, got["loop_params"]):
        np.testing.assert_allclose(np.asarray(b, np.float32), a, rtol=1e-5, atol=1e-6)
    assert [r["step"] for r in read_metrics(str(tmp_path / "run"))] == [1, 2, 3]


def test_launcher_rejects_bad_usage():
    r = subprocess.run(["bash", os.path.join(ROOT, "launch", "local_multiprocess.sh"), "x", "true"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "usage" in r.stderr


def fake_tool(tmp_path, name):
    """A stand-in for gcloud/srun on PATH that prints its arguments one a line."""
    path = tmp_path / name
    path.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    path.chmod(0o755)
    return dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}")


def test_tpu_pod_script_runs_train_on_every_worker(tmp_path):
    script = os.path.join(ROOT, "launch", "tpu_pod.sh")
    r = subprocess.run(["bash", script, "only-name"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "usage" in r.stderr
    r = subprocess.run(["bash", script, "my-tpu", "us-central2-b", "--config", "c.yaml", "--out",
                        "runs/a b", "--algo.beta", "0.04"], env=fake_tool(tmp_path, "gcloud"),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    args = r.stdout.splitlines()
    assert args[:6] == ["compute", "tpus", "tpu-vm", "ssh", "my-tpu", "--zone"]
    assert "--worker=all" in args
    cmd = args[args.index("--command") + 1]
    assert cmd == ("cd ~/jaxrl_lm && JAXRL_LM_DISTRIBUTED=1 .venv/bin/jaxrl-lm train "
                   "--config c.yaml --out runs/a\\ b --algo.beta 0.04 ")


def test_slurm_script_resumes_with_distributed_init(tmp_path):
    r = subprocess.run(["bash", os.path.join(ROOT, "launch", "slurm.sbatch"), "--config", "c.yaml",
                        "--out", "runs/x"], env=fake_tool(tmp_path, "srun"), cwd=tmp_path,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["--kill-on-bad-exit=1", "env", "JAXRL_LM_DISTRIBUTED=1",
                                     ".venv/bin/jaxrl-lm", "train", "--config", "c.yaml", "--out",
                                     "runs/x", "--resume"]
