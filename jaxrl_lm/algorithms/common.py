"""What every RL algorithm shares: turn rows for training, the clipped policy
loss with an optional KL to the frozen reference and an optional value loss.

An algorithm file only says how to turn a `Trajectory` into per-turn
advantages `A[T, B]` (and, for PPO, value targets). `make_batch` then packs
each turn into one training row (prompt + completion, `rollout.pack_turns`)
and gives every generated token of the turn the turn's advantage; `make_loss`
builds the `loss_fn(model, batch[, ref_model]) -> ((loss_sum, denom), metrics)`
that the train step accumulates exactly over micro-batches:

    L = clipped_surrogate(ratio, A) + beta * KL(pi || pi_ref) + vf_coef * value_loss

all three aggregated with `algo.loss_agg` over the same token mask, so their
sums share one denominator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_lm import advantages as adv_lib
from jaxrl_lm import losses, sampling
from jaxrl_lm.rollout import Trajectory, pack_turns, turn_faults

if TYPE_CHECKING:
    from jaxrl_lm.config_sections import AlgoSection


# algo.kl_in: the KL to the reference as a loss term (make_loss) or as a
# per-turn reward penalty before the advantages (kl_reward)
KL_IN = ("loss", "reward")


class Advantages(NamedTuple):
    """Per-turn training signal, leading [T, B] like the trajectory."""

    adv: jax.Array  # f32[T, B] advantage of every token of the turn's completion
    keep: jax.Array  # bool[T, B] turns that carry loss (active, not filtered out)
    returns: jax.Array | None = None  # f32[T, B] value targets (ppo)
    old_values: jax.Array | None = None  # f32[T, B] values under the sampling params (ppo)


def episode_lengths(traj: Trajectory) -> jax.Array:
    """i32[B]: tokens generated over each episode's active turns."""
    return (traj.completion_len * traj.active).sum(0)


def broadcast_episode(adv_b: jax.Array, traj: Trajectory) -> jax.Array:
    """An episode-level advantage [B] given to each of its turns [T, B]."""
    return jnp.broadcast_to(adv_b[None, :], traj.active.shape).astype(jnp.float32)


def turn_credit(traj: Trajectory, sig: Advantages, weight: float) -> Advantages:
    """Add turn-level credit for the turn's own faults (algo.turn_weight).

    An episode-level advantage gives every turn of an episode the same signal,
    so one illegal move among four good ones is punished no more than its
    neighbours. Here each kept turn also gets r_t = -1 if its answer did not
    parse or named an illegal action, else 0, whitened over the batch's kept
    turns, times `weight`:

        A[t, i] <- A[t, i] + weight * (r[t, i] - mean r) / std r

    (the turn-level advantage of multi-turn GRPO, Zeng et al. 2025, with a
    batch rather than a per-turn-index group baseline). A batch without faults,
    or with only faults, adds nothing.
    """
    invalid, illegal = turn_faults(traj)
    r = -(invalid | illegal).astype(jnp.float32)
    turn_adv = adv_lib.whiten(r, sig.keep)
    return sig._replace(adv=sig.adv + weight * turn_adv)


def value_positions(traj: Trajectory) -> jax.Array:
    """i32[T*B]: index of each packed row's last prompt token (where V(s) is read)."""
    return jnp.maximum(traj.prompt_len.reshape(-1) - 1, 0).astype(jnp.int32)


def make_batch(traj: Trajectory, sig: Advantages, *, pad_id: int,
               kept_first: bool = True) -> dict[str, np.ndarray]:
    """Training rows [M = T*B, P+N] from a trajectory and its advantages.

    Row t*B + b is turn t of episode b; with `kept_first` the rows that carry
    loss are moved ahead of the rest (a stable sort, so they keep that order).
    """
    rows = pack_turns(traj, pad_id)
    keep = sig.keep.reshape(-1, 1).astype(jnp.float32)
    batch = dict(tokens=rows.tokens, positions=rows.positions, loss_mask=rows.loss_mask * keep,
                 old_logp=rows.old_logp * keep, adv=sig.adv.reshape(-1).astype(jnp.float32))
    if sig.returns is not None:
        batch.update(returns=sig.returns.reshape(-1).astype(jnp.float32),
                     old_values=sig.old_values.reshape(-1).astype(jnp.float32),
                     value_pos=value_positions(traj))
    # Rows carrying loss first (stable, so turn-major order is kept among them):
    # the losses are sums over rows, so the order changes nothing but lets the
    # train step skip the all-padding micro-batches at the tail.
    if not kept_first:
        return batch
    order = jnp.argsort(batch["loss_mask"].sum(-1) == 0, stable=True)
    return {k: v[order] for k, v in batch.items()}


def turn_values(model, traj: Trajectory) -> jax.Array:
    """f32[T, B]: the value head read at each turn's last prompt token."""
    t, b, p = traj.prompt.shape
    tokens = traj.prompt.reshape(t * b, p)
    pos = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), tokens.shape)
    v = model.values(tokens, pos)
    return jnp.take_along_axis(v, value_positions(traj)[:, None], 1).reshape(t, b)


