"""Small RL experiments on the single-turn `arithmetic` env with the embedded tiny model.

Used by notebooks/opo_vs_grpo.ipynb and notebooks/long_cot.ipynb, and by
tests/test_experiments_arith.py with tiny settings. Everything is built from
the library's pure functions (sampler, advantages, losses, rewards) and optax.

Completions come in two styles, which gives the varied lengths OPO needs:

    direct      ACTION=7
    scratchpad  3+4=4+3=5+2=6+1=7+0 ACTION=7    (move one unit from b to a
                                                  until b is 0: local steps a
                                                  tiny char model can learn)

The supervised warm-up mixes both, so the RL phase can shift the mix. This
module holds the task, the warm-up, the rollout and the eval;
`jaxrl_lm.experiments.arith_rl` the RL step and the gradient-variance probe.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxrl_lm import envs
from jaxrl_lm.envs.text import TextInterface
from jaxrl_lm.models import hf
from jaxrl_lm.models.decoder import Decoder
from jaxrl_lm.models.tokenizer import DEFAULT_DIR
from jaxrl_lm.sampling import sample, token_logprobs

@dataclasses.dataclass(frozen=True)
class Task:
    env: Any  # the arithmetic env
    text: TextInterface  # render/parse tables; max_prompt_len = the kept prompt length
    eos_id: int  # stop token of the completions
    direct_id: int  # first token of a direct answer ("A" of ACTION=)

    @property
    def prompt_len(self) -> int:
        return self.text.max_prompt_len


def make_task(tokenizer, *, digits: int = 1, ops: str = "+", first_line: bool = True) -> Task:
    """The env and its text interface. Every prompt of a fixed-digit env has one
    length; `first_line` cuts it after "Compute a+b.\n" (TextInterface's
    max_prompt_len), dropping the constant instruction line, which a model
    trained from scratch gains nothing from and which would be most of the tokens.
    """
    env = envs.make("arithmetic", digits=digits, ops=ops)
    probe = TextInterface(env, tokenizer, pad_id=tokenizer.pad_token_id)
    state = env.init(jax.random.key(0))
    full = probe.render_text(state)
    keep = full[: full.index("\n") + 1] if first_line else full
    text = TextInterface(env, tokenizer, pad_id=tokenizer.pad_token_id,
                         max_prompt_len=len(tokenizer.encode(keep, add_special_tokens=False)))
    direct_id = tokenizer.encode("A", add_special_tokens=False)[0]
    return Task(env, text, int(tokenizer.eos_token_id), int(direct_id))


def policy(key, *, hidden: int | None = None, layers: int | None = None):
    """(model, tokenizer) of the embedded default, optionally narrower/shallower.

    None keeps the default's size (hidden 128, 4 layers, 1.0M parameters); the
    notebooks default to hidden 64 x 2 layers so that they run in minutes on a CPU.
    Same tokenizer, same code path, 4 query / 2 KV heads, MLP 4 x hidden.
    """
    cfg, tok = hf.load_config(DEFAULT_DIR), hf.load_tokenizer(DEFAULT_DIR)
    if hidden is not None:
        cfg = cfg.replace(hidden_size=hidden, intermediate_size=4 * hidden, head_dim=hidden // 4)
    if layers is not None:
        cfg = cfg.replace(num_layers=layers)
    key = jax.random.key(key) if isinstance(key, int) else key
    return Decoder(cfg, rngs=nnx.Rngs(params=key)), tok


def completion(a: int, b: int, style: str) -> str:
    """The target completion of a + b in `style` ("direct" or "scratchpad")."""
    if style == "direct":
        return f"ACTION={a + b}"
    if style != "scratchpad":
        raise ValueError(f"style={style!r}: must be 'direct' or 'scratchpad'")
    steps = "=".join(f"{a + k}+{b - k}" for k in range(b + 1))
    return f"{steps} ACTION={a + b}"


def sft_data(task: Task, n: int, *, p_direct: float = 0.5, seed: int = 0):
    """n prompt+completion rows (tokens i32[n, T], loss_mask f32[n, T]) of a + b."""
    if task.env.ops != "+":
        raise ValueError(f"sft_data writes addition only; env ops={task.env.ops!r} must be '+'")
    rng = np.random.default_rng(seed)
    states = jax.vmap(task.env.init)(jax.random.split(jax.random.key(seed), n))
    prompts, plens = jax.device_get(jax.vmap(task.text.render)(states))
    a_n, b_n = np.asarray(states.a), np.asarray(states.b)
    encode = functools.cache(lambda a, b, style: task.text.tokenizer.encode(
        completion(a, b, style), add_special_tokens=False) + [task.eos_id])
    rows = []
    for i in range(n):
        style = "direct" if rng.random() < p_direct else "scratchpad"
        rows.append((list(prompts[i, : plens[i]]), encode(int(a_n[i]), int(b_n[i]), style)))
    width = max(len(p) + len(c) for p, c in rows)
    tokens = np.full((n, width), task.text.pad_id, np.int32)
    mask = np.zeros((n, width), np.float32)
    for i, (p, c) in enumerate(rows):
        tokens[i, : len(p) + len(c)] = p + c
        mask[i, len(p): len(p) + len(c)] = 1.0
    return jnp.asarray(tokens), jnp.asarray(mask)


def sft(model, tokens, mask, *, steps: int, batch: int = 32, lr: float = 3e-3, seed: int = 0):
    """Completion-only cross-entropy with Adam; returns (params, losses f32[steps])."""
    graphdef, params = nnx.split(model)
    opt = optax.adam(optax.warmup_cosine_decay_schedule(0.0, lr, min(50, steps // 5 + 1), steps))

    def loss_fn(p, tok, m):
        lp = token_logprobs(nnx.merge(graphdef, p), tok, m)
        return -lp.sum() / m.sum()

    def step(carry, key):
        p, s = carry
        idx = jax.random.randint(key, (batch,), 0, tokens.shape[0])
        loss, g = jax.value_and_grad(loss_fn)(p, tokens[idx], mask[idx])
        upd, s = opt.update(g, s, p)
        return (optax.apply_updates(p, upd), s), loss

    run = jax.jit(lambda p, key: jax.lax.scan(step, (p, opt.init(p)),
                                              jax.random.split(key, steps)))
    (params, _), losses = run(params, jax.random.key(seed))
    return params, losses


# -- one RL batch ----------------------------------------------------------------

def _pack(prompt_bp, plen_b, comp_bn, clen_b):
    """Prompt + completion rows [B, P + N] and the completion mask (right padding)."""
    buf = jnp.concatenate([prompt_bp, jnp.zeros_like(comp_bn)], 1)
    tokens = jax.vmap(lambda r, c, s: jax.lax.dynamic_update_slice(r, c, (s,)))(buf, comp_bn, plen_b)
    t = jnp.arange(tokens.shape[1])[None, :]
    mask = (t >= plen_b[:, None]) & (t < (plen_b + clen_b)[:, None])
    return tokens, mask


def rollout(task: Task, graphdef, params, key, *, num_groups: int, group_size: int,
            max_new_tokens: int, temperature: float = 1.0, states=None) -> dict:
    """Sample G completions for each of `num_groups` problems (or for `states`)."""
    k_task, k_sample = jax.random.split(key)
    if states is None:
        task_keys = jnp.repeat(jax.random.split(k_task, num_groups), group_size, axis=0)
        states = jax.vmap(task.env.init)(task_keys)
    prompt, plen = jax.vmap(task.text.render)(states)
    out = sample((graphdef, params), prompt, plen, k_sample, max_new_tokens=max_new_tokens,
                 temperature=temperature, stop_tokens=(task.eos_id,), pad_id=task.text.pad_id)
    # The stop token is not text: parse what comes before it.
    action, valid = jax.vmap(task.text.parse)(out.tokens, out.lengths - out.done)
    tokens, mask = _pack(prompt, plen, out.tokens, out.lengths)
    return dict(tokens=tokens, mask=mask, completion=out.tokens, length=out.lengths,
                correct=valid & (action == states.answer), valid=valid, done=out.done)


def all_problems(task: Task, repeats: int = 1):
    """Every a + b of a 1-digit env (100 states, each `repeats` times), for evals."""
    if task.env.digits != 1 or task.env.ops != "+":
        raise ValueError(f"all_problems lists 1-digit addition; env has digits={task.env.digits}, "
                         f"ops={task.env.ops!r} (need digits=1, ops='+')")
    a, b = np.divmod(np.repeat(np.arange(100), repeats), 10)
    base = jax.vmap(task.env.init)(jax.random.split(jax.random.key(0), a.size))
    return base.replace(a=jnp.asarray(a, jnp.int32), b=jnp.asarray(b, jnp.int32),
                        op=jnp.zeros(a.size, jnp.int32), answer=jnp.asarray(a + b, jnp.int32))


@functools.partial(jax.jit, static_argnums=(0, 1), static_argnames=("max_new_tokens",))
def evaluate(task: Task, graphdef, params, states, key, *, max_new_tokens: int):
    """Accuracy, mean length, direct-answer fraction of T=1 samples on `states`."""
    b = rollout(task, graphdef, params, key, num_groups=0, group_size=0,
                max_new_tokens=max_new_tokens, states=states)
    return dict(accuracy=b["correct"].mean(), length=b["length"].mean(),
                direct=(b["completion"][:, 0] == task.direct_id).mean())
