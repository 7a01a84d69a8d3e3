"""The jitted rollout: turn bookkeeping, rewards, groups sharing a task, and
training rows whose recomputed log-probs equal the sampler's."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrl_lm import envs
from jaxrl_lm.envs.text import TextInterface
from jaxrl_lm import rollout, sampling
from jaxrl_lm.models import Decoder, ModelConfig
from jaxrl_lm.models.default import default_policy

_, TOK = default_policy(0)


def tiny_model(seed=0):
    cfg = ModelConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=1,
                      num_heads=2, num_kv_heads=1)
    return Decoder(cfg, rngs=nnx.Rngs(seed))


def play(env, *, groups, size, turns, seed=0, new=6, penalty=-5.0):
    text = TextInterface(env, TOK, max_prompt_len=48, pad_id=TOK.pad_token_id)
    fn = rollout.make_rollout(env, text, num_groups=groups, group_size=size, max_turns=turns,
                              max_new_tokens=new, stop_tokens=(4,), invalid_penalty=penalty)
    model = tiny_model(seed)
    g, s = nnx.split(model)
    return model, jax.tree.map(np.asarray, fn(g, s, jax.random.key(seed)))


def test_turn_bookkeeping_and_rewards():
    env = envs.make("tictactoe", prompt="short", illegal="random")
    _, tr = play(env, groups=4, size=2, turns=7)  # 2 turns past the longest game
    active, done = tr.active, tr.done
    assert active[0].all() and not active[5:].any()
    np.testing.assert_array_equal(active[1:], ~done[:-1])
    # a random model rarely writes ACTION=<cell>: invalid turns pay the penalty
    want = np.where(active, tr.env_reward + np.where(tr.valid, 0.0, -5.0), 0.0)
    np.testing.assert_allclose(tr.reward, want)
    np.testing.assert_allclose(rollout.episode_returns(tr), want.sum(0))
    # the move played (parsed or the random legal fallback) is on the next board as X
    for t in range(4):
        for b in range(8):
            if active[t, b] and not done[t, b]:
                assert tr.states.board[t, b, tr.action[t, b]] == 0
                assert tr.states.board[t + 1, b, tr.action[t, b]] == 1
    assert (tr.completion_len[active] >= 1).all() and (tr.completion_len <= 6).all()


def test_groups_share_the_task():
    env = envs.make("bandit", k=4, horizon=3)
    _, tr = play(env, groups=3, size=4, turns=3)
    mu = tr.states.mu[0]  # [B, k]
    for g in range(3):
        np.testing.assert_array_equal(mu[4 * g: 4 * g + 4], np.broadcast_to(mu[4 * g], (4, 4)))
    assert not np.array_equal(mu[0], mu[4])


def test_packed_rows_recompute_sampler_logprobs():
    env = envs.make("tictactoe", prompt="short", illegal="random")
    model, tr = play(env, groups=2, size=2, turns=3, seed=1)
    rows = rollout.pack_turns(jax.tree.map(jnp.asarray, tr), TOK.pad_token_id)
    lp = sampling.token_logprobs(model, rows.tokens, rows.loss_mask, positions_bt=rows.positions)
    assert float(rows.loss_mask.sum()) == float((tr.completion_len * tr.active).sum())
    np.testing.assert_allclose(lp, rows.old_logp, atol=2e-5)
    # row j = turn j // B, episode j % B: prompt then completion, no gap
    t, b = 1, 3
    j = t * 4 + b
    plen, clen = tr.prompt_len[t, b], tr.completion_len[t, b]
    np.testing.assert_array_equal(rows.tokens[j, :plen], tr.prompt[t, b, :plen])
    np.testing.assert_array_equal(rows.tokens[j, plen: plen + clen], tr.completion[t, b, :clen])


def test_standin_reward_false_gives_unparsable_answers_no_env_reward():
    """Three new tokens cannot hold "ACTION=": no answer parses, a random legal
    stand-in is played, and on 1-digit addition it is sometimes right. With
    standin_reward=True that luck is the env reward; with False it is 0."""
    env = envs.make("arithmetic", digits=1, ops="+", prompt="short")
    text = TextInterface(env, TOK, max_prompt_len=13, pad_id=TOK.pad_token_id)
    g, s = nnx.split(tiny_model(3))
    out = {}
    for standin in (True, False):
        fn = rollout.make_rollout(env, text, num_groups=64, group_size=1, max_turns=1,
                                  max_new_tokens=3, invalid_penalty=0.0,
                                  standin_reward=standin)
        out[standin] = jax.tree.map(np.asarray, fn(g, s, jax.random.key(0)))
    kept, dropped = out[True], out[False]
    assert not kept.valid.any()
    np.testing.assert_array_equal(kept.action, dropped.action)  # the same stand-ins
    lucky = kept.action[0] == kept.states.answer[0]
    assert lucky.any()  # fixed key: 64 stand-ins among 19 answers, about 3 right
    np.testing.assert_array_equal(kept.env_reward[0], lucky.astype(np.float32))
    np.testing.assert_array_equal(kept.reward, kept.env_reward)
    assert not dropped.env_reward.any() and not dropped.reward.any()
