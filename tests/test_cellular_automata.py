"""Cellular automata: CA update vs a host loop, feedback, invariants, baselines, text."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_lm import envs
from jaxrl_lm.envs import _puzzle_util as pu
from jaxrl_lm.envs import cellular_automata as ca


def _host_step(rule, row):
    """Reference: Wolfram elementary CA update with periodic boundary, plain loops."""
    w = len(row)
    table = {(a, b, c): (rule >> (a * 4 + b * 2 + c)) & 1
             for a in (0, 1) for b in (0, 1) for c in (0, 1)}
    return np.array([table[(int(row[i - 1]), int(row[i]), int(row[(i + 1) % w]))]
                     for i in range(w)], bool)


def _np(tree):
    return jax.tree.map(np.asarray, tree)


def test_apply_rule_matches_host_reference_and_known_rules():
    rng = np.random.default_rng(0)
    rules = rng.integers(0, 256, 300)
    rows = rng.integers(0, 2, (300, 11)).astype(bool)
    got = np.asarray(jax.vmap(ca.apply_rule)(jnp.asarray(rules, jnp.int32), jnp.asarray(rows)))
    for r, x, y in zip(rules, rows, got):
        np.testing.assert_array_equal(y, _host_step(int(r), x))
    # Rule 90 is XOR of the two neighbours; rule 204 is the identity.
    x = rows[0]
    np.testing.assert_array_equal(np.asarray(ca.apply_rule(jnp.int32(90), x)),
                                  np.roll(x, 1) ^ np.roll(x, -1))
    np.testing.assert_array_equal(np.asarray(ca.apply_rule(jnp.int32(204), x)), x)


@pytest.mark.parametrize("bad,field", [(dict(width=3), "width"), (dict(width=17), "width"),
                                       (dict(examples=0), "examples"), (dict(turns=11), "turns")])
def test_bad_options_raise(bad, field):
    with pytest.raises(ValueError, match=field):
        envs.make("cellular_automata", **bad)


@pytest.mark.parametrize("policy", ["consistent", "random"])
def test_episodes_invariants_and_feedback(policy):
    env = envs.make("cellular_automata", width=10, examples=2)
    s0, tr, acts = _np(pu.play(env, ca.BASELINES[policy], jax.random.key(5), 1000))
    lo, hi = env.reward_range
    assert tr.done[:, -1].all() and (tr.reward >= lo).all() and (tr.reward <= hi).all()
    for f in ("rule", "inputs", "outputs"):  # hidden info fixed within an episode
        assert (getattr(tr, f) == getattr(s0, f)[:, None]).all(), f
    for e in range(1000):
        rule, done, seen = int(s0.rule[e]), False, set()
        for x, y in zip(s0.inputs[e], s0.outputs[e]):
            np.testing.assert_array_equal(y, _host_step(rule, x))
        for t in range(env.max_steps):
            if done:
                assert tr.reward[e, t] == 0
                continue
            g = int(acts[e, t])
            assert g not in seen, "a rule was guessed twice"
            seen.add(g)
            fits = all((_host_step(g, x) == y).all() for x, y in zip(s0.inputs[e], s0.outputs[e]))
            assert tr.reward[e, t] == float(fits) and tr.done[e, t] == (fits or t == env.max_steps - 1)
            right = sum(((g >> k) & 1) == ((rule >> k) & 1) for k in range(8))
            assert tr.guesses[e, t, t] == g and tr.scores[e, t, t] == right
            done = bool(tr.done[e, t])


def test_consistent_beats_random():
    env = envs.make("cellular_automata")
    won = {name: _np(pu.play(env, p, jax.random.key(6), 1000))[1].won[:, -1].mean()
           for name, p in ca.BASELINES.items()}
    assert list(ca.BASELINES)[0] == "consistent"
    assert won["consistent"] == 1.0 and won["random"] < 0.1, won


def test_text_render_matches_host():
    env = envs.make("cellular_automata", width=12, examples=4)
    s0, tr, _ = pu.play(env, ca.BASELINES["random"], jax.random.key(8), 6)
    render = np.asarray(jax.jit(jax.vmap(jax.vmap(env.render_pieces)))(tr))
    assert render.shape[-1] == env.max_render_pieces
    pieces, tr = env.text_pieces(), _np(tr)
    for e in range(6):
        for t in range(env.max_steps):
            text = env.render_text(jax.tree.map(lambda x: x[e, t], tr))
            assert "".join(pieces[i] for i in render[e, t] if i >= 0) == text
            assert len(text) <= 600
    acts = env.action_strings()
    assert acts[110] == "01101110" and len(set(acts)) == 256
    s = jax.tree.map(lambda x: x[0, 0], tr)  # after the first guess
    assert s.guesses[0] >= 0 and s.guesses[1] < 0
    assert f"{acts[s.guesses[0]]} right={s.scores[0]}/8\n" in env.render_text(s)


def test_rule_and_inputs_are_uniform():
    """init's rule is uniform over 0..255 and its input cells are fair,
    independent bits (all drawn as raw random bits)."""
    env = envs.make("cellular_automata", width=16, examples=6)
    n = 25_600
    s = jax.jit(jax.vmap(env.init))(jax.random.split(jax.random.key(5), n))
    rule, inputs = np.asarray(s.rule), np.asarray(s.inputs).reshape(n, -1)
    counts = np.bincount(rule, minlength=256)
    assert len(counts) == 256
    assert ((counts - n / 256) ** 2 / (n / 256)).sum() < 330.5  # chi-square, 255 dof, P = 0.001
    # Each cell: mean 1/2 within 4.5 standard errors; neighbours uncorrelated.
    assert np.abs(inputs.mean(0) - 0.5).max() < 4.5 * 0.5 / np.sqrt(n)
    pairs = (inputs[:, :-1] == inputs[:, 1:]).mean(0)
    assert np.abs(pairs - 0.5).max() < 4.5 * 0.5 / np.sqrt(n)
