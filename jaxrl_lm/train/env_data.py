"""SFT data from a scripted player: env states rendered as prompts, the
player's move written as the answer `ACTION=<move>` plus a newline.

Each example plays a random number of scripted moves from `env.init`, renders
the state it reached (the Markovian prompt the RL rollout also uses), and asks
the player for one more move. The default player picks a uniformly random
legal move: a policy that knows the format and plays badly, the starting point
the RL stage improves on. Jitted; the batch is a pure function of the key.

With `targets="expected"` each row also carries the player's whole move
distribution p at the answer token where moves differ (`target_pos`,
`target_ids`, `target_probs`); `sft.sft_loss` then scores that token by
-sum_a p(a) log q(id_a), its sampled loss averaged over the player's moves:
the same objective at that token without the noise of one draw per board
(the tokens after it still follow the drawn move).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_lm.config import Config, ConfigError
from jaxrl_lm.rollout import check_prompt_fit
from jaxrl_lm.train.players import PLAYER_PROBS, Player, get_player, random_legal_player


def move_token(text: Any) -> tuple[int, np.ndarray]:
    """(j, ids[A]): every answer `ACTION=<move>` is the same tokens but one, its
    last, at index j, and ids[a] is that token for move a. ConfigError if the
    env's answers do not tokenize that way (then only sampled targets work)."""
    ids, lens = np.asarray(text.answer_ids), np.asarray(text.answer_len)
    n = int(lens[0])
    last = ids[:, n - 1] if n >= 1 else ids[:, :0]
    if (n < 1 or (lens != n).any() or (ids[:, : n - 1] != ids[:1, : n - 1]).any()
            or len(set(last.tolist())) != len(last)):
        raise ConfigError(
            f"warmup.targets='expected': env {type(text.env).__name__}'s answers differ in "
            "more than their last token under this tokenizer; use warmup.targets='sampled'")
    return n - 1, last.astype(np.int32)


def check_expected_targets(cfg: Config, tokenizer: Any) -> None:
    """ConfigError unless cfg.env's answers allow warmup.targets='expected'."""
    from jaxrl_lm import envs
    from jaxrl_lm.envs.text import TextInterface

    env = envs.make(cfg.env.name, **cfg.env.options)
    move_token(TextInterface(env, tokenizer, max_prompt_len=cfg.env.max_prompt_len))


def make_example_fn(env: Any, text: Any, *, max_len: int, max_moves: int, stop_ids: list[int],
                    player: Player = random_legal_player,
                    probs: Callable[[Any], jax.Array] | None = None) -> Callable:
    """key -> {"tokens": i32[max_len], "loss_mask": f32[max_len]} for one example,
    plus "target_pos" i32[], "target_ids" i32[A], "target_probs" f32[A] when
    `probs` (the player's move distribution) is given; see `move_token`."""
    if probs is not None:
        move_j, move_ids = move_token(text)
        move_ids = jnp.asarray(move_ids)
    stop = jnp.asarray(stop_ids, jnp.int32)
    answers = jnp.concatenate([text.answer_ids, jnp.zeros((text.answer_ids.shape[0], stop.size),
                                                          jnp.int32)], axis=1)
    # put the stop ids right after each answer
    rows = jnp.arange(answers.shape[0])[:, None]
    cols = text.answer_len[:, None] + jnp.arange(stop.size)[None, :]
    answers = answers.at[rows, cols].set(jnp.broadcast_to(stop, cols.shape))
    answer_len = text.answer_len + stop.size

    def one(key):
        k_init, k_n, k_moves, k_act = jax.random.split(key, 4)
        start = env.init(k_init)
        n_moves = jax.random.randint(k_n, (), 0, max_moves + 1)

        def move(i, carry):
            state, key = carry
            key, k = jax.random.split(key)
            nxt = env.step(state, player(state, k), k)
            go = (i < n_moves) & ~nxt.done  # never stop on a finished board
            return jax.tree.map(lambda a, b: jnp.where(go, a, b), nxt, state), key

        state, _ = jax.lax.fori_loop(0, max_moves, move, (start, k_moves))
        action = player(state, k_act)
        prompt, plen = text.render(state)
        pos = jnp.arange(max_len)
        a_idx = jnp.clip(pos - plen, 0, answers.shape[1] - 1)
        p_idx = jnp.clip(pos, 0, prompt.shape[0] - 1)
        in_answer = (pos >= plen) & (pos < plen + answer_len[action])
        tokens = jnp.where(pos < plen, prompt[p_idx],
                           jnp.where(in_answer, answers[action, a_idx], text.pad_id))
        out = {"tokens": tokens.astype(jnp.int32), "loss_mask": in_answer.astype(jnp.float32),
               "prompt_full_len": text.full_length(state)}
        if probs is not None:
            # past max_len the move token is cut off: its mask is 0 and so is its loss
            out.update(target_pos=jnp.minimum(plen + move_j, max_len - 1).astype(jnp.int32),
                       target_ids=move_ids, target_probs=probs(state))
        return out

    return one


def scripted_env_data(cfg: Config, tokenizer: Any, *, pad_id: int = 0,
                      player: Player | None = None) -> Callable:
    """A `sft.DataFn` of scripted-player examples for `cfg.env`; the player
    is `player`, else the one `cfg.warmup.player` names."""
    from jaxrl_lm import envs
    from jaxrl_lm.envs.text import TextInterface

    from jaxrl_lm.models.tokenizer import encode

    probs = PLAYER_PROBS[cfg.warmup.player] if cfg.warmup.targets == "expected" else None
    player = player or get_player(cfg.warmup.player)
    env = envs.make(cfg.env.name, **cfg.env.options)
    text = TextInterface(env, tokenizer, max_prompt_len=cfg.env.max_prompt_len, pad_id=pad_id)
    one = make_example_fn(env, text, max_len=cfg.train.max_len, max_moves=cfg.env.max_turns,
                          stop_ids=encode(tokenizer, "\n"), player=player, probs=probs)
    batch_fn = jax.jit(jax.vmap(one))
    b = cfg.train.batch_size

    def data_fn(step: int, key: jax.Array) -> dict:
        out = {k: np.asarray(v) for k, v in batch_fn(jax.random.split(key, b)).items()}
        full = out.pop("prompt_full_len")
        check_prompt_fit((full > text.max_prompt_len).sum(), full.max(), text.max_prompt_len,
                         where=f"for warm-up step {step}")
        return out

    data_fn.text = text  # for inspection / evaluation code
    return data_fn
