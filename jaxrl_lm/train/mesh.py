"""The device mesh, the one logical-to-mesh rule table, and placement helpers.

Modules name logical axes only (`nnx.with_partitioning(init, ("embed", "mlp"))`);
`RULES` below is the single place that says which mesh axis each one is split
over, MaxText style. A dimension that the mesh axis size does not divide is
kept whole (replicated) instead, so tiny test models work on any mesh.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxrl_lm.config_sections import ConfigError, resolve_mesh_shape

if TYPE_CHECKING:
    from jaxrl_lm.config import Config

AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated)
RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),  # examples: split over every data-like axis
    "length": None,  # sequence positions
    "embed": "fsdp",  # model width: ZeRO-3 style parameter sharding
    "mlp": "tensor",  # feed-forward hidden units: Megatron column/row split
    "heads": "tensor",  # attention query heads
    "kv_heads": "tensor",  # key/value heads (GQA)
    "head_dim": None,  # features inside one head
    "vocab": "tensor",  # embedding / unembedding rows
    "layers": None,  # the stacked-layer axis of scanned blocks
    "norm": None,  # RMSNorm scales
}


def make_mesh(shape: tuple[int, int, int] = (-1, 1, 1), devices=None) -> jax.sharding.Mesh:
    """A ("data", "fsdp", "tensor") mesh; one size may be -1 (the rest).

    Raises ConfigError when the sizes do not multiply to the device count.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(tuple(shape), len(devices))
    return jax.make_mesh(shape, AXES, devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,) * 3)


def logical_to_mesh(names: tuple, shape: tuple[int, ...], mesh: jax.sharding.Mesh) -> P:
    """Map one parameter's logical axis names to a mesh PartitionSpec via RULES."""
    if len(names) != len(shape):
        raise ValueError(f"logical axes {names} do not match the array rank {len(shape)}")
    used: set[str] = set()
    out = []
    for name, dim in zip(names, shape):
        if name is None:
            out.append(None)
            continue
        if name not in RULES:
            raise ValueError(f"logical axis {name!r} has no rule; known: {', '.join(RULES)}")
        target = RULES[name]
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        # A mesh axis may appear once per spec, and must divide the dimension.
        axes = tuple(a for a in axes if a not in used and mesh.shape[a] > 1)
        if axes and dim % math.prod(mesh.shape[a] for a in axes) == 0:
            used.update(axes)
            out.append(axes[0] if len(axes) == 1 else axes)
        else:
            out.append(None)
    return P(*out)


def logical_axes(params: nnx.State) -> Any:
    """Tree of logical-name tuples (a PartitionSpec per Variable) from metadata."""
    return nnx.get_partition_spec(params)


def param_shardings(params: nnx.State, mesh: jax.sharding.Mesh) -> Any:
    """Tree (same structure as `params`) of NamedShardings from the rule table."""
    def one(var):
        if not isinstance(var, nnx.Variable):
            return NamedSharding(mesh, P())
        names = tuple(var.get_metadata().get("out_sharding") or (None,) * var.value.ndim)
        return var.replace(NamedSharding(mesh, logical_to_mesh(names, var.value.shape, mesh)))

    return jax.tree.map(one, params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: jax.sharding.Mesh, ndim: int, lead: int = 0) -> NamedSharding:
    """Rows split over ("data", "fsdp"); `lead` leading unsharded dims first."""
    return NamedSharding(mesh, P(*([None] * lead), ("data", "fsdp"), *([None] * (ndim - lead - 1))))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def opt_state_shardings(optimizer, params, param_sh, mesh) -> Any:
    """Optimizer-state shardings: leaves shaped like their parameter (Adam/Lion
    moments) follow it; the rest (counts, Adafactor's factored rows/columns)
    are replicated."""
    import optax

    rep = replicated(mesh)
    abstract = jax.eval_shape(optimizer.init, params)
    return optax.tree_map_params(
        optimizer, lambda a, s, p: s if a.shape == p.shape else rep,
        abstract, param_sh, params, transform_non_params=lambda _: rep)


def place(tree: Any, shardings: Any) -> Any:
    """device_put a tree (host or device arrays) onto matching shardings."""
    return jax.device_put(tree, shardings)


def place_batch(batch: dict, mesh: jax.sharding.Mesh) -> dict:
    """Place a host batch of [B, ...] arrays, rows split over data x fsdp.

    In a multi-process run every process passes the same global batch (it is
    a pure function of the step and key) and keeps the rows it owns.
    """
    def one(x):
        x = np.asarray(x)
        sh = batch_sharding(mesh, x.ndim)
        if jax.process_count() == 1:
            return jax.device_put(x, sh)
        return jax.make_array_from_callback(x.shape, sh, lambda idx: x[idx])

    return {k: one(v) for k, v in batch.items()}


def check_mesh(mesh: jax.sharding.Mesh, batch_rows: int) -> None:
    rows = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch_rows % rows:
        raise ConfigError(f"{batch_rows} batch rows cannot be split over mesh.data*mesh.fsdp={rows}")


def maybe_initialize_distributed(cfg: Config | None = None) -> bool:
    """Start jax.distributed when the run spans several processes.

    Sources, first match wins: the config (mesh.coordinator_address,
    mesh.num_processes, mesh.process_id); the variables JAXRL_LM_COORDINATOR /
    JAXRL_LM_NUM_PROCESSES / JAXRL_LM_PROCESS_ID (set by
    launch/local_multiprocess.sh); JAXRL_LM_DISTRIBUTED=1, which lets JAX
    detect the cluster itself (TPU pod, SLURM). CPU processes talk over gloo.
    Returns True when it initialized.
    """
    m = cfg.mesh if cfg is not None else None
    env = os.environ
    if m is not None and m.coordinator_address is not None and m.num_processes is not None:
        args = (m.coordinator_address, m.num_processes, m.process_id)
    elif "JAXRL_LM_COORDINATOR" in env:
        args = (env["JAXRL_LM_COORDINATOR"], int(env["JAXRL_LM_NUM_PROCESSES"]),
                int(env["JAXRL_LM_PROCESS_ID"]))
    elif env.get("JAXRL_LM_DISTRIBUTED") == "1":
        args = ()
    else:
        return False
    if env.get("JAX_PLATFORMS", "").startswith("cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(*args)
    return True
