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

# (state, key) -> action i32[]; jittable.
Player = Callable[[Any, jax.Array], jax.Array]


def random_legal_player(state: Any, key: jax.Array) -> jax.Array:
    logits = jnp.where(state.legal_action_mask, 0.0, -jnp.inf)
    return jax.random.categorical(key, logits).astype(jnp.int32)


GREEDY_EXPLORE, GREEDY_REPEAT = 0.05, 0.5  # greedy_frequency's defaults


def greedy_frequency_player(state: Any, key: jax.Array, *, explore: float = GREEDY_EXPLORE,
                            repeat: float = GREEDY_REPEAT) -> jax.Array:
    """A bandit player with the failure modes RLFT found in LLMs (needs a state
    with `counts` and `sums`, as envs.bandit has): its first pull is a random
    arm; then, with probability `explore`, a random arm; else with probability
    `repeat` the arm it pulled most (frequency bias), otherwise the tried arm
    with the best mean so far (greedy). Ties go to the lowest index. So it
    tries few arms and sticks with them.
    """
    k_explore, k_kind, k_arm = jax.random.split(key, 3)
    counts = state.counts
    k = counts.shape[-1]
    tried = counts > 0
    means = jnp.where(tried, state.sums / jnp.maximum(counts, 1), -jnp.inf)
    pick = jnp.where(jax.random.uniform(k_kind) < repeat, jnp.argmax(counts), jnp.argmax(means))
    arm = jax.random.randint(k_arm, (), 0, k)
    go_random = ~tried.any() | (jax.random.uniform(k_explore) < explore)
    return jnp.where(go_random, arm, pick).astype(jnp.int32)


def random_legal_probs(state: Any) -> jax.Array:
    """f32[A]: the random legal player's move distribution."""
    legal = state.legal_action_mask.astype(jnp.float32)
    return legal / jnp.maximum(legal.sum(), 1.0)


def greedy_frequency_probs(state: Any, *, explore: float = GREEDY_EXPLORE,
                           repeat: float = GREEDY_REPEAT) -> jax.Array:
    """f32[k]: greedy_frequency_player's move distribution: uniform before any
    pull, else explore / k on every arm plus (1 - explore) split as repeat on
    the most-pulled arm and 1 - repeat on the best tried mean (the same arm may
    get both); ties to the lowest index, as the player breaks them."""
    counts = state.counts
    k = counts.shape[-1]
    tried = counts > 0
    means = jnp.where(tried, state.sums / jnp.maximum(counts, 1), -jnp.inf)
    most = jax.nn.one_hot(jnp.argmax(counts), k)
    best = jax.nn.one_hot(jnp.argmax(means), k)
    p = explore / k + (1.0 - explore) * (repeat * most + (1.0 - repeat) * best)
    return jnp.where(tried.any(), p, 1.0 / k).astype(jnp.float32)


def explore_then_greedy_probs(state: Any) -> jax.Array:
    """f32[k] one-hot: the lowest-index untried arm while any is untried, then
    the tried arm with the best mean so far (ties to the lowest index). Not a
    failure mode: the explore-first, then greedy strategy an RL-tuned bandit
    agent should approach (coverage 1 and frequency bias 0 by construction),
    for checking what the model can learn to read from the prompt."""
    counts = state.counts
    k = counts.shape[-1]
    untried = counts == 0
    means = jnp.where(untried, -jnp.inf, state.sums / jnp.maximum(counts, 1))
    arm = jnp.where(untried.any(), jnp.argmax(untried), jnp.argmax(means))
    return jax.nn.one_hot(arm, k, dtype=jnp.float32)


def explore_then_greedy_player(state: Any, key: jax.Array) -> jax.Array:
    """explore_then_greedy_probs's arm (deterministic; `key` unused)."""
    del key
    return jnp.argmax(explore_then_greedy_probs(state)).astype(jnp.int32)


# players whose move distribution is known (warmup.targets="expected")
PLAYER_PROBS: dict[str, Callable[[Any], jax.Array]] = {
    "random": random_legal_probs, "greedy_frequency": greedy_frequency_probs,
    "explore_then_greedy": explore_then_greedy_probs}


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


# config `warmup.player` -> Player (the names are config.PLAYERS)
PLAYERS: dict[str, Player] = {"random": random_legal_player,
                              "greedy_frequency": greedy_frequency_player,
                              "explore_then_greedy": explore_then_greedy_player}


def get_player(name: str) -> Player:
    if name not in PLAYERS:
        raise ValueError(f"warmup.player={name!r}: unknown player; choose one of "
                         f"{', '.join(PLAYERS)}")
    return PLAYERS[name]


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
        out = {"tokens": tokens.astype(jnp.int32), "loss_mask": in_answer.astype(jnp.float32)}
        if probs is not None:
            # past max_len the move token is cut off: its mask is 0 and so is its loss
            out.update(target_pos=jnp.minimum(plen + move_j, max_len - 1).astype(jnp.int32),
                       target_ids=move_ids, target_probs=probs(state))
        return out

    return one


def scripted_env_data(cfg: Config, tokenizer: Any, *, pad_id: int = 0,
                      player: Player | None = None) -> Callable:
    """A `loop.DataFn` of scripted-player examples for `cfg.env`; the player
    is `player`, else the one `cfg.warmup.player` names."""
    from jaxrl_lm import envs
    from jaxrl_lm.envs.text import TextInterface

    from jaxrl_lm.train.sft import encode

    probs = PLAYER_PROBS[cfg.warmup.player] if cfg.warmup.targets == "expected" else None
    player = player or get_player(cfg.warmup.player)
    env = envs.make(cfg.env.name, **cfg.env.options)
    text = TextInterface(env, tokenizer, max_prompt_len=cfg.env.max_prompt_len, pad_id=pad_id)
    one = make_example_fn(env, text, max_len=cfg.train.max_len, max_moves=cfg.env.max_turns,
                          stop_ids=encode(tokenizer, "\n"), player=player, probs=probs)
    batch_fn = jax.jit(jax.vmap(one))
    b = cfg.train.batch_size

    def data_fn(step: int, key: jax.Array) -> dict:
        return {k: np.asarray(v) for k, v in batch_fn(jax.random.split(key, b)).items()}

    data_fn.text = text  # for inspection / evaluation code
    return data_fn
