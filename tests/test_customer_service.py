"""Customer service: the scenario table, replies vs the JSON, baselines against
hand-computed rates, repeated fixes, malformed answers, and a hand-worked render."""
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
from jaxrl_lm.envs import customer_service as cs
from jaxrl_lm.envs.text import TextInterface
from tests.test_guess_my_city import CharTokenizer, _np  # the QA games' shared helpers

DATA = pathlib.Path(envs.__file__).parent / "data" / "customer_service.json"


def _scenarios():
    """Independent read of the JSON: questions, fixes, [(complaint, fix, {question: reply})]."""
    data = json.loads(DATA.read_text())
    questions = data["questions"]
    out = []
    for head, replies in data["scenarios"]:
        complaint, fix = head.split()
        reply = {q: v[0] for q, v in questions.items()}
        reply.update(item.split("=") for item in replies.split())
        out.append((complaint, fix, reply))
    return questions, data["fixes"], out


def test_table_is_consistent_and_every_fix_is_identifiable():
    questions, fixes, scenarios = _scenarios()
    assert len(scenarios) >= 25 and {f for _, f, _ in scenarios} == set(fixes)
    for c, f, reply in scenarios:
        assert all(reply[q] in questions[q] for q in questions), (c, f)
    # Scenarios of one complaint with different fixes differ in some reply.
    for (c1, f1, r1) in scenarios:
        for (c2, f2, r2) in scenarios:
            assert c1 != c2 or f1 == f2 or r1 != r2, (c1, f1, f2)
    for j, (c, f, reply) in enumerate(scenarios):  # the env's table is the JSON's
        row = cs.SCENARIOS.answers[j]
        got = {q: cs.SCENARIOS.values[i][row[i]] for i, q in enumerate(cs.SCENARIOS.facts)}
        assert got == dict(reply, complaint=c)
        assert cs.SCENARIOS.guesses[cs.SCENARIOS.target[j]] == f"fix:{f}"


@pytest.mark.parametrize("bad,field", [(dict(tries=0), "tries"), (dict(tries=21), "tries"),
                                       (dict(turns=0), "turns"), (dict(tries=1.0), "tries")])
def test_bad_options_raise(bad, field):
    with pytest.raises(ValueError, match=f"{field}="):
        envs.make("customer_service", **bad)


def test_info_gain_solves_every_call_within_a_binary_search():
    """info_gain always finds the fix, with no more questions than a binary
    search over the largest complaint's scenarios (6: ceil(log2 6) = 3), and
    every reply it saw is the JSON's."""
    env = envs.make("customer_service")
    questions, fixes, scenarios = _scenarios()
    s0, tr, acts = _np(pu.play(env, cs.BASELINES["info_gain"], jax.random.key(1), 1000))
    assert tr.won[:, -1].all() and (tr.tried[:, -1].sum(1) == 1).all()
    per_complaint = collections.Counter(c for c, _, _ in scenarios)
    n_asked = tr.asked[:, -1].sum(1) - 1  # the complaint is given
    assert n_asked.max() <= math.ceil(math.log2(max(per_complaint.values())))
    assert len(set(s0.hidden.tolist())) == len(scenarios)
    for e in range(0, 1000, 40):
        c, _, reply = scenarios[s0.hidden[e]]
        text = env.render_text(jax.tree.map(lambda x: x[e, -1], tr))
        assert f"Known: complaint={c}" in text
        for j in np.flatnonzero(tr.asked[e, -1][1:]):
            q = list(questions)[j]
            assert f" {q}={reply[q]}" in text


def test_random_player_rates():
    """tries=1: the random player's one fix is uniform over the 20 fixes and
    independent of the scenario (it always suggests one within 20 turns:
    14 questions at most come first), so it wins 1/20; with 3 tries it does
    better, and info_gain better still."""
    n, episodes = len(cs.SCENARIOS.guesses), 4000
    env = envs.make("customer_service", tries=1)
    one = _np(pu.play(env, cs.random, jax.random.key(2), episodes))[1]
    assert (one.tried[:, -1].sum(1) == 1).all()
    sd = math.sqrt((1 / n) * (1 - 1 / n) / episodes)
    assert abs(one.won[:, -1].mean() - 1 / n) < 4 * sd
    three = _np(pu.play(envs.make("customer_service"), cs.random, jax.random.key(3), 1000))[1]
    assert 1 / n < three.won[:, -1].mean() < 0.3


