"""Twenty questions: knowledge base quality, answers vs the JSON, invariants, baselines, text."""
import collections
import json
import pathlib

import jax
import numpy as np
import pytest

from jaxrl_lm import envs
from jaxrl_lm.envs import _puzzle_util as pu
from jaxrl_lm.envs import twenty_questions as tq

DATA = pathlib.Path(envs.__file__).parent / "data" / "twenty_questions.json"


def _kb():
    """Independent read of the shipped JSON: {object: set of true attributes}."""
    data = json.loads(DATA.read_text())
    return data["attributes"], {o: set(s.split()) for o, s in data["objects"].items()}


def _np(tree):
    return jax.tree.map(np.asarray, tree)


def test_knowledge_base_size_consistency_and_distinct_rows():
    attrs, objs = _kb()
    assert len(objs) >= 100 and len(attrs) >= 30
    assert all(s <= set(attrs) for s in objs.values())
    rows = collections.Counter(frozenset(s) for s in objs.values())
    shared = sum(c for c in rows.values() if c > 1)
    assert shared <= 5, f"{shared} objects share an attribute row with another"
    for a in attrs:  # every question splits the objects
        assert 3 <= sum(a in s for s in objs.values()) <= len(objs) - 3, a
    implied = [("mammal", "animal"), ("bird", "animal"), ("insect", "animal"), ("animal", "alive"),
               ("plant", "alive"), ("fruit", "edible"), ("vegetable", "edible"), ("huge", "big")]
    for o, s in objs.items():
        for a, b in implied:
            assert a not in s or b in s, f"{o}: {a} without {b}"
    assert all(not {"animal", "plant"} <= s for s in objs.values())


@pytest.mark.parametrize("bad,field", [(dict(turns=0), "turns"), (dict(turns=51), "turns"),
                                       (dict(illegal="nope"), "illegal")])
def test_bad_options_raise(bad, field):
    with pytest.raises(ValueError, match=field):
        envs.make("twenty_questions", **bad)


@pytest.mark.parametrize("policy", ["halving", "random"])
def test_episodes_invariants_and_answers(policy):
    env = envs.make("twenty_questions")
    attrs, objs = _kb()
    names = list(objs)
    n_attr = len(attrs)
    s0, tr, acts = _np(pu.play(env, tq.BASELINES[policy], jax.random.key(1), 1000))
    lo, hi = env.reward_range
    assert tr.done[:, -1].all() and (tr.step_count <= env.max_steps).all()
    assert (tr.reward >= lo).all() and (tr.reward <= hi).all()
    assert (tr.secret == s0.secret[:, None]).all(), "secret changed within an episode"
    for e in range(1000):
        secret, done, asked = names[s0.secret[e]], False, set()
        for t in range(env.max_steps):
            a = int(acts[e, t])
            if done:
                assert tr.reward[e, t] == 0
                continue
            assert a >= n_attr or attrs[a] not in asked, "asked twice"
            if a < n_attr:
                asked.add(attrs[a])
                assert not tr.done[e, t] or t == env.max_steps - 1
                assert tr.reward[e, t] == 0
            else:
                assert tr.done[e, t] and tr.reward[e, t] == float(names[a - n_attr] == secret)
            done = bool(tr.done[e, t])
        # The rendered answers are the JSON's truth values for the asked attributes.
        text = env.render_text(jax.tree.map(lambda x: x[e, -1], tr))
        for a in asked:
            assert f" {a}={'yes' if a in objs[secret] else 'no'}" in text


def test_halving_beats_random():
    env = envs.make("twenty_questions")
    won = {name: _np(pu.play(env, p, jax.random.key(2), 1000))[1].won[:, -1].mean()
           for name, p in tq.BASELINES.items()}
    assert list(tq.BASELINES)[0] == "halving"
    assert won["halving"] >= 0.97 and won["random"] < 0.05, won


def test_text_render_matches_host_and_fits():
    env = envs.make("twenty_questions")
    s0, tr, _ = pu.play(env, tq.BASELINES["halving"], jax.random.key(4), 8)
    render = np.asarray(jax.jit(jax.vmap(jax.vmap(env.render_pieces)))(tr))
    assert render.shape[-1] == env.max_render_pieces
    pieces, tr = env.text_pieces(), _np(tr)
    for e in range(8):
        for t in range(env.max_steps):
            text = env.render_text(jax.tree.map(lambda x: x[e, t], tr))
            assert "".join(pieces[i] for i in render[e, t] if i >= 0) == text
            assert len(text) <= 600
    first = env.render_text(jax.tree.map(lambda x: x[0], _np(s0)))
    assert "Turns left: 20\n" in first
    acts = env.action_strings()
    assert len(set(acts)) == env.num_actions and all(" " not in a for a in acts)
    assert acts[0] == "ask:alive" and "guess:teddy_bear" in acts
