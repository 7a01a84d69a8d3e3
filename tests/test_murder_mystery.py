"""Murder mystery: the case file, clue answers vs the JSON, the info_gain player's
exact clue count, random rates, malformed accusations, and a hand-worked render."""
import itertools
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_lm import envs
from jaxrl_lm.envs import _puzzle_util as pu
from jaxrl_lm.envs import murder_mystery as mm
from jaxrl_lm.envs.text import TextInterface
from tests.test_guess_my_city import CharTokenizer, _np  # the QA games' shared helpers

DATA = pathlib.Path(envs.__file__).parent / "data" / "murder_mystery.json"


def _case_file():
    """Independent read of the JSON: clues {clue: kind}, {kind: {name: {feature: value}}}."""
    data = json.loads(DATA.read_text())
    feats = {k: {n: dict(x.split("=") for x in f.split()) for n, f in data[k + "s"].items()}
             for k in ("suspect", "weapon", "room")}
    return {c: spec[0] for c, spec in data["clues"].items()}, feats


def test_case_file_identifies_each_fact_only_by_combining_clues():
    clues, feats = _case_file()
    for kind, members in feats.items():
        kind_clues = [c for c, k in clues.items() if k == kind]
        rows = {tuple(f[c] for c in kind_clues) for f in members.values()}
        assert len(rows) == len(members), kind  # all clues together identify
        for c in kind_clues:  # no single clue does
            assert len({f[c] for f in members.values()}) < len(members), (kind, c)
    assert [s for s, f in feats["suspect"].items() if f["alibi"] == "no"] == ["cook", "nephew"]


@pytest.mark.parametrize("bad,field", [(dict(accuse="weapon"), "accuse"), (dict(tries=7), "tries"),
                                       (dict(accuse="full", tries=151), "tries"),
                                       (dict(turns=51), "turns")])
def test_bad_options_raise(bad, field):
    with pytest.raises(ValueError, match=f"{field}="):
        envs.make("murder_mystery", **bad)
    assert envs.make("murder_mystery", accuse="full", tries=7).tries == 7


def _clue_answers(case, feats, clues):
    """The answers a case gives, worked out from the JSON by hand's rules."""
    kinds = dict(zip(("suspect", "weapon", "room"), case))
    out = {c: feats[k][kinds[k]][c] for c, k in clues.items()}
    for s, f in feats["suspect"].items():
        out[s] = "no_alibi" if s == case[0] or f["alibi"] == "no" else "alibi"
    return out


def test_answers_follow_the_case_file_for_every_case():
    clues, feats = _case_file()
    env = envs.make("murder_mystery", accuse="full")
    table = env.table
    cases = list(itertools.product(*(feats[k] for k in ("suspect", "weapon", "room"))))
    assert len(cases) == len(table.target) == 150
    for h, case in enumerate(cases):
        want = _clue_answers(case, feats, clues)
        got = {f: table.values[j][table.answers[h, j]] for j, f in enumerate(table.facts)}
        assert got == want, case
        assert table.guesses[table.target[h]] == "accuse:" + "/".join(case)
    culprit = envs.make("murder_mystery").table
    assert [culprit.guesses[culprit.target[h]] for h in range(0, 150, 25)] == [
        f"accuse:{s}" for s in feats["suspect"]]


