"""Orbax checkpoints of a run: keep the last N, resume from the newest one
that reads back intact, refuse one written under a different config.

Each checkpoint holds the whole TrainState (params, optimizer state, RNG key,
step, skip count) as a flat list of arrays, plus a JSON item with the data /
curriculum state, the resolved config, each array's `dtype[shape]` and a
bit-level checksum of every array. The checksum is a wrapping uint32 sum of
the arrays' raw bits: exact and independent of how the arrays are sharded, so
a restore on another mesh checks the same.

On restore, newest first, a checkpoint is one of:

- corrupt: it fails to read, its array metadata disagrees with the record in
  its JSON, or its arrays do not match their checksums. It is moved aside to
  `<step>.corrupt` (`.corrupt.1`, ... if taken), where Orbax no longer lists it
  as a step, kept for inspection, with a warning naming it; the previous one
  is tried. Moved before the run can replay up to that step again: a folder
  left under the step's name would make that step's save fail on every retry.
- written under a different config: its config differs from the current one
  (`config_changes`; ConfigError naming the fields, unless the change is
  allowed), or its arrays' count, shapes or dtypes differ from the live
  state's (ConfigError, allowed or not: such a checkpoint is intact, and a
  run restarted over it would lose it).
- intact: restored.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxrl_lm.cli_args import sigterm_deferred
from jaxrl_lm.config import Config, ConfigError, to_dict

# Config fields that cannot change the train state, ignored when a resumed
# config is compared with a checkpoint's: logging and checkpoint cadence, the
# stop rule of the non-finite guard (skipped steps leave the state as it is,
# whatever the limit), evaluation, and how the processes of a job find each
# other (process_id differs between the processes of one job). A name ending
# in "." covers a whole section.
RESUME_IGNORED = ("train.progress", "train.log_every", "train.ckpt_every",
                  "train.keep_checkpoints", "train.max_skipped_steps", "eval.",
                  "mesh.coordinator_address", "mesh.num_processes", "mesh.process_id")


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


def array_specs(leaves: list) -> list[str]:
    """`dtype[d0,d1]` of each array as stored (a typed PRNG key as its key data)."""
    out = []
    for x in leaves:
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.eval_shape(jax.random.key_data, x)
        out.append(f"{np.dtype(x.dtype).name}[{','.join(map(str, x.shape))}]")
    return out


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):  # an empty one adds no field
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(old: dict, new: dict, *, ignore: tuple[str, ...] = RESUME_IGNORED
                   ) -> list[str]:
    """`["model.param_dtype: 'float32' -> 'bfloat16'", ...]`: the fields of two
    plain configs (`to_dict`) that differ, by dotted name, except `ignore`d
    ones. A field the old config lacks (added to the library since) counts as
    unchanged while the new one holds its default."""
    old, new = json.loads(json.dumps(old)), json.loads(json.dumps(new))
    flat_old, flat_new = _flat(old), _flat(new)
    defaults = _flat(json.loads(json.dumps(to_dict(Config()))))
    absent = object()
    out = []
    for name in sorted(set(flat_old) | set(flat_new)):
        if any(name == i or (i.endswith(".") and name.startswith(i)) for i in ignore):
            continue
        a, b = flat_old.get(name, absent), flat_new.get(name, absent)
        if a is absent and name in defaults and b == defaults[name]:
            continue
        if a != b:
            out.append(f"{name}: {_show(a, absent)} -> {_show(b, absent)}")
    return out


def _show(value: Any, absent: object) -> str:
    return "(absent)" if value is absent else repr(value)


def _worst(code: int) -> int:
    """The largest of every process's `code` (this one's in a one-process job)."""
    if jax.process_count() == 1:
        return code
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.int32(code))))


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
        # handlers named up front, so that a checkpoint's array metadata reads
        # back without restoring the arrays
        self.manager = ocp.CheckpointManager(
            self.directory, options=opts,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler()})

    def save(self, step: int, state: Any, *, data_state: Any = None, config: dict | None = None,
             force: bool = True) -> None:
        leaves = jax.tree.leaves(state)
        meta = {"step": int(step), "data_state": data_state, "config": config,
                "arrays": array_specs(leaves), "checksums": checksums(leaves)}
        # a SIGTERM during the synchronous part of the save would leave a half-made
        # `<step>.orbax-checkpoint-tmp`; it is raised once the save is handed off, and
        # the async part is then finished by the run's cleanup (RunFiles closes us)
        with sigterm_deferred():
            self.manager.save(int(step), force=force, args=ocp.args.Composite(
                state=ocp.args.StandardSave(leaves), meta=ocp.args.JsonSave(meta)))

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def all_steps(self) -> list[int]:
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def read_meta(self, step: int) -> dict:
        """The JSON item of checkpoint `step` (raises if it does not read)."""
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        meta = meta["meta"]
        if not isinstance(meta, dict) or "checksums" not in meta:
            raise ValueError(f"its metadata item is {type(meta).__name__}, not a checkpoint's")
        return dict(meta)

    def _stored_specs(self, step: int) -> list[str]:
        tree = self.manager.item_metadata(step)["state"]
        tree = getattr(tree, "tree", tree)
        if tree is None:
            raise ValueError("its array metadata is missing")
        return array_specs(list(tree))

    def check_config(self, step: int, meta: dict, config: dict | None, *,
                     allow_config_change: bool = False) -> None:
        """ConfigError (or, allowed, a warning) when checkpoint `step`'s config
        differs from `config`; nothing to compare when either is None."""
        if config is None or meta.get("config") is None:
            return
        changes = config_changes(meta["config"], config)
        if not changes:
            return
        where = f"checkpoint {step} in {self.directory}"
        if not allow_config_change:
            raise ConfigError(
                f"--resume: {where} was written under a different config: "
                f"{'; '.join(changes)}. Resume with the checkpoint's config, or pass "
                f"--allow-config-change to continue under the new one")
        warnings.warn(f"resuming {where} under a changed config (--allow-config-change): "
                      f"{'; '.join(changes)}", RuntimeWarning, stacklevel=3)

    def _set_aside(self, step: int, err: Exception) -> None:
        """Move corrupt checkpoint `step` to `<step>.corrupt[.N]` (process 0; all
        processes wait for it), out of Orbax's steps, and warn."""
        src = os.path.join(self.directory, str(step))
        dst, n = f"{src}.corrupt", 0
        while os.path.exists(dst):
            n += 1
            dst = f"{src}.corrupt.{n}"
        moved = os.path.isdir(src)
        if jax.process_index() == 0 and moved:
            os.rename(src, dst)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"jaxrl_lm checkpoint {step} set aside")
        self.manager.reload()
        if jax.process_index() == 0:
            where = f"moved to {dst}" if moved else "no such folder"
            warnings.warn(f"checkpoint {step} in {self.directory} is unreadable or corrupt "
                          f"({type(err).__name__}: {str(err)[:200]}); {where}; "
                          f"falling back to the previous checkpoint", RuntimeWarning,
                          stacklevel=3)

    def _try(self, step: int, like: tuple, config: dict | None, allow_config_change: bool
             ) -> tuple[Exception | None, Any]:
        """(None, (leaves, meta)) for an intact checkpoint, else (the error, None):
        a ConfigError when it was written under a different config, any other
        exception when it is corrupt."""
        abstract, live, names = like
        try:
            meta = self.read_meta(step)
            self.check_config(step, meta, config, allow_config_change=allow_config_change)
            stored = self._stored_specs(step)
            if meta.get("arrays") is not None and list(meta["arrays"]) != stored:
                raise ValueError("its array metadata disagrees with the record in its JSON")
            if stored != live:
                raise ConfigError(self._mismatch(step, stored, live, names))
            out = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract)))
            restored = list(out["state"])
            if checksums(restored) != list(meta["checksums"]):
                raise ValueError("array contents do not match the saved checksums")
        except Exception as e:  # noqa: BLE001 - any failure to read means corrupt
            return e, None
        return None, (restored, meta)

    def restore(self, like: Any, step: int | None = None, *, config: dict | None = None,
                allow_config_change: bool = False) -> tuple[Any, dict] | None:
        """Restore into the structure and shardings of `like` (a live state).

        With `step=None`, tries the newest checkpoint first; a corrupt one is
        moved aside (module doc) and the previous one tried. With `config` (the
        current `to_dict(cfg)`), a checkpoint written under a different config
        raises ConfigError unless `allow_config_change`; arrays whose count,
        shapes or dtypes differ from `like`'s raise ConfigError either way.
        Returns (state, meta) or None when there is nothing intact to restore.
        All processes of a job reach the same verdict: the worst any one of
        them saw (different config, then corrupt, then intact).
        """
        self.wait()
        paths, treedef = jax.tree_util.tree_flatten_with_path(like)
        leaves = [x for _, x in paths]
        names = [jax.tree_util.keystr(p, simple=True, separator=".") for p, _ in paths]
        abstract = [jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding) for x in leaves]
        for s in [step] if step is not None else self.all_steps()[::-1]:
            err, got = self._try(s, (abstract, array_specs(leaves), names), config,
                                 allow_config_change)
            verdict = _worst(0 if err is None else 2 if isinstance(err, ConfigError) else 1)
            if verdict == 2:
                raise err if isinstance(err, ConfigError) else ConfigError(
                    f"--resume: checkpoint {s} in {self.directory} was written under a "
                    f"different config (another process of this job found it)")
            if verdict == 1:
                self._set_aside(s, err or RuntimeError("corrupt on another process"))
                continue
            restored, meta = got
            return jax.tree.unflatten(treedef, restored), meta
        return None

    def _mismatch(self, step: int, stored: list[str], live: list[str], names: list[str]) -> str:
        head = (f"--resume: checkpoint {step} in {self.directory} was written under a "
                f"different config (it is intact, not corrupt): ")
        if len(stored) != len(live):
            why = f"it holds {len(stored)} arrays, this run's state has {len(live)}"
        else:
            diff = [f"{n}: {a} there, {b} here" for n, a, b in zip(names, stored, live) if a != b]
            why = "; ".join(diff[:5]) + (f"; and {len(diff) - 5} more" if len(diff) > 5 else "")
        return head + why + ". Resume with its config, or start a new run in another --out"

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
