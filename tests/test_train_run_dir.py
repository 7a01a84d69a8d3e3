"""Determinism: a run SIGKILLed at several steps and resumed each time ends
with parameters bit-identical to an uninterrupted run (CPU, 2 devices)."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ENTRY = """
import sys, numpy as np, jax
from jaxrl_lm.train import mesh, sft
from tests.test_train_sft import tiny_cfg, toy_data
from tests.test_train_engine import toy_model
run, resume = sys.argv[1], sys.argv[2] == "1"
res = sft.train_sft(tiny_cfg(mesh=(2, 1, 1), steps=8, ckpt_every=2), run, model=toy_model(),
                 loss_fn=sft.sft_loss, data_fn=toy_data(8), resume=resume)
np.savez(run + "/final.npz", *[np.asarray(x) for x in jax.tree.leaves(res.state)])
print("resumed_from", res.resumed_from)
"""


def launch(run_dir, resume, kill_after=None):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    env.pop("JAXRL_LM_KILL_AFTER_STEP", None)
    if kill_after is not None:
        env["JAXRL_LM_KILL_AFTER_STEP"] = str(kill_after)
    return subprocess.run([sys.executable, "-c", ENTRY, run_dir, "1" if resume else "0"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_sigkill_and_resume_is_bit_identical(tmp_path):
    full = str(tmp_path / "full")
    r = launch(full, False)
    assert r.returncode == 0, r.stderr[-2000:]

    run = str(tmp_path / "killed")
    resumed_from = []
    # killed after step 3 (between checkpoints), then 6 (just as checkpoint 6
    # is being written); each restart resumes from the newest intact one
    for i, kill in enumerate((3, 6)):
        r = launch(run, resume=i > 0, kill_after=kill)
        assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])
        assert not os.path.exists(os.path.join(run, "final.npz"))
    r = launch(run, True)
    assert r.returncode == 0, r.stderr[-2000:]
    resumed_from = int(r.stdout.split("resumed_from")[-1])
    assert resumed_from in (6, 4)  # 6 if its async write finished before the kill

    a, b = np.load(os.path.join(full, "final.npz")), np.load(os.path.join(run, "final.npz"))
    assert len(a.files) == len(b.files) > 5
    for k in a.files:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    steps = [int(line.split('"step": ')[1].split(",")[0])
             for line in open(os.path.join(run, "metrics.jsonl"))]
    assert steps == list(range(1, 9))
