"""RL algorithms: per-turn advantages against plain-numpy references on a
hand-built trajectory, batch packing, and the shared loss against a naive
REINFORCE gradient."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrl_lm import sampling
from jaxrl_lm.algorithms import advantage_fn, common, grpo
from jaxrl_lm.config import AlgoSection
from jaxrl_lm.models import Decoder, ModelConfig
from jaxrl_lm.rollout import Trajectory

T, B, P, N = 3, 4, 5, 3

# Episode 0: 3 turns, 1: 2 turns, 2: 1 turn, 3: 3 turns (never done: truncated).
ACTIVE = np.array([[1, 1, 1, 1], [1, 1, 0, 1], [1, 0, 0, 1]], bool)
DONE = np.array([[0, 0, 1, 0], [0, 1, 1, 0], [1, 1, 1, 0]], bool)
REWARD = np.array([[0.0, -5.0, 1.0, 0.0], [0.5, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, -1.0]], np.float32)
CLEN = np.array([[2, 3, 1, 3], [1, 2, 3, 3], [3, 1, 2, 2]], np.int32)


def make_traj(reward=REWARD) -> Trajectory:
    rng = np.random.default_rng(0)
    plen = rng.integers(2, P + 1, (T, B)).astype(np.int32)
    prompt = rng.integers(3, 20, (T, B, P)).astype(np.int32)
    prompt = np.where(np.arange(P) < plen[..., None], prompt, 0)
    comp = rng.integers(3, 20, (T, B, N)).astype(np.int32)
    comp = np.where(np.arange(N) < CLEN[..., None], comp, 0)
    logp = np.where(np.arange(N) < CLEN[..., None], -rng.random((T, B, N)), 0).astype(np.float32)
    z = lambda dt: np.zeros((T, B), dt)  # noqa: E731
    return Trajectory(jnp.asarray(prompt), jnp.asarray(plen), jnp.asarray(comp), jnp.asarray(CLEN),
                      jnp.asarray(logp), jnp.asarray(ACTIVE), jnp.asarray(z(np.int32)),
                      jnp.ones((T, B), bool), jnp.asarray(reward * ACTIVE),
                      jnp.asarray(reward * ACTIVE), jnp.asarray(DONE), None)


def episode_R():
    return (REWARD * ACTIVE).sum(0).astype(np.float64)


def test_grpo_group_std_and_broadcast():
    algo = AlgoSection(name="grpo", group_size=2)
    sig = advantage_fn("grpo")(algo, make_traj())
    r = episode_R().reshape(2, 2)
    want = ((r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True) + 1e-6)).reshape(-1)
    np.testing.assert_allclose(sig.adv, np.broadcast_to(want, (T, B)), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(sig.keep, ACTIVE)


def test_dr_grpo_opo_rloo_episode_baselines():
    traj, r = make_traj(), episode_R().reshape(2, 2)
    got = advantage_fn("dr_grpo")(AlgoSection(name="dr_grpo", group_size=2), traj).adv[0]
    np.testing.assert_allclose(got, (r - r.mean(1, keepdims=True)).reshape(-1), atol=1e-6)
    # OPO: lengths are the generated tokens over active turns; b = sum(l r) / sum(l)
    l = (CLEN * ACTIVE).sum(0).reshape(2, 2).astype(np.float64)
    b = (l * r).sum(1, keepdims=True) / l.sum(1, keepdims=True)
    got = advantage_fn("opo")(AlgoSection(name="opo", group_size=2), traj).adv[0]
    np.testing.assert_allclose(got, (r - b).reshape(-1), atol=1e-5)
    r4 = episode_R()
    want = np.array([r4[i] - (r4.sum() - r4[i]) / 3 for i in range(4)])
    got = advantage_fn("rloo")(AlgoSection(name="rloo", group_size=4), traj).adv[0]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_reinforce_returns_to_go_minus_turn_mean():
    g = np.zeros((T, B))
    for b in range(B):
        acc = 0.0
        for t in reversed(range(T)):
            acc = REWARD[t, b] * ACTIVE[t, b] + (0.0 if DONE[t, b] else 0.9 * acc)
            g[t, b] = acc
    base = np.array([(g[t] * ACTIVE[t]).sum() / ACTIVE[t].sum() for t in range(T)])[:, None]
    sig = advantage_fn("reinforce")(AlgoSection(name="reinforce", gamma=0.9), make_traj())
    np.testing.assert_allclose(sig.adv, (g - base) * ACTIVE, atol=1e-5)


def test_ppo_gae_over_turns_whitened():
    values = np.array([[0.1, 0.2, 0.3, 0.4], [0.5, -0.2, 9.0, 0.0], [0.3, 9.0, 9.0, 0.2]],
                      np.float32)
    algo = AlgoSection(name="ppo", gamma=0.9, lam=0.8)
    sig = advantage_fn("ppo")(algo, make_traj(), jnp.asarray(values))
    v = values * ACTIVE
    a = np.zeros((T, B))
    for b in range(B):
        acc = 0.0
        for t in reversed(range(T)):
            end = DONE[t, b] or not ACTIVE[t, b]
            nxt = 0.0 if (end or t == T - 1) else v[t + 1, b]
            delta = REWARD[t, b] * ACTIVE[t, b] + 0.9 * nxt - v[t, b]
            acc = delta + (0.0 if end else 0.9 * 0.8 * acc)
            a[t, b] = acc
    np.testing.assert_allclose(sig.returns * ACTIVE, (a + v) * ACTIVE, atol=1e-5)
    m = a[ACTIVE]
    white = (a - m.mean()) / np.sqrt(m.var() + 1e-8)
    np.testing.assert_allclose(sig.adv, white * ACTIVE, atol=1e-4)


def test_dynamic_sampling_drops_groups_without_signal():
    reward = REWARD.copy()
    reward[:, 2:] = 0.0  # group 1: both episodes return 0
    traj = make_traj(reward)
    algo = AlgoSection(name="grpo", group_size=2, dynamic_sampling=True)
    keep = np.asarray(advantage_fn("grpo")(algo, traj).keep)
    np.testing.assert_array_equal(keep[:, 2:], False)
    np.testing.assert_array_equal(keep[:, :2], ACTIVE[:, :2])
    np.testing.assert_array_equal(grpo.group_has_signal(jnp.array([1.0, 1.0, 0.0, 2.0]), 2),
                                  [False, False, True, True])


def test_make_batch_masks_generated_tokens_of_kept_turns():
    traj = make_traj()
    sig = common.Advantages(jnp.arange(T * B, dtype=jnp.float32).reshape(T, B), traj.active)
    batch = common.make_batch(traj, sig, pad_id=0, kept_first=False)
    mask = np.asarray(batch["loss_mask"]).reshape(T, B, P + N)
    plen = np.asarray(traj.prompt_len)
    for t in range(T):
        for b in range(B):
            want = np.zeros(P + N)
            if ACTIVE[t, b]:
                want[plen[t, b]: plen[t, b] + CLEN[t, b]] = 1
            np.testing.assert_array_equal(mask[t, b], want)
    np.testing.assert_array_equal(batch["adv"], np.arange(T * B))
    # the default order: rows with loss first, both kinds in turn-major order
    first = common.make_batch(traj, sig, pad_id=0)
    has_loss = np.asarray(batch["loss_mask"]).sum(-1) > 0
    want = np.concatenate([np.flatnonzero(has_loss), np.flatnonzero(~has_loss)])
    assert 0 < has_loss.sum() < T * B  # the case has both kinds of row
    for k in batch:
        np.testing.assert_array_equal(first[k], np.asarray(batch[k])[want])


def tiny_model(value_head=False):
    cfg = ModelConfig(vocab_size=24, hidden_size=16, intermediate_size=32, num_layers=1,
                      num_heads=2, num_kv_heads=1, value_head=value_head)
    return Decoder(cfg, rngs=nnx.Rngs(0))


def test_on_policy_loss_gradient_is_reinforce():
    """At ratio 1 the clipped loss's gradient is -sum(A * grad logp) / #tokens."""
    traj = make_traj()
    model = tiny_model()
    algo = AlgoSection(name="grpo", group_size=2)
    sig = advantage_fn("grpo")(algo, traj)
    batch = common.make_batch(traj, sig, pad_id=0)
    lp = sampling.token_logprobs(model, batch["tokens"], batch["loss_mask"],
                                 positions_bt=batch["positions"])
    batch["old_logp"] = lp  # the sampling policy is the current one
    loss_fn = common.make_loss(algo, max_len=P + N)
    graphdef, params = nnx.split(model)

    def ours(p):
        (s, d), _ = loss_fn(nnx.merge(graphdef, p), batch)
        return s / d

    def naive(p):
        m = batch["loss_mask"]
        logp = sampling.token_logprobs(nnx.merge(graphdef, p), batch["tokens"], m,
                                       positions_bt=batch["positions"])
        return -(batch["adv"][:, None] * logp * m).sum() / m.sum()

    g1, g2 = jax.grad(ours)(params), jax.grad(naive)(params)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
    (s, d), metrics = loss_fn(model, batch)
    assert float(metrics["ratio_mean"]) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(s / d, -(batch["adv"][:, None] * batch["loss_mask"]).sum()
                               / batch["loss_mask"].sum(), atol=1e-6)


