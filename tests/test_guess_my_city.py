"""Guess my city: the table, answers vs the JSON, baselines against hand-computed
success rates, illegal and malformed answers, jit(vmap), and a hand-worked render."""
import collections
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_lm import envs
from jaxrl_lm.envs import _puzzle_util as pu
from jaxrl_lm.envs import guess_my_city as gmc
from jaxrl_lm.envs.text import TextInterface

DATA = pathlib.Path(envs.__file__).parent / "data" / "guess_my_city.json"


def _cities():
    """Independent read of the shipped JSON: questions, {city: {question: answer}}."""
    data = json.loads(DATA.read_text())
    questions = dict(data["questions"], first_letter=["a-f", "g-l", "m-r", "s-z"])
    rows = {c: dict(zip(data["questions"], s.split()),
                    first_letter=next(b for b in questions["first_letter"] if c[0] <= b[-1]))
            for c, s in data["cities"].items()}
    return questions, rows


def _np(tree):
    return jax.tree.map(np.asarray, tree)


class CharTokenizer:
    """ids = code points (shared by the tests of the three question-answer games)."""

    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids)

    def __len__(self):
        return 128


def test_table_is_consistent_and_identifies_every_city():
    questions, rows = _cities()
    assert len(rows) >= 100
    for r in rows.values():
        assert set(r) == set(questions) and all(r[q] in questions[q] for q in r)
    distinct = {tuple(sorted(r.items())) for r in rows.values()}
    assert len(distinct) == len(rows), "two cities share a row"
    for q, vals in questions.items():  # every question splits the cities
        counts = collections.Counter(r[q] for r in rows.values())
        assert len(counts) >= 2 and max(counts.values()) <= len(rows) - 10, q
    south = {c for c, r in rows.items() if r["hemisphere"] == "south"}
    assert {"sydney", "buenos_aires", "johannesburg"} <= south and "tokyo" not in south
    assert rows["paris"]["capital"] == "yes" and rows["sydney"]["capital"] == "no"
    # The env's table is the JSON's, in the same order.
    env = envs.make("guess_my_city")
    assert env.action_strings()[:len(questions)] == tuple(f"ask:{q}" for q in questions)
    assert env.action_strings()[len(questions):] == tuple(f"guess:{c}" for c in rows)
    for i, c in enumerate(rows):
        got = {q: gmc.CITIES.values[j][gmc.CITIES.answers[i, j]] for j, q in enumerate(questions)}
        assert got == rows[c], c


@pytest.mark.parametrize("bad,field", [(dict(turns=0), "turns"), (dict(turns=51), "turns"),
                                       (dict(tries=0), "tries"), (dict(tries=105), "tries"),
                                       (dict(turns=2.5), "turns"), (dict(illegal="nope"), "illegal")])
def test_bad_options_raise(bad, field):
    with pytest.raises(ValueError, match=f"{field}="):
        envs.make("guess_my_city", **bad)


def test_episodes_follow_the_json_and_info_gain_always_wins():
    """Every answer rendered is the JSON's; info_gain asks distinct questions and
    always names the city (rows are distinct and 11 questions + 1 guess <= 20)."""
    env = envs.make("guess_my_city")
    questions, rows = _cities()
    names, qs = list(rows), list(questions)
    s0, tr, acts = _np(pu.play(env, gmc.BASELINES["info_gain"], jax.random.key(1), 500))
    assert (tr.hidden == s0.hidden[:, None]).all() and tr.done[:, -1].all()
    assert tr.won[:, -1].all()
    n_asked = tr.asked[:, -1].sum(1)
    # No player can average fewer than log(104) / log(12) questions (12 = most
    # answers to one question); ours stays well within the 19 it has.
    assert n_asked.mean() >= math.log(len(rows)) / math.log(12) and n_asked.max() <= 8
    for e in range(0, 500, 25):
        final = jax.tree.map(lambda x: x[e, -1], tr)
        text = env.render_text(final)
        for j in np.flatnonzero(final.asked):
            assert f" {qs[j]}={rows[names[s0.hidden[e]]][qs[j]]}" in text


