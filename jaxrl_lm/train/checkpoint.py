"""Orbax checkpoints of a run: keep the last N, resume from the newest one
that reads back intact.

Each checkpoint holds the whole TrainState (params, optimizer state, RNG key,
step, skip count) as a flat list of arrays, plus a JSON item with the data /
curriculum state, the resolved config and a bit-level checksum of every array.
The checksum is a wrapping uint32 sum of the arrays' raw bits: exact and
independent of how the arrays are sharded, so a restore on another mesh checks
the same. A checkpoint that fails to read or to match its checksum is skipped
with a warning and the previous one is used.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp


@jax.jit
def _bits_checksums(leaves: list) -> jax.Array:
    """u32[n]: per-array sum (mod 2**32) of its elements' raw bit patterns."""
    out = []
    for x in leaves:
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        bits = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
        if x.dtype == jnp.bool_:
            u = x.astype(jnp.uint32)
        else:
            u = jax.lax.bitcast_convert_type(x, bits).astype(jnp.uint32)
        out.append(u.sum(dtype=jnp.uint32))
    return jnp.stack(out) if out else jnp.zeros((0,), jnp.uint32)


def checksums(tree: Any) -> list[int]:
    return [int(v) for v in np.asarray(_bits_checksums(jax.tree.leaves(tree)))]


class Checkpointer:
    """Save / restore a TrainState with Orbax's CheckpointManager.

    Args:
      directory: where the numbered checkpoints live (created if needed).
      keep: the number of most recent checkpoints kept on disk.
      async_save: write in a background thread (arrays are copied first).
    """

    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
        if keep < 1:
            raise ValueError(f"keep={keep} must be >= 1")
        self.directory = os.path.abspath(directory)
        opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                            enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=opts)

    def save(self, step: int, state: Any, *, data_state: Any = None, config: dict | None = None,
             force: bool = True) -> None:
        leaves = jax.tree.leaves(state)
        meta = {"step": int(step), "data_state": data_state, "config": config,
                "checksums": checksums(leaves)}
        self.manager.save(int(step), force=force, args=ocp.args.Composite(
            state=ocp.args.StandardSave(leaves), meta=ocp.args.JsonSave(meta)))

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def all_steps(self) -> list[int]:
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def restore(self, like: Any, step: int | None = None) -> tuple[Any, dict] | None:
        """Restore into the structure and shardings of `like` (a live state).

        With `step=None`, tries the newest checkpoint first and falls back to
        older ones (with a warning) when one is unreadable or corrupt. Returns
        (state, meta) or None when there is nothing to restore.
        """
        self.wait()
        leaves, treedef = jax.tree.flatten(like)
        abstract = [jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding) for x in leaves]
        steps = [step] if step is not None else self.all_steps()[::-1]
        for s in steps:
            try:
                out = self.manager.restore(s, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
                restored, meta = list(out["state"]), dict(out["meta"])
                if len(restored) != len(abstract):
                    raise ValueError(f"{len(restored)} arrays, expected {len(abstract)}")
                if checksums(restored) != list(meta["checksums"]):
                    raise ValueError("array contents do not match the saved checksums")
            except Exception as e:  # noqa: BLE001 - any failure means: try an older one
                warnings.warn(f"checkpoint {s} in {self.directory} is unreadable or corrupt "
                              f"({type(e).__name__}: {str(e)[:200]}); falling back to the "
                              f"previous checkpoint", RuntimeWarning, stacklevel=2)
                continue
            return jax.tree.unflatten(treedef, restored), meta
        return None

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
