"""Arithmetic: answers vs Python integers, reward, options, baselines, text."""
import re

import jax
import numpy as np
import pytest

from jaxrl_lm import envs
from jaxrl_lm.envs import _puzzle_util as pu
from jaxrl_lm.envs import arithmetic as ar


def _np(tree):
    return jax.tree.map(np.asarray, tree)


@pytest.mark.parametrize("bad,field", [
    (dict(digits=0), "digits"), (dict(digits=5, ops="+"), "digits"),
    (dict(digits=3, ops="*"), "capped"), (dict(ops=""), "ops"), (dict(ops="-"), "ops"),
    (dict(ops="++"), "ops"), (dict(ops=("+",)), "ops"), (dict(prompt="none"), "prompt")])
def test_bad_options_raise(bad, field):
    with pytest.raises(ValueError, match=field):
        envs.make("arithmetic", **bad)


@pytest.mark.parametrize("digits,ops", [(1, "+*"), (2, "+*"), (4, "+"), (2, "*")])
def test_answers_match_python_integers(digits, ops):
    env = envs.make("arithmetic", digits=digits, ops=ops)
    top = 10**digits - 1
    assert env.num_actions == max(2 * top if "+" in ops else 0, top * top if "*" in ops else 0) + 1
    s0, tr, acts = _np(pu.play(env, ar.BASELINES["random"], jax.random.key(digits), 1000))
    lo = 0 if digits == 1 else 10 ** (digits - 1)
    a, b, op = s0.a.tolist(), s0.b.tolist(), s0.op.tolist()
    assert min(a + b) >= lo and max(a + b) <= top
    assert {"+*"[o] for o in op} == set(ops)
    want = [x + y if o == 0 else x * y for x, y, o in zip(a, b, op)]
    assert s0.answer.tolist() == want
    assert tr.done[:, 0].all() and (tr.step_count[:, 0] == 1).all()
    assert (tr.reward[:, 0] == (acts[:, 0] == np.array(want))).all()
    solved = _np(pu.play(env, ar.BASELINES["solver"], jax.random.key(digits), 1000))[1]
    assert (solved.reward[:, 0] == 1.0).all() and solved.won.all()


def test_illegal_out_of_range_answer_is_penalised():
    env = envs.make("arithmetic", digits=1, ops="+")
    s = env.init(jax.random.key(0))
    for bad in (-1, env.num_actions):
        t = env.step(s, bad, jax.random.key(1))
        assert bool(t.done) and float(t.reward) == env.illegal_penalty
    assert env.reward_range == (-1.0, 1.0)


def test_text_render_matches_host_and_parses_back():
    env = envs.make("arithmetic", digits=3, ops="+")
    s0, _, _ = pu.play(env, ar.BASELINES["solver"], jax.random.key(3), 200)
    render = np.asarray(jax.jit(jax.vmap(env.render_pieces))(s0))
    pieces, s0, acts = env.text_pieces(), _np(s0), env.action_strings()
    for e in range(200):
        text = env.render_text(jax.tree.map(lambda x: x[e], s0))
        assert "".join(pieces[i] for i in render[e] if i >= 0) == text
        x, op, y = re.match(r"Compute (\d+)([+*])(\d+)\.\n", text).groups()
        assert acts[s0.answer[e]] == str(int(x) + int(y) if op == "+" else int(x) * int(y))
    single = envs.make("arithmetic", digits=1)
    s = single.init(jax.random.key(0)).replace(a=np.int32(0), b=np.int32(7), op=np.int32(1))
    text = "".join(single.text_pieces()[i] for i in np.asarray(single.render_pieces(s)) if i >= 0)
    assert text.startswith("Compute 0*7.\n") and text == single.render_text(s)


def test_short_prompt_is_the_first_line_and_plays_the_same():
    """prompt="short" renders only "Compute a+b.\n" (in jit as on the host);
    the problems, answers and rewards are those of the default prompt."""
    full, short = envs.make("arithmetic", digits=2), envs.make("arithmetic", digits=2, prompt="short")
    s_full, t_full, _ = _np(pu.play(full, ar.BASELINES["solver"], jax.random.key(5), 50))
    s_short, t_short, _ = _np(pu.play(short, ar.BASELINES["solver"], jax.random.key(5), 50))
    jax.tree.map(np.testing.assert_array_equal, (s_full, t_full), (s_short, t_short))
    render = np.asarray(jax.jit(jax.vmap(short.render_pieces))(s_short))
    for e in range(50):
        one = jax.tree.map(lambda x: x[e], s_short)
        text = short.render_text(one)
        assert "".join(short.text_pieces()[i] for i in render[e] if i >= 0) == text
        assert text == full.render_text(one).split("\n")[0] + "\n"
        assert re.fullmatch(r"Compute \d+[+*]\d+\.\n", text)
    assert full.render_text(jax.tree.map(lambda x: x[0], s_full)).endswith(
        "Work it out, then answer with ACTION=<number>.\n")


@pytest.mark.parametrize("digits,ops", [(1, "+*"), (2, "*")])
def test_operands_and_operator_are_uniform(digits, ops):
    """init draws a, b and op from one threefry block (pu.below): each is
    uniform over its range, and b and op (one shared draw) are independent."""
    env = envs.make("arithmetic", digits=digits, ops=ops)
    n = 20_000
    s = _np(jax.jit(jax.vmap(env.init))(jax.random.split(jax.random.key(7), n)))
    lo, hi = (0 if digits == 1 else 10 ** (digits - 1)), 10**digits
    # Pearson chi-square at P = 0.001 by degrees of freedom.
    crit = {1: 10.83, 9: 27.88, 19: 43.82, 89: 135.98}
    tables = [(s.a - lo, hi - lo), (s.b - lo, hi - lo)]
    if len(ops) == 2:
        tables += [(s.op, 2), ((s.b - lo) * 2 + s.op, 2 * (hi - lo))]
    else:
        assert (s.op == "+*".index(ops)).all()
    for values, cells in tables:
        counts = np.bincount(values, minlength=cells)
        assert len(counts) == cells
        chi2 = ((counts - n / cells) ** 2 / (n / cells)).sum()
        assert chi2 < crit[cells - 1], (cells, chi2)