def test_kl_and_value_terms():
    traj = make_traj()
    model = tiny_model(value_head=True)
    algo = AlgoSection(name="ppo", beta=0.5, vf_coef=0.25)
    values = common.turn_values(model, traj)
    sig = advantage_fn("ppo")(algo, traj, values)
    batch = common.make_batch(traj, sig, pad_id=0, kept_first=False)
    loss_fn = common.make_loss(algo, max_len=P + N)
    (s, d), m = loss_fn(model, batch, model)  # reference == policy: KL is 0
    assert float(m["kl"]) == pytest.approx(0.0, abs=1e-6)
    # value loss: 0.5 (V - returns)^2 per turn, weighted by its generated tokens
    mask = np.asarray(batch["loss_mask"])
    v = np.asarray(values).reshape(-1)
    err = 0.5 * (v - np.asarray(batch["returns"])) ** 2
    want = (err[:, None] * mask).sum() / mask.sum()
    assert float(m["value_loss"]) == pytest.approx(want, rel=1e-4)
    with pytest.raises(ValueError, match="reference params"):
        loss_fn(model, batch)


def test_precomputed_reference_logprobs_match_the_reference_model():
    """`ref_logprobs` (chunked, empty chunks skipped) gives the loss the same KL
    term, value and gradient as scoring the reference inside the loss."""
    traj = make_traj()
    policy, ref = tiny_model(), Decoder(tiny_model().config, rngs=nnx.Rngs(1))
    algo = AlgoSection(name="grpo", group_size=2, beta=0.3, kl_kind="k3")
    sig = advantage_fn("grpo")(algo, traj)
    batch = common.make_batch(traj, sig, pad_id=0)  # loss rows first
    n_loss = int((np.asarray(batch["loss_mask"]).sum(-1) > 0).sum())
    chunks = 4  # 12 rows: 3 per chunk; the last chunk has no loss rows (the cond's other branch)
    assert n_loss <= T * B - T * B // chunks
    pre = common.ref_logprobs(ref, batch, chunks=chunks)
    want = sampling.token_logprobs(ref, batch["tokens"], batch["loss_mask"],
                                   positions_bt=batch["positions"])
    # equal values only: a skipped chunk and a computed one both give zeros on
    # rows without loss tokens, so this does not show the skip happens
    np.testing.assert_allclose(pre, want, atol=1e-6)
    loss_fn = common.make_loss(algo, max_len=P + N)
    graphdef, params = nnx.split(policy)

    def loss(p, b, *ref_model):
        (s, d), m = loss_fn(nnx.merge(graphdef, p), b, *ref_model)
        return s / d, m["kl"]

    (l1, kl1), g1 = jax.value_and_grad(loss, has_aux=True)(params, batch, ref)
    (l2, kl2), g2 = jax.value_and_grad(loss, has_aux=True)(params, {**batch, "ref_logp": pre})
    assert float(kl1) > 1e-3  # two different models: the KL term is live
    np.testing.assert_allclose([l2, kl2], [l1, kl1], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="chunks"):
        common.ref_logprobs(ref, batch, chunks=5)


