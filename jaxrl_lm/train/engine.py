"""The jitted, sharded train step: exact micro-batch accumulation, optax, a
non-finite guard, and an optional frozen reference policy.

The guard: a step is applied only if the loss, every gradient, the update's
global norm (summed in float32: inf past ~1.8e19, as an lr of 1e30 gives, where
every new parameter would still be finite), every new parameter and every new
optimizer moment are finite. Otherwise the state comes out bit-identical to
the one that went in, except `step` and `skipped` (+1), and the metrics say
`finite` 0.
`SkipStreak` turns a run of such steps into a `NonFiniteError` for the loops.

A loss plugs in as `loss_fn(model, batch) -> ((loss_sum, denom), metrics)`
(or `loss_fn(model, batch, ref_model)` when reference params are given): the
unreduced sum and its denominator (e.g. a token count), so that over k
micro-batches the step minimises exactly

    L = sum_i loss_sum_i / sum_i denom_i,   grad L = sum_i grad(loss_sum_i) / sum_i denom_i

the same value and gradient as one pass over the whole batch (Tunix's
accumulation). Metrics (flat scalars) combine by `combine_metrics`: token
means, `*_max` / `*_min` and `*_tokens` counts come out as one pass's would.
Params are Flax NNX state split off a module; the module is merged back
inside the jitted function (the NNX jit-boundary pattern).

Mixed precision with master weights (`master_dtype="float32"`, by default the
model's `config.master_dtype`): the state's params are a float32 master copy
of the module's (bfloat16) params, and the optimizer state is float32 too.
Each micro-batch's forward sees the master cast to the module's dtypes, and
the gradient is taken through that cast (bfloat16 gradients arrive in float32),
so the optimizer adds every update to the master, however small: updated in
bfloat16, an update below half a bfloat16 spacing of its weight (2**-9 of
it) would round away. Without it, params and moments keep the module's dtypes.

Trainable vs frozen: the state's params are the module's variables that
`trainable` selects (by default `models.lora.trainable_filter`: the LoRA
adapters, and a value head, of a model with adapters; every nnx.Param
otherwise). Gradients, optimizer state, the guard, the master copy and
checkpoints cover those only; the rest of the module (a LoRA model's frozen
base) is placed once, sharded by the same logical-axis rules, and passed to
every step as a constant.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxrl_lm.models import lora
from jaxrl_lm.train import mesh as mesh_lib

LossFn = Callable[..., tuple[tuple[jax.Array, jax.Array], dict[str, jax.Array]]]


class TrainState(NamedTuple):
    step: jax.Array  # i32[]: steps taken, skipped ones included
    params: nnx.State  # the trainable variables (Engine.trainable), e.g. nnx.Param
    opt_state: Any  # optax state over `params`
    rng: jax.Array  # u32[2]: the run's root key (legacy raw key, checkpointable)
    skipped: jax.Array  # i32[]: steps skipped by the non-finite guard


class NonFiniteError(RuntimeError):
    """The training loop stopped: train.max_skipped_steps steps in a row were
    skipped by the non-finite guard (the run cannot recover by itself)."""


class SkipStreak:
    """Counts the optimizer steps skipped in a row by the guard, from the step
    metrics' cumulative `skipped` count and the last step's `finite` flag, and
    raises NonFiniteError when the count reaches `limit`.

    `update(metrics, at=..., steps=k)` follows k steps on one batch (RL's
    epochs), given the last step's metrics. The skipped ones among them are
    the last ones: a skipped step leaves the params, the optimizer state (its
    count, hence its learning rate) and the batch as they were, so the steps
    after it repeat it. One device sync (two scalars) per call.
    """

    def __init__(self, limit: int, skipped: int = 0):
        if limit < 1:
            raise ValueError(f"limit={limit}: must be >= 1")
        self.limit = limit
        self.count = 0  # steps skipped in a row so far
        self._total = int(skipped)  # the state's cumulative `skipped` when last seen

    def update(self, metrics: dict, *, at: str, steps: int = 1) -> None:
        total, finite = jax.device_get((metrics["skipped"], metrics["finite"]))
        new, self._total = int(total) - self._total, int(total)
        if float(finite) == 1.0:
            self.count = 0
        else:
            self.count = self.count + new if new == steps else new
        if self.count >= self.limit:
            raise NonFiniteError(
                f"{at}: {self.count} optimizer steps in a row were skipped "
                f"(train.max_skipped_steps={self.limit}) for a non-finite loss, gradient "
                f"or update. Check optim.lr and optim.eps (too large, NaN), the data and "
                f"rewards (NaN, inf), and loss/grad_norm/update_norm in metrics.jsonl; "
                f"the checkpoints and metrics written so far are kept")


def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]
    return jnp.stack(leaves).all() if leaves else jnp.array(True)


def _global_norm_f32(tree: Any) -> jax.Array:
    """sqrt(sum of squares) in float32 whatever the leaves' dtype: inf once it
    passes float32's range, which the guard counts as a non-finite update."""
    sq = [jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)]
    return jnp.sqrt(sum(sq)) if sq else jnp.zeros((), jnp.float32)


