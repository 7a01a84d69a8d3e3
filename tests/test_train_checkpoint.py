"""Checkpoints: keep-last-N, exact round trip, corrupt latest -> previous."""

import os

import jax
import numpy as np
import pytest

from jaxrl_lm.train.checkpoint import Checkpointer, checksums
from tests.test_train_engine import engine, host, toy_batch


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Five checkpoints of a real (sharded) training run, keep=3."""
    eng = engine((2, 2, 2))
    state = eng.init_state(seed=3)
    ckpt = Checkpointer(str(tmp_path_factory.mktemp("ckpt")), keep=3)
    snapshots = {}
    for s in range(1, 6):
        state, _ = eng.step(state, eng.place_batch(toy_batch(s)))
        ckpt.save(s, state, data_state={"cursor": s * 10}, config={"train": {"steps": 5}})
        snapshots[s] = host(state)
    ckpt.wait()
    return eng, state, ckpt, snapshots


def assert_same(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        assert np.array_equal(np.asarray(x), np.asarray(y))


def test_keeps_last_n_and_round_trips(saved):
    eng, state, ckpt, snaps = saved
    assert ckpt.all_steps() == [3, 4, 5]
    got, meta = ckpt.restore(state)
    assert meta["step"] == 5 and meta["data_state"] == {"cursor": 50}
    assert meta["config"] == {"train": {"steps": 5}}
    assert_same(got, snaps[5])
    # restored arrays keep the live shardings
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(state)):
        assert x.sharding == y.sharding
    got3, _ = ckpt.restore(state, step=3)
    assert_same(got3, snaps[3])


def test_checksum_is_exact_and_sees_one_bit():
    x = {"a": np.arange(6, dtype=np.float32), "b": np.ones((2,), np.int32)}
    c = checksums(x)
    assert c == [int(np.arange(6, dtype=np.float32).view(np.uint32).sum(dtype=np.uint64) % 2**32), 2]
    y = {"a": x["a"].copy(), "b": x["b"]}
    y["a"].view(np.uint32)[3] ^= 1
    assert checksums(y)[0] != c[0]


def _files(step_dir):
    out = []
    for root, _, names in os.walk(step_dir):
        out += [os.path.join(root, n) for n in names]
    return out


def test_truncated_latest_falls_back_with_warning(saved, tmp_path):
    eng, state, _, snaps = saved
    ckpt = Checkpointer(str(tmp_path / "c"), keep=3, async_save=False)
    for s in (1, 2):
        ckpt.save(s, jax.tree.map(lambda x: x, snaps[s]))
    # a partly written latest checkpoint: its array data files cut in half
    files = [f for f in _files(os.path.join(ckpt.directory, "2", "state"))
             if os.path.basename(os.path.dirname(f)) == "d"]
    assert files
    for victim in files:
        with open(victim, "r+b") as f:
            f.truncate(os.path.getsize(victim) // 2)
    with pytest.warns(RuntimeWarning, match="checkpoint 2 .* falling back"):
        got, meta = ckpt.restore(state)
    assert meta["step"] == 1
    assert_same(got, snaps[1])


def test_deleted_file_in_latest_falls_back(saved, tmp_path):
    eng, state, _, snaps = saved
    ckpt = Checkpointer(str(tmp_path / "c"), keep=3, async_save=False)
    for s in (3, 4):
        ckpt.save(s, snaps[s])
    os.remove(os.path.join(ckpt.directory, "4", "state", "manifest.ocdbt"))
    with pytest.warns(RuntimeWarning, match="checkpoint 4"):
        got, meta = ckpt.restore(state)
    assert meta["step"] == 3
    assert_same(got, snaps[3])


def test_nothing_to_restore(tmp_path, saved):
    _, state, _, _ = saved
    assert Checkpointer(str(tmp_path / "empty")).restore(state) is None