def test_registry_declares_each_algorithm():
    from jaxrl_lm import algorithms

    assert set(algorithms.names()) == {"sft", "grpo", "dr_grpo", "opo", "rloo", "reinforce", "ppo",
                                       "dpo", "ipo", "hinge", "robust", "simpo", "rpo"}
    preference = [n for n in algorithms.names() if algorithms.get(n).kind == "preference"]
    assert sorted(preference) == ["dpo", "hinge", "ipo", "robust", "rpo", "simpo"]
    assert [n for n in preference if not algorithms.get(n).needs_reference] == ["simpo"]
    assert [n for n in algorithms.names() if algorithms.get(n).needs_value] == ["ppo"]
    assert algorithms.get("sft").kind == "sft" and algorithms.get("sft").advantages is None
    assert algorithms.get("dr_grpo").advantages is not algorithms.get("grpo").advantages
    for name in algorithms.names():
        assert algorithms.get(name).summary
    with pytest.raises(ValueError, match="already registered"):
        algorithms.register(algorithms.Algorithm("grpo", "rl", advantage_fn("opo")))
    with pytest.raises(ValueError, match="algo.name='a2c': must be one of sft"):
        algorithms.get("a2c")


def test_config_rules_for_algorithms():
    from jaxrl_lm.config import ConfigError

    with pytest.raises(ConfigError, match="algo.epochs=2: must be 1 for opo"):
        AlgoSection(name="opo", epochs=2)
    with pytest.raises(ConfigError, match="algo.group_size=1: must be >= 2 for rloo"):
        AlgoSection(name="rloo")
    with pytest.raises(ConfigError, match="algo.ratio_level='seq'"):
        AlgoSection(ratio_level="seq")
    with pytest.raises(ValueError, match="RL algorithms are"):
        advantage_fn("sft")
    assert dataclasses.replace(AlgoSection(), name="reinforce").name == "reinforce"


