"""Checkpoints: keep-last-N, exact round trip; a corrupt latest (each kind of
damage) is moved aside and the previous one used; a checkpoint written under
a different config (its recorded config, or its arrays' dtypes) is refused."""

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_lm.config import (Config, ConfigError, EnvSection, EvalSection, OptimSection,
                             TrainSection, to_dict)
from jaxrl_lm.train.checkpoint import Checkpointer, checksums, config_changes
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


CORRUPTIONS = ("truncated", "deleted", "garbage", "flipped", "emptied")


def corrupt(step_dir, kind):
    """Damage one checkpoint folder: every array data file cut in half, filled
    with random bytes or with one byte flipped; the OCDBT root manifest
    deleted; or the folder emptied (a step whose write never started)."""
    if kind == "deleted":
        os.remove(os.path.join(step_dir, "state", "manifest.ocdbt"))
        return
    if kind == "emptied":
        shutil.rmtree(step_dir)
        os.mkdir(step_dir)
        return
    files = [os.path.join(root, n) for root, _, names in os.walk(os.path.join(step_dir, "state"))
             for n in names if os.path.basename(root) == "d"]
    assert files
    for path in files:
        with open(path, "rb") as f:
            data = bytearray(f.read())
        if kind == "truncated":
            data = data[: len(data) // 2]
        elif kind == "garbage":
            data = bytearray(np.random.default_rng(0).bytes(len(data)))
        else:
            assert kind == "flipped"
            data[len(data) // 2] ^= 0xFF
        with open(path, "wb") as f:
            f.write(data)


# tensorstore reports its failed reads of the damaged files once more, from a
# closed event loop, after orbax has raised them
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_corrupt_latest_is_moved_aside_and_its_step_saved_again(saved, tmp_path, kind):
    eng, state, _, snaps = saved
    ckpt = Checkpointer(str(tmp_path / "c"), keep=3, async_save=False)
    for s in (1, 2):
        ckpt.save(s, snaps[s])
    corrupt(os.path.join(ckpt.directory, "2"), kind)
    with pytest.warns(RuntimeWarning, match=r"checkpoint 2 .* corrupt .*moved to .*/2\.corrupt; "
                                            r"falling back"):
        got, meta = ckpt.restore(state)
    assert meta["step"] == 1
    assert_same(got, snaps[1])
    assert ckpt.all_steps() == [1]
    assert sorted(os.listdir(ckpt.directory)) == ["1", "2.corrupt"]
    # the replay reaches step 2 again: its save must not find the folder taken
    ckpt.save(2, snaps[2])
    got, meta = ckpt.restore(state)
    assert meta["step"] == 2
    assert_same(got, snaps[2])
    ckpt.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_corrupt_twice_keeps_both(saved, tmp_path):
    _, state, _, snaps = saved
    ckpt = Checkpointer(str(tmp_path / "c"), keep=3, async_save=False)
    ckpt.save(1, snaps[1])
    for n in range(2):
        ckpt.save(2, snaps[2])
        corrupt(os.path.join(ckpt.directory, "2"), "truncated")
        with pytest.warns(RuntimeWarning, match="moved to"):
            assert ckpt.restore(state)[1]["step"] == 1
    assert sorted(os.listdir(ckpt.directory)) == ["1", "2.corrupt", "2.corrupt.1"]


def test_checksum_mismatch_is_corrupt(saved, tmp_path):
    """Arrays that read back fine but do not sum to the recorded checksums."""
    _, state, _, snaps = saved
    ckpt = Checkpointer(str(tmp_path / "c"), keep=3, async_save=False)
    for s in (1, 2):
        ckpt.save(s, snaps[s])
    path = os.path.join(ckpt.directory, "2", "meta", "metadata")
    with open(path) as f:
        meta = json.load(f)
    meta["checksums"][0] = (meta["checksums"][0] + 1) % 2**32
    with open(path, "w") as f:
        json.dump(meta, f)
    with pytest.warns(RuntimeWarning, match="checkpoint 2 .*do not match the saved checksums"):
        assert ckpt.restore(state)[1]["step"] == 1


def test_config_change_is_refused_or_allowed(saved, tmp_path):
    _, state, _, snaps = saved
    old = to_dict(Config())
    new = to_dict(dataclasses.replace(Config(), optim=OptimSection(lr=0.5)))
    ckpt = Checkpointer(str(tmp_path / "c"), keep=3, async_save=False)
    ckpt.save(1, snaps[1], config=old)
    with pytest.raises(ConfigError, match=r"checkpoint 1 .* different config: optim\.lr: "
                                          r"0\.001 -> 0\.5\. .*--allow-config-change"):
        ckpt.restore(state, config=new)
    assert ckpt.all_steps() == [1]  # refused, not treated as corrupt
    with pytest.warns(RuntimeWarning, match=r"changed config .*optim\.lr: 0\.001 -> 0\.5"):
        got, meta = ckpt.restore(state, config=new, allow_config_change=True)
    assert_same(got, snaps[1])
    assert ckpt.restore(state, config=old)[1]["step"] == 1  # the same config: no warning


def test_other_dtypes_are_a_different_config_not_corruption(saved, tmp_path):
    """The live state in bfloat16, the checkpoint in float32: an error naming
    the arrays, allowed or not, and the checkpoint stays where it is."""
    _, state, _, snaps = saved
    ckpt = Checkpointer(str(tmp_path / "c"), keep=3, async_save=False)
    ckpt.save(1, snaps[1])
    like = state._replace(params=jax.tree.map(lambda x: x.astype(jnp.bfloat16), state.params))
    for allow in (False, True):
        with pytest.raises(ConfigError, match=r"written under a different config \(it is "
                                              r"intact, not corrupt\): params\.b_in\.value: "
                                              r"float32\[16\] there, bfloat16\[16\] here; "
                                              r"params\.embed\.value: float32\[16,8\] there"):
            ckpt.restore(like, allow_config_change=allow)
    assert ckpt.all_steps() == [1]
    assert os.listdir(ckpt.directory) == ["1"]


def test_config_changes_names_fields_and_skips_what_cannot_change_the_state():
    old = to_dict(Config())
    new = to_dict(dataclasses.replace(
        Config(), train=TrainSection(log_every=5, progress=False, ckpt_every=7, steps=20),
        eval=EvalSection(episodes=3), env=EnvSection(options={"opponent": "minimax"})))
    assert config_changes(old, new) == ["env.options.opponent: (absent) -> 'minimax'",
                                        "train.steps: 100 -> 20"]
    # a field added to the library since the checkpoint: unchanged at its default
    del old["train"]["max_len"]
    assert config_changes(old, to_dict(Config())) == []
    assert config_changes(old, to_dict(dataclasses.replace(
        Config(), train=TrainSection(max_len=9)))) == ["train.max_len: (absent) -> 9"]


def test_nothing_to_restore(tmp_path, saved):
    _, state, _, _ = saved
    assert Checkpointer(str(tmp_path / "empty")).restore(state) is None