def test_hand_computed_success_rates():
    """turns=1: any player can only guess, 1/N. turns=2: info_gain asks the
    question of highest answer entropy, then guesses uniformly among the cities
    with that answer: success = (#distinct answers of it) / N. turns=20: the
    random player's first guess is uniform and independent of the city, 1/N."""
    questions, rows = _cities()
    n = len(rows)
    entropy = {}
    for q in questions:
        p = np.array(list(collections.Counter(r[q] for r in rows.values()).values())) / n
        entropy[q] = -(p * np.log(p)).sum()
    best = max(entropy, key=entropy.get)
    assert sorted(entropy.values())[-2] < entropy[best] - 0.01  # a unique best question
    expect2 = len(set(r[best] for r in rows.values())) / n
    episodes = 4000
    for turns, policy, expect in [(1, "info_gain", 1 / n), (2, "info_gain", expect2),
                                  (20, "random", 1 / n)]:
        env = envs.make("guess_my_city", turns=turns)
        won = _np(pu.play(env, gmc.BASELINES[policy], jax.random.key(turns), episodes))[1].won[:, -1]
        sd = math.sqrt(expect * (1 - expect) / episodes)
        assert abs(won.mean() - expect) < 4 * sd, (turns, policy, won.mean(), expect)


def test_tries_allow_more_guesses():
    env = envs.make("guess_my_city", tries=2)
    state = env.init(jax.random.key(0))
    secret = int(state.hidden)
    wrong = len(gmc.CITIES.ask) + (secret + 1) % len(gmc.CITIES.guesses)
    state = env.step(state, wrong, jax.random.key(1))
    assert not bool(state.done) and float(state.reward) == 0
    assert not bool(state.legal_action_mask[wrong])
    assert " guess:" in env.render_text(_np(state)).split("Tried:")[1]
    state = env.step(state, len(gmc.CITIES.ask) + secret, jax.random.key(2))
    assert bool(state.done) and bool(state.won) and float(state.reward) == 1


def test_malformed_and_repeated_answers_are_penalised_in_jit_vmap():
    env = envs.make("guess_my_city", illegal_penalty=-0.5)
    ti = TextInterface(env, CharTokenizer())
    texts = ["ACTION=ask:continent", "ACTION=ask:continent!", "I think paris",
             "ACTION=guess:atlantis", "ACTION=ask:capital", "ACTION=guess:Paris"]
    ids = np.zeros((len(texts), 32), np.int32)
    for i, t in enumerate(texts):
        ids[i, :len(t)] = CharTokenizer().encode(t)
    lengths = jnp.asarray([len(t) for t in texts])
    keys = jax.random.split(jax.random.key(3), len(texts))

    @jax.jit
    def run(ids, lengths, keys):
        action, valid = jax.vmap(ti.parse)(ids, lengths)
        state = jax.vmap(env.init)(keys)
        ask = jnp.full_like(action, 0)  # ask:continent first, then the parsed answer
        state = jax.vmap(env.step)(state, ask, keys)
        return valid, jax.vmap(env.step)(state, action, keys)

    valid, after = run(jnp.asarray(ids), lengths, keys)
    assert valid.tolist() == [True, False, False, False, True, False]
    # A repeated question is illegal too: every row but the fresh question is penalised.
    assert after.reward.tolist() == [-0.5, -0.5, -0.5, -0.5, 0.0, -0.5]
    assert after.done.tolist() == [True, True, True, True, False, True]
    assert bool(jnp.isfinite(after.reward).all())


def test_hand_worked_render():
    env = envs.make("guess_my_city", turns=5)
    paris = list(_cities()[1]).index("paris")
    state = env.init(jax.random.key(0)).replace(hidden=jnp.int32(paris))
    for q in ("coastal", "continent"):
        state = env.step(state, env.action_strings().index(f"ask:{q}"), jax.random.key(0))
    want = ("Guess my city: find the hidden city (one of 104 world cities). Ask questions about it, "
            "then guess it; a guess ends the game.\n"
            "Known: continent=europe coastal=no\n"
            "Not asked: hemisphere latitude capital population language climate olympics altitude "
            "first_letter\n"
            "Turns left: 3\n"
            "Answer with ACTION=ask:<question> or ACTION=guess:<city>.\n")
    assert env.render_text(_np(state)) == want
    pieces = env.text_pieces()
    assert "".join(pieces[i] for i in np.asarray(jax.jit(env.render_pieces)(state)) if i >= 0) == want
