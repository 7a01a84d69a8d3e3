"""RL on the arithmetic task of `jaxrl_lm.experiments.arith`: one jitted
on-policy step (sample, reward, group advantages, PPO loss, Adam), the Python
loop around it, and the per-sample gradient variance of each baseline.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxrl_lm import advantages as adv_lib
from jaxrl_lm import rewards as rew_lib
from jaxrl_lm.experiments.arith import Task, evaluate, rollout
from jaxrl_lm.experiments.grad_variance import group_variance, oracle_advantages, score_gram
from jaxrl_lm.losses import ppo_policy_loss
from jaxrl_lm.sampling import token_logprobs

BASELINES = ("grpo", "opo", "mean")
REWARDS = ("binary", "cosine")


def repetition(batch: dict, *, ngram: int = 4, penalty: float = -0.05) -> jax.Array:
    """Per-completion sum of `repetition_penalty` over its generated tokens, [B]."""
    comp_mask = jnp.arange(batch["completion"].shape[1])[None, :] < batch["length"][:, None]
    return rew_lib.repetition_penalty(batch["completion"], comp_mask, ngram=ngram,
                                      penalty=penalty).sum(-1)


def shaped_reward(batch: dict, *, reward: str, max_len: int, rep_ngram: int = 4,
                  rep_penalty: float = -0.05) -> jax.Array:
    """binary: 1 if right; cosine: cosine_length_reward + summed repetition_penalty."""
    if reward not in REWARDS:
        raise ValueError(f"reward={reward!r}: must be one of {', '.join(REWARDS)}")
    if reward == "binary":
        return batch["correct"].astype(jnp.float32)
    # A completion that never stopped hit the budget: it gets r_exceed (length = max_len).
    length = jnp.where(batch["done"], batch["length"], max_len)
    return (rew_lib.cosine_length_reward(batch["correct"], length, max_len=max_len)
            + repetition(batch, ngram=rep_ngram, penalty=rep_penalty))


def advantages(rewards, lengths, group_size: int, baseline: str):
    if baseline == "grpo":
        return adv_lib.grpo_advantages(rewards, group_size)
    if baseline == "opo":
        return adv_lib.opo_advantages(rewards, lengths, group_size)
    if baseline == "mean":
        return adv_lib.dr_grpo_advantages(rewards, group_size)
    raise ValueError(f"baseline={baseline!r}: must be one of {', '.join(BASELINES)}")


@dataclasses.dataclass(frozen=True)
class RLConfig:
    num_groups: int = 8  # problems per batch
    group_size: int = 8  # completions per problem
    max_new_tokens: int = 64  # completion budget
    lr: float = 1e-3  # Adam step size
    baseline: str = "grpo"  # "grpo" | "opo" | "mean"
    reward: str = "binary"  # "binary" | "cosine" (+ repetition penalty)
    rep_ngram: int = 4  # n-gram size of the repetition penalty

    def __post_init__(self):
        if self.baseline not in BASELINES:
            raise ValueError(f"RLConfig.baseline={self.baseline!r}: one of {BASELINES}")
        if self.reward not in REWARDS:
            raise ValueError(f"RLConfig.reward={self.reward!r}: one of {REWARDS}")


def make_rl_step(task: Task, graphdef, cfg: RLConfig):
    """(init(params) -> opt_state, step(params, opt_state, key) -> (params, opt_state, metrics)).

    One strictly on-policy update per batch (ratio 1, so PPO's clip is
    inactive), token-mean aggregation for every baseline.
    """
    opt = optax.adam(cfg.lr)
    g, n = cfg.group_size, cfg.max_new_tokens

    @jax.jit
    def step(params, opt_state, key):
        b = rollout(task, graphdef, params, key, num_groups=cfg.num_groups, group_size=g,
                    max_new_tokens=n)
        r = shaped_reward(b, reward=cfg.reward, max_len=n, rep_ngram=cfg.rep_ngram)
        a = advantages(r, b["length"], g, cfg.baseline)

        def loss_fn(p):
            lp = token_logprobs(nnx.merge(graphdef, p), b["tokens"], b["mask"])
            return ppo_policy_loss(lp, jax.lax.stop_gradient(lp), a, b["mask"])[0]

        loss, grads = jax.value_and_grad(loss_fn)(params)
        upd, opt_state = opt.update(grads, opt_state, params)
        ok, n_ok = b["correct"], b["correct"].sum()
        metrics = dict(loss=loss, reward=r.mean(), accuracy=ok.mean(), valid=b["valid"].mean(),
                       length=b["length"].mean(),
                       length_correct=jnp.where(ok, b["length"], 0).sum() / jnp.maximum(n_ok, 1),
                       length_wrong=jnp.where(ok, 0, b["length"]).sum() / jnp.maximum(ok.size - n_ok, 1),
                       repetition=repetition(b, ngram=cfg.rep_ngram).mean(),
                       direct=(b["completion"][:, 0] == task.direct_id).mean())
        return optax.apply_updates(params, upd), opt_state, metrics

    return opt.init, step


def train_rl(task: Task, graphdef, params, cfg: RLConfig, *, steps: int, seed: int = 0,
             eval_states=None, eval_every: int = 10):
    """RL from `params`; returns (params, history of per-step batch metrics and evals)."""
    init, step = make_rl_step(task, graphdef, cfg)
    opt_state, hist, evals = init(params), [], []
    key = jax.random.key(seed)
    for i in range(steps + 1):
        if eval_states is not None and (i % eval_every == 0 or i == steps):
            ev = evaluate(task, graphdef, params, eval_states, jax.random.key(10_000 + i),
                          max_new_tokens=cfg.max_new_tokens)
            evals.append({"step": i, **jax.device_get(ev)})
        if i == steps:
            break
        params, opt_state, m = step(params, opt_state, jax.random.fold_in(key, i))
        hist.append(jax.device_get(m))
    history = {k: np.array([h[k] for h in hist]) for k in hist[0]} if hist else {}
    history["eval"] = {k: np.array([e[k] for e in evals]) for k in evals[0]} if evals else {}
    return params, history


def variance_probe(task: Task, graphdef, params, cfg: RLConfig, *, batches: int, seed: int = 0):
    """Sample `batches` fresh batches from `params` and score every baseline on the same ones.

    Returns a dict of stacked arrays: V_<name>, M_<name> [batches, groups] for
    name in grpo, opo, mean, oracle (see grad_variance), and per sample
    sq_norm = ||s_i||^2, length, reward [batches, B].
    """
    key = jax.random.key(seed)
    runs = [jax.device_get(_probe_batch(task, graphdef, params, cfg, jax.random.fold_in(key, i)))
            for i in range(batches)]
    return {k: np.stack([r[k] for r in runs]) for k in runs[0]}


@functools.partial(jax.jit, static_argnums=(0, 1, 3))
def _probe_batch(task: Task, graphdef, params, cfg: RLConfig, key):
    g = cfg.group_size

    def logp_fn(p, x):
        tok, m = x
        return token_logprobs(nnx.merge(graphdef, p), tok[None], m[None]).sum()

    b = rollout(task, graphdef, params, key, num_groups=cfg.num_groups, group_size=g,
                max_new_tokens=cfg.max_new_tokens)
    r = shaped_reward(b, reward=cfg.reward, max_len=cfg.max_new_tokens, rep_ngram=cfg.rep_ngram)
    gram = score_gram(logp_fn, params, (b["tokens"], b["mask"]), g)
    out = dict(sq_norm=jnp.diagonal(gram, axis1=1, axis2=2).reshape(-1), length=b["length"],
               reward=r)
    for name in BASELINES + ("oracle",):
        a = oracle_advantages(r, gram) if name == "oracle" else advantages(r, b["length"], g, name)
        out[f"V_{name}"], out[f"M_{name}"] = group_variance(gram, a)
    return out
