"""jaxrl_lm.experiments (arith, arith_rl, grad_variance) against hand-worked and
float64 numpy references, with tiny settings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrl_lm.envs.text import parse_text
from jaxrl_lm.experiments import arith as X
from jaxrl_lm.experiments import arith_rl as R
from jaxrl_lm.experiments import grad_variance as GV
from jaxrl_lm.sampling import token_logprobs


# -- gradient variance on a toy linear softmax policy ----------------------------

def _toy(seed=0, n_groups=3, g=4, d=5, c=3):
    rng = np.random.default_rng(seed)
    w, bias = rng.normal(size=(c, d)), rng.normal(size=c)
    x, y = rng.normal(size=(n_groups * g, d)), rng.integers(0, c, n_groups * g)
    return w, bias, x, y


def _toy_logp(params, sample):
    x, y = sample
    return jax.nn.log_softmax(params["w"] @ x + params["b"])[y]


def _numpy_scores(w, bias, x, y):
    """s_i = d/d(w, b) log softmax(w x_i + b)[y_i] = ((e_y - p) x^T, e_y - p), float64."""
    z = x @ w.T + bias
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    e = np.eye(w.shape[0])[y] - p
    return np.concatenate([(e[:, :, None] * x[:, None, :]).reshape(len(x), -1), e], 1)


def test_gram_and_variance_match_float64_numpy():
    w, bias, x, y = _toy()
    g = 4
    params = {"w": jnp.asarray(w, jnp.float32), "b": jnp.asarray(bias, jnp.float32)}
    gram = GV.score_gram(_toy_logp, params, (jnp.asarray(x, jnp.float32), jnp.asarray(y)), g)
    s = _numpy_scores(w, bias, x, y).reshape(3, g, -1)
    np.testing.assert_allclose(gram, np.einsum("gip,gjp->gij", s, s), rtol=1e-5, atol=1e-6)

    adv = np.random.default_rng(1).normal(size=12)
    v, m = GV.group_variance(gram, jnp.asarray(adv, jnp.float32))
    contrib = adv.reshape(3, g, 1) * s  # g_i = A_i s_i
    mean = contrib.mean(1, keepdims=True)
    np.testing.assert_allclose(v, ((contrib - mean) ** 2).sum((1, 2)) / (g - 1), rtol=1e-4)
    np.testing.assert_allclose(m, (mean[:, 0] ** 2).sum(-1), rtol=1e-4)


def test_oracle_baseline_is_the_weighted_mean_and_minimises_the_second_moment():
    w, bias, x, y = _toy(seed=2)
    s = _numpy_scores(w, bias, x, y).reshape(3, 4, -1)
    gram = jnp.asarray(np.einsum("gip,gjp->gij", s, s), jnp.float32)
    r = np.array([1, 0, 0, 1, 0, 0, 0, 1, 1, 1, 0, 1], np.float64)
    adv = np.asarray(GV.oracle_advantages(jnp.asarray(r, jnp.float32), gram)).reshape(3, 4)
    n2 = (s**2).sum(-1)
    base = (n2 * r.reshape(3, 4)).sum(1) / n2.sum(1)
    np.testing.assert_allclose(adv, r.reshape(3, 4) - base[:, None], rtol=1e-5, atol=1e-6)

    def second_moment(b):
        return (((r.reshape(3, 4) - b[:, None]) ** 2) * n2).sum(1)

    for shift in (-0.05, 0.05):
        assert np.all(second_moment(base + shift) > second_moment(base))


def test_group_variance_rejects_groups_of_one():
    with pytest.raises(ValueError, match="at least 2"):
        GV.group_variance(jnp.ones((3, 1, 1)), jnp.ones(3))
    with pytest.raises(ValueError, match="group_size"):
        GV.score_gram(_toy_logp, {"w": jnp.ones((2, 2)), "b": jnp.ones(2)},
                      (jnp.ones((5, 2)), jnp.zeros(5, jnp.int32)), 2)


# -- task, warm-up data, rewards -----------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    model, tok = X.policy(0, hidden=16, layers=1)
    return model, tok, X.make_task(tok)


def test_completions_hand_worked_and_parse(tiny):
    _, _, task = tiny
    assert X.completion(3, 4, "direct") == "ACTION=7"
    assert X.completion(3, 4, "scratchpad") == "3+4=4+3=5+2=6+1=7+0 ACTION=7"
    assert X.completion(5, 0, "scratchpad") == "5+0 ACTION=5"
    for a, b in ((0, 0), (9, 9), (3, 4)):
        for style in ("direct", "scratchpad"):
            assert parse_text(task.env, X.completion(a, b, style)) == (a + b, True)
    with pytest.raises(ValueError, match="style"):
        X.completion(1, 2, "essay")


def test_sft_rows_are_prompt_then_completion(tiny):
    _, tok, task = tiny
    tokens, mask = X.sft_data(task, 6, p_direct=0.5, seed=3)
    for row, m in zip(np.asarray(tokens), np.asarray(mask)):
        text = tok.decode(list(row), skip_special_tokens=False)
        prompt, rest = text.split("\n", 1)
        a, b = (int(v) for v in prompt.removeprefix("Compute ").rstrip(".").split("+"))
        target = [X.completion(a, b, s) + "<eos>" for s in ("direct", "scratchpad")]
        assert rest.split("<pad>")[0] in target
        start = len(prompt) + 1
        assert m[:start].sum() == 0 and tok.decode(list(row[m > 0])) == rest.split("<pad>")[0]
    assert task.prompt_len == len("Compute 3+4.\n")


def test_all_problems_covers_every_sum(tiny):
    states = X.all_problems(tiny[2], repeats=2)
    pairs = set(zip(np.asarray(states.a).tolist(), np.asarray(states.b).tolist()))
    assert len(pairs) == 100 and states.a.shape == (200,)
    np.testing.assert_array_equal(states.answer, states.a + states.b)


def test_pack_places_completion_after_each_prompt():
    prompt = jnp.array([[1, 2, 3, 0], [4, 5, 0, 0]])
    comp = jnp.array([[7, 8, 0], [9, 0, 0]])
    tokens, mask = X._pack(prompt, jnp.array([3, 2]), comp, jnp.array([2, 1]))
    np.testing.assert_array_equal(tokens, [[1, 2, 3, 7, 8, 0, 0], [4, 5, 9, 0, 0, 0, 0]])
    np.testing.assert_array_equal(mask, [[0, 0, 0, 1, 1, 0, 0], [0, 0, 1, 0, 0, 0, 0]])


def test_shaped_reward_hand_worked(tiny):
    _, tok, _ = tiny
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    rows = [enc("abcdabcd") + [0, 0], enc("ACTION=7") + [2, 0], enc("x" * 10)]
    batch = dict(completion=jnp.asarray(rows), length=jnp.array([8, 9, 10]),
                 correct=jnp.array([True, False, False]), done=jnp.array([True, True, False]))
    np.testing.assert_array_equal(R.shaped_reward(batch, reward="binary", max_len=10), [1, 0, 0])
    got = R.shaped_reward(batch, reward="cosine", max_len=10, rep_ngram=4)

    def cos(t, lo, hi):
        return lo + (hi - lo) * 0.5 * (1 + np.cos(np.pi * t / 10))

    # "abcdabcd": the 4-gram at 4 repeats the one at 0, so tokens 4..7 get -0.05 each;
    # "xxxxxxxxxx" repeats from position 1 on (9 tokens) and never stopped (r_exceed).
    want = [cos(8, 1.0, 2.0) - 0.2, cos(9, 0.0, -10.0), -10.0 - 0.45]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_advantages_dispatch_and_config_errors():
    r, lengths = jnp.array([1.0, 0.0, 0.0, 1.0]), jnp.array([10, 30, 5, 5])
    np.testing.assert_allclose(R.advantages(r, lengths, 2, "opo"),
                               [1 - 10 / 40, 0 - 10 / 40, 0 - 0.5, 1 - 0.5], rtol=1e-6)
    np.testing.assert_allclose(R.advantages(r, lengths, 2, "mean"), [0.5, -0.5, -0.5, 0.5])
    with pytest.raises(ValueError, match="baseline"):
        R.advantages(r, lengths, 2, "vine")
    with pytest.raises(ValueError, match="RLConfig.baseline"):
        R.RLConfig(baseline="ppo")
    with pytest.raises(ValueError, match="RLConfig.reward"):
        R.RLConfig(reward="length")


# -- the tiny decoder end to end ------------------------------------------------

def test_decoder_gram_matches_per_sample_grads(tiny):
    model, _, _ = tiny
    graphdef, params = nnx.split(model)
    tokens = jax.random.randint(jax.random.key(0), (4, 9), 4, 100)
    mask = jnp.arange(9)[None, :] >= jnp.array([[3], [5], [4], [6]])

    def logp_fn(p, x):
        return token_logprobs(nnx.merge(graphdef, p), x[0][None], x[1][None]).sum()

    gram = GV.score_gram(logp_fn, params, (tokens, mask), 2)
    grad_one = jax.jit(jax.grad(logp_fn))  # one sample at a time, no vmap
    flat = [np.concatenate([np.ravel(leaf).astype(np.float64) for leaf in jax.tree.leaves(
        grad_one(params, (tokens[i], mask[i])))]) for i in range(4)]
    want = np.array([[[flat[2 * k + i] @ flat[2 * k + j] for j in range(2)] for i in range(2)]
                     for k in range(2)])
    np.testing.assert_allclose(gram, want, rtol=1e-4)


def test_rl_step_on_the_tiny_decoder(tiny):
    model, _, task = tiny
    graphdef, params = nnx.split(model)
    cfg = R.RLConfig(num_groups=2, group_size=2, max_new_tokens=4, lr=1e-3)
    init, step = R.make_rl_step(task, graphdef, cfg)
    new, _, metrics = step(params, init(params), jax.random.key(1))
    assert all(np.isfinite(float(v)) for v in metrics.values())
    # An untrained model is never right: every group has equal rewards, GRPO
    # gives A = 0, and with no other loss term the parameters must not move.
    assert float(metrics["accuracy"]) == 0.0 and float(metrics["loss"]) == 0.0
    same = jax.tree.map(lambda a, c: bool(jnp.array_equal(a, c)), params, new)
    assert all(jax.tree.leaves(same))
    assert 1 <= float(metrics["length"]) <= 4
