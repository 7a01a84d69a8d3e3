"""Wordle: feedback vs an independent plain-Python scorer (repeated letters
included), the shipped word list, the consistent-guess baseline and
1000-episode invariants under jit(vmap)."""

from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_lm import envs
from jaxrl_lm.envs import wordle as wd


def host_marks(guess: str, secret: str) -> str:
    """Reference scorer: greens first, then yellows from the leftover counts."""
    out = ["."] * 5
    left = Counter(s for g, s in zip(guess, secret) if g != s)
    for i, (g, s) in enumerate(zip(guess, secret)):
        if g == s:
            out[i] = "G"
    for i, g in enumerate(guess):
        if out[i] == "." and left[g] > 0:
            out[i] = "Y"
            left[g] -= 1
    return "".join(out)


def jit_marks(guesses, secrets):
    enc = lambda ws: jnp.asarray([[ord(c) - 97 for c in w] for w in ws])  # noqa: E731
    marks = jax.jit(jax.vmap(wd.feedback))(enc(guesses), enc(secrets))
    return ["".join(wd.MARKS[m] for m in row) for row in np.asarray(marks)]


@pytest.mark.parametrize("secret,guess,expect", [
    ("apple", "ppppp", ".GG.."), ("abbey", "babes", "YYGG."), ("abbey", "kebab", ".YGYY"),
    ("crane", "crane", "GGGGG"), ("eerie", "there", "..YYG"), ("speed", "eerie", "YY..."),
    ("lever", "eerie", "YGY.."), ("geese", "eerie", "YG..G"), ("llama", "hello", "..YY."),
])
def test_feedback_hand_worked(secret, guess, expect):
    assert host_marks(guess, secret) == expect
    assert jit_marks([guess], [secret]) == [expect]


def test_feedback_matches_host_on_random_pairs():
    rng = np.random.default_rng(0)
    words = wd.word_list()
    g = [words[i] for i in rng.integers(0, len(words), 2000)]
    s = [words[i] for i in rng.integers(0, len(words), 2000)]
    # Strings over a 3-letter alphabet: repeated letters everywhere.
    g += ["".join(rng.choice(list("abc"), 5)) for _ in range(2000)]
    s += ["".join(rng.choice(list("abc"), 5)) for _ in range(2000)]
    assert jit_marks(g, s) == [host_marks(a, b) for a, b in zip(g, s)]


def test_word_list():
    words = wd.word_list()
    assert 1000 <= len(words) <= 2300
    assert len(set(words)) == len(words) and list(words) == sorted(words)
    assert all(len(w) == 5 and w.isalpha() and w.islower() for w in words)
    env = envs.make("wordle")
    assert env.action_strings() == words and env.num_actions == len(words)
    for w in ("apple", "crane", "house", "water"):
        assert w in words


def test_bad_options():
    with pytest.raises(ValueError, match="turns"):
        envs.make("wordle", turns=0)
    with pytest.raises(ValueError, match="unknown option"):
        envs.make("wordle", letters=6)


def play(env, policy, n, seed):
    """n episodes under jit(vmap(scan)): (initial states, states after each step)."""
    def episode(key):
        k_init, k_run = jax.random.split(key)
        state = env.init(k_init)

        def body(s, k):
            k_act, k_step = jax.random.split(k)
            s = env.step(s, policy(env, s, k_act), k_step)
            return s, s
        _, traj = jax.lax.scan(body, state, jax.random.split(k_run, env.max_steps))
        return state, traj
    return jax.jit(jax.vmap(episode))(jax.random.split(jax.random.key(seed), n))


def test_consistent_baseline_solves_most():
    env = envs.make("wordle")
    _, traj = play(env, wd.consistent, 200, 0)
    solved = np.asarray(traj.solved)[:, -1]
    assert solved.mean() >= 0.8, solved.mean()
    masks = jax.vmap(jax.vmap(lambda s: wd.consistent_mask(env, s)))(
        jax.tree.map(lambda x: x[:20], traj))
    secret_hit = jnp.take_along_axis(masks, traj.secret[:20, :, None], axis=-1)
    assert bool(jnp.all(secret_hit))
    _, traj = play(env, wd.random, 200, 0)
    assert np.asarray(traj.solved)[:, -1].mean() < 0.05


def test_random_episodes_invariants():
    env = envs.make("wordle", illegal="random", illegal_penalty=-0.5)
    lo, hi = env.reward_range
    words = wd.word_list()

    def policy(env, s, k):  # mostly random words, sometimes out of range
        a = jax.random.randint(k, (), -50, env.num_actions + 50)
        return jnp.where(jax.random.uniform(jax.random.fold_in(k, 1)) < 0.9,
                         jnp.clip(a, 0, env.num_actions - 1), a)
    init, traj = play(env, policy, 1000, 1)
    t = np.asarray(traj.step_count)
    done, reward = np.asarray(traj.done), np.asarray(traj.reward)
    assert done[:, -1].all() and (t <= env.max_steps).all()
    assert ((reward >= lo) & (reward <= hi)).all()
    assert (np.asarray(traj.secret) == np.asarray(init.secret)[:, None]).all()
    assert (reward[:, 1:][done[:, :-1]] == 0).all()
    last = jax.tree.map(lambda x: np.asarray(x[:, -1]), traj)
    for e in range(0, 1000, 29):
        for i in range(int(last.step_count[e])):
            shown = "".join(wd.MARKS[m] for m in last.marks[e, i])
            assert shown == host_marks(words[last.guesses[e, i]], words[last.secret[e]])
    np.testing.assert_array_equal(last.solved, (reward >= 0.5).any(axis=1))


def test_render_matches_host_text():
    env = envs.make("wordle")
    _, traj = play(env, wd.random, 3, 2)
    pieces, render = env.text_pieces(), jax.jit(env.render_pieces)
    for e in range(3):
        for t in range(env.max_steps):
            s = jax.tree.map(lambda x: np.asarray(x[e, t]), traj)
            idx = np.asarray(render(s))
            assert len(idx) == env.max_render_pieces
            assert "".join(pieces[i] for i in idx if i >= 0) == env.render_text(s)
    s = jax.tree.map(lambda x: np.asarray(x[0, 0]), traj)
    word = wd.word_list()[int(s.guesses[0])]
    assert f"\n{word} " in env.render_text(s) and "Tries left: 5." in env.render_text(s)