def test_turn_credit_whitens_each_turns_own_faults():
    """algo.turn_weight: a turn with an unparsable answer or an illegal action gets
    r = -1 (else 0), whitened over the kept turns, added to the episode advantage."""
    legal = np.ones((T, B, 3), bool)
    legal[1, 3, 2] = False  # turn 1 of episode 3 plays cell 2: illegal
    action = np.zeros((T, B), np.int32)
    action[1, 3] = 2
    action[2, 0] = 7  # out of range: illegal
    valid = np.ones((T, B), bool)
    valid[0, 1] = False  # unparsable
    valid[2, 2] = False  # unparsable but the episode was over: no credit
    traj = make_traj()._replace(action=jnp.asarray(action), valid=jnp.asarray(valid),
                                states=SimpleNamespace(legal_action_mask=jnp.asarray(legal)))
    base = common.Advantages(jnp.full((T, B), 0.5, jnp.float32), traj.active)
    got = np.asarray(common.turn_credit(traj, base, 2.0).adv)

    r = np.zeros((T, B))
    r[0, 1] = r[1, 3] = r[2, 0] = -1.0
    m = r[ACTIVE]  # 9 kept turns, 3 faults
    want = 0.5 + np.where(ACTIVE, 2.0 * (r - m.mean()) / np.sqrt(m.var() + 1e-8), 0.0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # hand check of one entry: mean -1/3, std sqrt(2)/3 -> a fault gets 0.5 - 2*sqrt(2)
    np.testing.assert_allclose(got[0, 1], 0.5 - 2.0 * np.sqrt(2.0), rtol=1e-5)

    clean = make_traj()._replace(states=SimpleNamespace(legal_action_mask=jnp.ones((T, B, 3), bool)))
    np.testing.assert_array_equal(common.turn_credit(clean, base, 2.0).adv, base.adv)
    from jaxrl_lm.config import ConfigError

    with pytest.raises(ConfigError, match="algo.turn_weight=1.0: must be 0 for ppo"):
        AlgoSection(name="ppo", turn_weight=1.0)
    with pytest.raises(ConfigError, match="algo.turn_weight=-1.0: must be >= 0"):
        AlgoSection(name="grpo", turn_weight=-1.0)