def test_info_gain_clue_counts_are_the_hand_worked_ones():
    """Culprit: hair (three pairs), then one binary clue: exactly 2 clues, within
    a binary search's ceil(log2 6) = 3. Full: wound and stains are the most
    informative weapon and room clues (one each), leaving only candlestick/wrench
    (bruise) and conservatory/garden (soil) to one more clue each:
    clues = 4 + [weapon is candlestick or wrench] + [room is conservatory or garden]."""
    env = envs.make("murder_mystery")
    s0, tr, _ = _np(pu.play(env, mm.BASELINES["info_gain"], jax.random.key(1), 500))
    n_clues = tr.asked[:, -1].sum(1)
    assert tr.won[:, -1].all() and (n_clues == 2).all()

    env = envs.make("murder_mystery", accuse="full")
    s0, tr, _ = _np(pu.play(env, mm.BASELINES["info_gain"], jax.random.key(2), 500))
    weapon, room = (s0.hidden // 5) % 5, s0.hidden % 5
    want = 4 + np.isin(weapon, [0, 1]) + np.isin(room, [3, 4])
    assert tr.won[:, -1].all()
    np.testing.assert_array_equal(tr.asked[:, -1].sum(1), want)


def test_random_player_rates():
    """The random player accuses uniformly at random, independently of the
    case, and always before turn 20 (13 clues at most come first): it wins
    1/6 when naming the culprit, 1/150 when naming all three."""
    episodes = 4000
    for accuse, n in [("culprit", 6), ("full", 150)]:
        env = envs.make("murder_mystery", accuse=accuse)
        tr = _np(pu.play(env, mm.random, jax.random.key(n), episodes))[1]
        assert (tr.tried[:, -1].sum(1) == 1).all()
        sd = math.sqrt((1 / n) * (1 - 1 / n) / episodes)
        assert abs(tr.won[:, -1].mean() - 1 / n) < 4 * sd, accuse


def test_malformed_accusations_are_penalised_in_jit_vmap():
    env = envs.make("murder_mystery", illegal_penalty=-1.0)
    ti = TextInterface(env, CharTokenizer())
    texts = ["ACTION=accuse:butler", "ACTION=accuse:Butler", "ACTION=accuse:butler/knife/library",
             "ACTION=interview:cook", "It was the butler!", "ACTION=examine:fingerprints"]
    ids = np.zeros((len(texts), 40), np.int32)
    for i, t in enumerate(texts):
        ids[i, :len(t)] = CharTokenizer().encode(t)
    keys = jax.random.split(jax.random.key(5), len(texts))

    @jax.jit
    def run(ids, lengths, keys):
        action, valid = jax.vmap(ti.parse)(ids, lengths)
        state = jax.vmap(env.init)(keys).replace(hidden=jnp.zeros((len(texts),), jnp.int32))
        return valid, jax.vmap(env.step)(state, action, keys)

    valid, after = run(jnp.asarray(ids), jnp.asarray([len(t) for t in texts]), keys)
    assert valid.tolist() == [True, False, False, True, False, False]
    assert after.reward.tolist() == [1.0, -1.0, -1.0, 0.0, -1.0, -1.0]
    assert after.done.tolist() == [True, True, True, False, True, True]


def test_hand_worked_render():
    env = envs.make("murder_mystery", turns=10)
    clues, feats = _case_file()
    # The doctor with the rope in the study.
    h = (list(feats["suspect"]).index("doctor") * 5 + list(feats["weapon"]).index("rope")) * 5 + 1
    state = env.init(jax.random.key(0)).replace(hidden=jnp.int32(h))
    for a in ("interview:cook", "examine:hair", "interview:doctor", "examine:wound"):
        state = env.step(state, env.action_strings().index(a), jax.random.key(0))
    dossier = env.intro().split("\n", 1)[1]
    assert dossier.startswith(
        "Suspects: butler (footprints=large hair=grey blow=right_handed), cook (")
    assert "\nRooms: library (floor=carpet stains=dust), study (floor=carpet stains=ink)," in dossier
    want = ("Murder mystery: find who killed the victim. Examine clues and interview suspects, then "
            "accuse; an accusation ends the case.\n" + dossier + "\n"
            "Known: hair=grey wound=neck_marks cook=no_alibi doctor=no_alibi\n"
            "Not asked: footprints blow trace floor stains butler gardener maid nephew\n"
            "Turns left: 6\n"
            "Answer with ACTION=examine:<clue>, ACTION=interview:<suspect> or "
            "ACTION=accuse:<suspect>.\n")
    assert env.render_text(_np(state)) == want
    pieces = env.text_pieces()
    assert "".join(pieces[i] for i in np.asarray(jax.jit(env.render_pieces)(state)) if i >= 0) == want