def test_wrong_fixes_until_the_customer_hangs_up():
    env = envs.make("customer_service")
    state = env.init(jax.random.key(0)).replace(hidden=jnp.int32(2))  # no_internet / pay_bill
    fix = lambda f: env.action_strings().index(f"fix:{f}")  # noqa: E731
    for i, f in enumerate(["restart_router", "wait_for_outage", "turn_on_wifi"]):
        state = env.step(state, fix(f), jax.random.key(i))
        assert float(state.reward) == 0 and bool(state.done) == (i == 2)
        assert not bool(state.legal_action_mask[fix(f)])
    again = env.step(state.replace(done=jnp.bool_(False)), fix("restart_router"), jax.random.key(5))
    assert float(again.reward) == env.illegal_penalty and bool(again.done)  # a repeated fix
    state = env.init(jax.random.key(0)).replace(hidden=jnp.int32(2))
    state = env.step(state, fix("pay_bill"), jax.random.key(0))
    assert float(state.reward) == 1 and bool(state.done) and bool(state.won)


def test_malformed_answers_are_penalised_in_jit_vmap():
    env = envs.make("customer_service", illegal_penalty=-0.25)
    ti = TextInterface(env, CharTokenizer())
    texts = ["ACTION=ask:power_light", "ACTION=ask:complaint", "ACTION=fix:", "reboot it",
             "ACTION=fix:pay_bill", "ACTION=FIX:pay_bill"]
    ids = np.zeros((len(texts), 32), np.int32)
    for i, t in enumerate(texts):
        ids[i, :len(t)] = CharTokenizer().encode(t)
    keys = jax.random.split(jax.random.key(4), len(texts))

    @jax.jit
    def run(ids, lengths, keys):
        action, valid = jax.vmap(ti.parse)(ids, lengths)
        state = jax.vmap(env.init)(keys).replace(hidden=jnp.full((len(texts),), 2, jnp.int32))
        return valid, jax.vmap(env.step)(state, action, keys)

    valid, after = run(jnp.asarray(ids), jnp.asarray([len(t) for t in texts]), keys)
    assert valid.tolist() == [True, False, False, False, True, False]
    assert after.reward.tolist() == [0.0, -0.25, -0.25, -0.25, 1.0, -0.25]
    assert after.done.tolist() == [False, True, True, True, True, True]


def test_hand_worked_render():
    env = envs.make("customer_service", tries=2, turns=9)
    state = env.init(jax.random.key(0)).replace(hidden=jnp.int32(2))  # no_internet / pay_bill
    for a in ("ask:router_lights", "fix:wait_for_outage", "ask:other_devices_online"):
        state = env.step(state, env.action_strings().index(a), jax.random.key(0))
    fixes = " ".join(f for f in _scenarios()[1])
    want = ("Customer service: a customer calls with a problem. Ask diagnostic questions, then "
            "suggest the fix that solves it; the customer tries at most 2 fixes.\n"
            f"Fixes: {fixes}\n"
            "Known: complaint=no_internet other_devices_online=no router_lights=red\n"
            "Not asked: wifi_icon power_light charger_light recent_change error_message noise "
            "device_age bill_paid popups cable_plugged screen_brightness hot_to_touch\n"
            "Tried: fix:wait_for_outage\n"
            "Turns left: 6\n"
            "Answer with ACTION=ask:<question> or ACTION=fix:<fix>.\n")
    assert env.render_text(_np(state)) == want
    pieces = env.text_pieces()
    assert "".join(pieces[i] for i in np.asarray(jax.jit(env.render_pieces)(state)) if i >= 0) == want