def combine_metrics(metrics_k: dict, weight_k: jax.Array) -> dict:
    """One value per metric from k micro-batches' values [k] and weights [k]:
    names ending in `_max` / `_min` take the max / min over the micro-batches
    of weight > 0, counts named `*_tokens` are summed; the others are a
    weighted mean. With weights = loss tokens, a
    token-mean metric (clip fractions, ratio_mean, the token-mean loss and KL)
    comes out as the whole batch's, however it was cut."""
    used = weight_k > 0
    total = jnp.maximum(weight_k.sum(), 1e-8)

    def one(name, m):  # no micro-batch computed: 0, as the skipped ones report
        m = m.astype(jnp.float32)
        if name.endswith("_max"):
            return jnp.where(used.any(), jnp.max(jnp.where(used, m, -jnp.inf)), 0.0)
        if name.endswith("_min"):
            return jnp.where(used.any(), jnp.min(jnp.where(used, m, jnp.inf)), 0.0)
        if name.endswith("_tokens"):
            return jnp.sum(jnp.where(used, m, 0.0))
        return jnp.tensordot(weight_k, m, 1) / total

    return {name: one(name, m) for name, m in metrics_k.items()}


@dataclasses.dataclass
class Engine:
    """Holds what the step is compiled from; `step` jits once per batch layout.

    Args:
      model: an NNX module whose nnx.Param variables carry logical axis names.
      loss_fn: `(model, batch[, ref_model]) -> ((loss_sum, denom), metrics)`.
      optimizer, schedule: from `make_optimizer`.
      mesh: a ("data", "fsdp", "tensor") mesh from `mesh.make_mesh`.
      micro_batches: k; the batch's rows are cut into k contiguous chunks.
    """

    model: nnx.Module
    loss_fn: LossFn
    optimizer: optax.GradientTransformation
    schedule: optax.Schedule
    mesh: jax.sharding.Mesh
    micro_batches: int = 1
    master_dtype: str | None = None  # "float32": a master copy; None: model.config's
    trainable: Any = None  # nnx filter of the optimized variables; None: lora.trainable_filter

    def __post_init__(self):
        if self.micro_batches < 1:
            raise ValueError(f"micro_batches={self.micro_batches} must be >= 1")
        if self.master_dtype is None:
            self.master_dtype = getattr(getattr(self.model, "config", None), "master_dtype", None)
        if self.master_dtype is not None and not jnp.issubdtype(self.master_dtype, jnp.floating):
            raise ValueError(f"master_dtype={self.master_dtype!r} must be a float dtype or None")
        if self.trainable is None:
            self.trainable = lora.trainable_filter(self.model)
        self.graphdef, params, self.rest = nnx.split(self.model, self.trainable, ...)
        # the dtypes the loss's module sees: the module's own (bfloat16 under a master copy)
        self.param_dtypes = jax.tree.map(lambda x: x.dtype, params)
        params = self.to_master(params)
        self.param_sh = mesh_lib.param_shardings(params, self.mesh)
        self.opt_sh = mesh_lib.opt_state_shardings(self.optimizer, params, self.param_sh, self.mesh)
        rep = mesh_lib.replicated(self.mesh)
        self.state_sh = TrainState(rep, self.param_sh, self.opt_sh, rep, rep)
        # frozen variables (a LoRA model's base): sharded like params, never updated
        self.rest_sh = mesh_lib.param_shardings(self.rest, self.mesh)
        self.rest = mesh_lib.place(self.rest, self.rest_sh)
        self._compiled: dict = {}

    def to_master(self, params: nnx.State) -> nnx.State:
        """Params as the state holds them: float leaves cast to master_dtype (if set)."""
        if self.master_dtype is None:
            return params
        dt = jnp.dtype(self.master_dtype)
        return jax.tree.map(lambda x: x.astype(dt) if jnp.issubdtype(x.dtype, jnp.floating)
                            else x, params)

    def model_params(self, params: nnx.State) -> nnx.State:
        """Params as the module computes with them: the module's own dtypes (a
        master copy rounded to them; the identity without one)."""
        if self.master_dtype is None:
            return params
        return jax.tree.map(lambda x, dt: x.astype(dt), params, self.param_dtypes)

    def init_state(self, seed: int = 0, params: nnx.State | None = None) -> TrainState:
        """Place params (the module's own unless given; in master_dtype if set) and
        a fresh optimizer state."""
        if params is None:
            params = nnx.state(self.model, self.trainable)
        params = mesh_lib.place(self.to_master(params), self.param_sh)
        opt_state = jax.jit(self.optimizer.init, out_shardings=self.opt_sh)(params)
        rep = mesh_lib.replicated(self.mesh)
        return TrainState(jax.device_put(jnp.zeros((), jnp.int32), rep), params, opt_state,
                          jax.device_put(jax.random.PRNGKey(seed), rep),
                          jax.device_put(jnp.zeros((), jnp.int32), rep))

    def place_batch(self, batch: dict) -> dict:
        return mesh_lib.place_batch(batch, self.mesh)

    def step(self, state: TrainState, batch: dict, ref_params: nnx.State | None = None):
        """One optimizer step. `state` is donated: use the returned one."""
        layout = (tuple(sorted((k, v.ndim) for k, v in batch.items())), ref_params is not None)
        if layout not in self._compiled:
            self._compiled[layout] = self._build(batch, ref_params is not None)
        with jax.set_mesh(self.mesh):
            return self._compiled[layout](state, batch, self.rest, ref_params)

    def _build(self, batch: dict, with_ref: bool):
        batch_sh = {k: mesh_lib.batch_sharding(self.mesh, v.ndim) for k, v in batch.items()}
        rep = mesh_lib.replicated(self.mesh)
        ref_sh = self.param_sh if with_ref else None
        metrics_sh = rep
        return jax.jit(self._step_fn,
                       in_shardings=(self.state_sh, batch_sh, self.rest_sh, ref_sh),
                       out_shardings=(self.state_sh, metrics_sh),
                       donate_argnums=(0,))

    def _grads(self, params, batch, rest, ref_params):
        """Summed loss, denominator and gradient over k contiguous micro-batches."""
        k = self.micro_batches

        def split(x):
            mb = x.reshape(k, x.shape[0] // k, *x.shape[1:])
            spec = P(None, ("data", "fsdp"), *([None] * (x.ndim - 1)))
            return jax.lax.with_sharding_constraint(mb, NamedSharding(self.mesh, spec))

        mbs = jax.tree.map(split, batch)
        ref_model = None
        if ref_params is not None:
            ref_model = nnx.merge(self.graphdef, jax.lax.stop_gradient(
                self.model_params(ref_params)), rest)

        def sum_loss(p, mb):  # a master copy: the gradient flows through the cast
            model = nnx.merge(self.graphdef, self.model_params(p), rest)
            args = (model, mb) if ref_model is None else (model, mb, ref_model)
            (loss_sum, denom), metrics = self.loss_fn(*args)
            return loss_sum, (jax.lax.stop_gradient(denom), metrics)

        grad_fn = jax.value_and_grad(sum_loss, has_aux=True)

        def run(mb):
            return grad_fn(params, mb)

        # A micro-batch whose loss_mask is all zero adds exactly 0 to every loss
        # sum, denominator and gradient of jaxrl_lm.losses (masked sums), so it
        # is not computed: RL batches put their loss rows first and the padded
        # tail costs nothing. NaN in a mask counts as nonzero (the guard sees it).
        skip_empty = k > 1 and "loss_mask" in batch
        if skip_empty:
            out_shape = jax.eval_shape(run, jax.tree.map(lambda x: x[0], mbs))
            zero_out = lambda _: jax.tree.map(  # noqa: E731
                lambda s: jnp.zeros(s.shape, s.dtype), out_shape)

        def body(carry, mb):
            g_acc, l_acc, d_acc = carry
            used = jnp.any(mb["loss_mask"] != 0) if skip_empty else jnp.array(True)
            out = jax.lax.cond(used, run, zero_out, mb) if skip_empty else run(mb)
            (loss_sum, (denom, metrics)), g = out
            g_acc = jax.tree.map(jnp.add, g_acc, g)
            # a micro-batch's metrics weigh by its loss tokens (1 without a loss_mask)
            weight = (jnp.sum(mb["loss_mask"], dtype=jnp.float32) if "loss_mask" in mb
                      else jnp.float32(1.0))
            return (g_acc, l_acc + loss_sum, d_acc + denom), (metrics, used * weight)

        zeros = jax.tree.map(jnp.zeros_like, params)
        init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
        (g_sum, l_sum, d_sum), (metrics_k, w) = jax.lax.scan(body, init, mbs)
        return g_sum, l_sum, d_sum, combine_metrics(metrics_k, w)

    def _step_fn(self, state: TrainState, batch, rest, ref_params):
        g_sum, l_sum, d_sum, metrics = self._grads(state.params, batch, rest, ref_params)
        denom = jnp.maximum(d_sum, 1e-8)  # an empty batch gives loss 0, not NaN
        loss = l_sum / denom
        grads = jax.tree.map(lambda g: g / denom, g_sum)
        updates, new_opt = self.optimizer.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        update_norm = _global_norm_f32(updates)
        # The guard (module doc): what the step read and what it would write.
        finite = (jnp.isfinite(loss) & _all_finite(grads) & jnp.isfinite(update_norm)
                  & _all_finite(new_params) & _all_finite(new_opt))
        # A skipped step keeps the old params and moments exactly.
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        params = jax.tree.map(keep, new_params, state.params)
        opt_state = jax.tree.map(keep, new_opt, state.opt_state)
        skipped = state.skipped + (~finite).astype(jnp.int32)
        out = dict(metrics)
        out.update(loss=loss, denom=d_sum, grad_norm=optax.global_norm(grads),
                   update_norm=update_norm,
                   lr=self.schedule(state.step - state.skipped),
                   finite=finite.astype(jnp.float32), skipped=skipped)
        new_state = TrainState(state.step + 1, params, opt_state, state.rng, skipped)
        return new_state, out