def make_loss(algo: AlgoSection, *, max_len: int, temperature: float = 1.0):
    """`loss_fn(model, batch, ref_model=None)` for the rows of `make_batch`.

    max_len: the row length, the constant of the Dr. GRPO aggregation.
    temperature: the rollout's sampling temperature (log-probs are of softmax(z / T)).
    """
    agg = algo.loss_agg
    norm = max_len if agg == "seq-mean-token-sum-norm" else None
    kl_in_loss = algo.beta > 0 and algo.kl_in == "loss"

    def loss_fn(model, batch, ref_model=None):
        tokens, mask, pos = batch["tokens"], batch["loss_mask"], batch["positions"]
        h = model.hidden_states(tokens, pos)
        logp = sampling.token_logprobs_from_hidden(h, model.unembedding(), tokens, mask,
                                                   temperature=temperature,
                                                   softcap=model.config.final_softcap)
        (loss_sum, denom), metrics = losses.ppo_policy_loss(
            logp, batch["old_logp"], batch["adv"], mask, clip_low=algo.clip_low,
            clip_high=algo.clip_high, dual_clip=algo.dual_clip, ratio_level=algo.ratio_level,
            agg=agg, max_len=norm, return_sum=True)
        metrics = dict(metrics, policy_loss=loss_sum / jnp.maximum(denom, 1e-8))
        if kl_in_loss:
            if "ref_logp" in batch:  # precomputed once per batch (`ref_logprobs`)
                ref_logp = jax.lax.stop_gradient(batch["ref_logp"])
            elif ref_model is None:
                raise ValueError("algo.beta > 0 with kl_in='loss' needs reference params "
                                 "or a batch['ref_logp']")
            else:
                ref_logp = jax.lax.stop_gradient(sampling.token_logprobs(
                    ref_model, tokens, mask, temperature=temperature, positions_bt=pos))
            kl = losses.kl_penalty(logp, ref_logp, algo.kl_kind, mask=mask)
            kl_sum, _ = losses.aggregate(kl, mask, agg, max_len=norm, return_sum=True)
            loss_sum = loss_sum + algo.beta * kl_sum
            metrics["kl"] = kl_sum / jnp.maximum(denom, 1e-8)
        if "returns" in batch:
            v_row = jnp.take_along_axis(model.value_from_hidden(h), batch["value_pos"][:, None],
                                        1)[:, 0]
            full = lambda x: jnp.broadcast_to(x[:, None], mask.shape)  # noqa: E731
            (v_sum, _), vm = losses.value_loss(full(v_row), full(batch["old_values"]),
                                               full(batch["returns"]), mask, clip=algo.value_clip,
                                               agg=agg, max_len=norm, return_sum=True)
            loss_sum = loss_sum + algo.vf_coef * v_sum
            metrics["value_loss"] = v_sum / jnp.maximum(denom, 1e-8)
            metrics.update({f"value_{k}": v for k, v in vm.items()})
        return (loss_sum, denom), metrics

    return loss_fn


def ref_logprobs(ref_model, batch: dict, *, chunks: int, temperature: float = 1.0) -> jax.Array:
    """f32[M, L]: the frozen reference's log-probs of every row of `make_batch`.

    Computed once per batch, so `algo.epochs` updates do not each repeat the
    reference forward pass. Rows go `chunks` at a time through a `lax.map`;
    a chunk with no loss tokens is not computed (zeros: every use is masked),
    which with `kept_first` rows skips the turns never played.
    """
    tokens, mask, pos = batch["tokens"], batch["loss_mask"], batch["positions"]
    m = tokens.shape[0]
    if m % chunks:
        raise ValueError(f"ref_logprobs: {m} rows do not split into {chunks} chunks")
    split = lambda x: x.reshape(chunks, m // chunks, *x.shape[1:])  # noqa: E731

    def one(args):
        t, mk, p = args
        return sampling.token_logprobs(ref_model, t, mk, temperature=temperature,
                                       positions_bt=p)

    def chunk(args):
        return jax.lax.cond(jnp.any(args[1] != 0), one,
                            lambda a: jnp.zeros(a[0].shape, jnp.float32), args)

    out = jax.lax.map(chunk, (split(tokens), split(mask), split(pos)))
    return jax.lax.stop_gradient(out.reshape(m, -1))


def kl_reward(algo: AlgoSection, model, ref_model, traj: Trajectory, *, pad_id: int,
              temperature: float = 1.0) -> jax.Array:
    """f32[T, B]: -beta * (summed per-token KL of each turn's completion), for kl_in='reward'."""
    rows = pack_turns(traj, pad_id)
    lp = sampling.token_logprobs(model, rows.tokens, rows.loss_mask,
                                 temperature=temperature, positions_bt=rows.positions)
    ref = sampling.token_logprobs(ref_model, rows.tokens, rows.loss_mask,
                                  temperature=temperature, positions_bt=rows.positions)
    kl = losses.kl_penalty(lp, ref, algo.kl_kind, mask=rows.loss_mask).sum(-1)
    return -algo.beta * kl.reshape(traj.active.shape)
