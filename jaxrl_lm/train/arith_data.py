"""Warm-up data for the `arithmetic` env (addition): each problem answered in
one of two styles of very different length,

    direct      ACTION=7
    scratchpad  3+4=4+3=5+2=6+1=7+0 ACTION=7    (move one unit from b to a
                                                  until b is 0: local steps a
                                                  tiny character model can learn)

so that a partly trained policy mixes short and long answers and RL can
shift the mix (what OPO's length-weighted baseline and the Long-CoT length
rewards act on). The prompt is the env's own rendering, as the rollout sees it.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import numpy as np

from jaxrl_lm.envs.text import TextInterface
from jaxrl_lm.models.tokenizer import encode
from jaxrl_lm.rollout import check_prompt_fit
from jaxrl_lm.train.sft import pack

STYLES = ("direct", "scratchpad")


def completion(a: int, b: int, style: str) -> str:
    """The target completion of a + b in `style` (one of STYLES)."""
    if style == "direct":
        return f"ACTION={a + b}"
    if style != "scratchpad":
        raise ValueError(f"style={style!r}: must be one of {', '.join(STYLES)}")
    steps = "=".join(f"{a + k}+{b - k}" for k in range(b + 1))
    return f"{steps} ACTION={a + b}"


def arith_sft_data(text: TextInterface, tokenizer: Any, *, batch_size: int, max_len: int,
                   p_direct: float = 0.5) -> Callable[[int, jax.Array], dict]:
    """A `train_sft` data source: `batch_size` fresh problems of text.env per step,
    each answered directly with probability p_direct, else with the scratchpad,
    then EOS. Pure in the key (resumed runs replay it); a row longer than
    max_len is an error, not cut."""
    env = text.env
    if getattr(env, "name", None) != "arithmetic" or env.ops != "+":
        raise ValueError("arith_sft_data writes addition: the env must be "
                         "arithmetic with ops='+'")
    if not 0.0 <= p_direct <= 1.0:
        raise ValueError(f"p_direct={p_direct!r}: must lie in [0, 1]")
    eos = tokenizer.eos_token_id

    @jax.jit
    def problems(key):
        states = jax.vmap(env.init)(jax.random.split(key, batch_size))
        prompt, plen = jax.vmap(text.render)(states)
        return states.a, states.b, prompt, plen, jax.vmap(text.full_length)(states)

    @functools.cache
    def answer(a: int, b: int, style: str) -> tuple[int, ...]:
        return tuple(encode(tokenizer, completion(a, b, style))) + (eos,)

    def data_fn(step: int, key: jax.Array) -> dict:
        k_problems, k_style = jax.random.split(key)
        a, b, prompt, plen, full = jax.device_get(problems(k_problems))
        check_prompt_fit((full > text.max_prompt_len).sum(), full.max(), text.max_prompt_len,
                         where=f"for arithmetic warm-up step {step}", field="max_prompt_len")
        direct = np.asarray(jax.random.uniform(k_style, (batch_size,))) < p_direct
        rows = []
        for i in range(batch_size):
            style = "direct" if direct[i] else "scratchpad"
            rows.append((prompt[i, : plen[i]].tolist(), list(answer(int(a[i]), int(b[i]), style))))
        longest = max(len(p) + len(c) for p, c in rows)
        if longest > max_len:
            raise ValueError(f"max_len={max_len}: a prompt + completion row needs {longest} "
                             f"tokens")
        return pack(rows, max_len, text.pad_id)

    return data_fn
