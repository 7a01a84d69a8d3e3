"""One API test for every registered env (pgx's api_test idea), under jit and
jit(vmap): state shapes and dtypes, batch consistency, absorbing terminals,
legal masks (also for every scripted baseline), reward bounds, both illegal-
action rules, auto-reset, clear errors, and >= 1000 random episodes per env."""

from __future__ import annotations

import dataclasses
import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_lm import envs
from jaxrl_lm.envs.core import AutoReset, State

# Tests compile many small programs once and run them briefly: XLA's
# cheapest backend optimisation level compiles ~3x faster here.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

NAMES = envs.registered()
N_EPISODES = 1000
N_BASELINE = 64


def random_legal(key, mask):
    return jax.random.categorical(key, jnp.where(mask, 0.0, -jnp.inf)).astype(jnp.int32)


def same_tree(a, b):
    leaves = jax.tree.leaves(jax.tree.map(lambda x, y: jnp.all(x == y), a, b))
    return jnp.all(jnp.stack(leaves))


def baselines_of(env):
    return importlib.import_module(type(env).__module__).BASELINES


@pytest.mark.parametrize("name", NAMES)
def test_shapes_dtypes_and_batching(name):
    env = envs.make(name)
    keys = jax.random.split(jax.random.PRNGKey(0), 3)

    @jit
    def run(keys):
        batch = jax.vmap(env.init)(keys)
        acts = jax.vmap(random_legal)(keys, batch.legal_action_mask)
        batch2 = jax.vmap(env.step)(batch, acts, keys)
        one = env.init(keys[1])
        return batch, batch2, one, env.step(one, acts[1], keys[1]), env.render_pieces(one)

    batch, batch2, state, state2, pieces = run(keys)
    assert isinstance(state, State)
    assert state.reward.shape == () and state.reward.dtype == jnp.float32
    assert state.done.shape == () and state.done.dtype == jnp.bool_
    assert state.legal_action_mask.shape == (env.num_actions,)
    assert state.legal_action_mask.dtype == jnp.bool_
    assert state.step_count.shape == () and state.step_count.dtype == jnp.int32
    assert not bool(state.done) and int(state.step_count) == 0 and bool(state.legal_action_mask.any())
    lo, hi = env.reward_range
    assert lo <= min(0.0, env.illegal_penalty) and hi >= lo
    # Stepping never changes the structure, shapes or dtypes; jit(vmap) of a
    # batch equals jit of one element.
    spec = lambda t: jax.tree.map(lambda x: (x.shape, x.dtype), t)  # noqa: E731
    assert spec(state2) == spec(state)
    assert spec(batch2) == spec(batch) == jax.tree.map(lambda x: ((3, *x[0]), x[1]), spec(state),
                                                       is_leaf=lambda x: isinstance(x, tuple))
    assert bool(same_tree(jax.tree.map(lambda x: x[1], batch), state))
    assert bool(same_tree(jax.tree.map(lambda x: x[1], batch2), state2))
    assert pieces.shape == (env.max_render_pieces,) and pieces.dtype == jnp.int32
    assert int(pieces.min()) >= -1 and int(pieces.max()) < len(env.text_pieces())
    assert len(env.action_strings()) == env.num_actions


def episode_checks(env, key, with_baselines: bool):
    """One episode of max_steps + 1 steps; returns per-episode invariants.

    With baselines, each step plays the action of one baseline (picked per
    episode) half of the time, else a random legal one; every baseline's
    action is checked for legality on every visited state."""
    bl = list(baselines_of(env).values()) if with_baselines else []
    k0, k_pick, k1 = jax.random.split(key, 3)
    which = jax.random.randint(k_pick, (), 0, max(len(bl), 1))
    lo, hi = env.reward_range

    def body(carry, k):
        state, ok = carry
        k_a, k_b, k_mix, k_s = jax.random.split(k, 4)
        action = random_legal(k_a, state.legal_action_mask)
        if bl:
            acts = jnp.stack([jnp.asarray(f(env, state, k_b)).astype(jnp.int32) for f in bl])
            in_range = (acts >= 0) & (acts < env.num_actions)
            legal = in_range & state.legal_action_mask[jnp.clip(acts, 0, env.num_actions - 1)]
            ok["baseline_legal"] &= state.done | legal.all()
            action = jnp.where(jax.random.bernoulli(k_mix), acts[which], action)
        new = env.step(state, action, k_s)
        frozen = same_tree(new, state.replace(reward=jnp.zeros_like(state.reward)))
        ok["absorbing"] &= ~state.done | frozen
        ok["count"] &= state.done | (new.step_count == state.step_count + 1)
        ok["mask_nonempty"] &= new.done | new.legal_action_mask.any()
        if env.fixed_legal_mask:  # AutoReset relies on it: every mask is init's
            ok["fixed_mask"] &= jnp.all(new.legal_action_mask == mask0)
        ok["reward_bounded"] &= (new.reward >= lo) & (new.reward <= hi)
        ok["finite"] &= jnp.isfinite(new.reward)
        return (new, ok), new.reward

    ok = {k: jnp.bool_(True) for k in ("baseline_legal", "absorbing", "count", "mask_nonempty",
                                       "fixed_mask", "reward_bounded", "finite")}
    keys = jax.random.split(k1, env.max_steps + 1)
    state0 = env.init(k0)
    mask0 = state0.legal_action_mask
    if env.fixed_legal_mask:  # and init's is the same for every key
        ok["fixed_mask"] &= jnp.all(mask0 == env.init(jax.random.PRNGKey(0)).legal_action_mask)
    (final, ok), rewards = jax.lax.scan(body, (state0, ok), keys)
    ok["done_by_max_steps"] = final.done & (final.step_count <= env.max_steps)
    return ok, rewards.sum()


@pytest.mark.parametrize("name", NAMES)
def test_random_and_baseline_episodes(name):
    """1000 episodes of random legal moves, and 64 where baselines play half
    of the moves (baselines can be costly: kept to a small batch)."""
    env = envs.make(name)

    @jit
    def run(key):
        k_r, k_b = jax.random.split(key)
        rand = jax.vmap(lambda k: episode_checks(env, k, False))(jax.random.split(k_r, N_EPISODES))
        base = jax.vmap(lambda k: episode_checks(env, k, True))(jax.random.split(k_b, N_BASELINE))
        return rand, base

    for kind, (ok, returns) in zip(("random", "baseline"), run(jax.random.PRNGKey(1))):
        for check, flags in ok.items():
            assert bool(flags.all()), f"{name}: {check} fails in {int((~flags).sum())} {kind} episodes"
        assert bool(jnp.isfinite(returns).all())


def illegal_check(env, key):
    """An illegal action (a masked one if the state has any, else one past
    the range, and -1) follows env.illegal, from a state one step in."""
    k0, k1, k2 = jax.random.split(key, 3)
    state = env.init(k0)
    # One random legal step first, so some states have masked actions.
    state = env.step(state, random_legal(k1, state.legal_action_mask), k1)
    masked = ~state.legal_action_mask
    bad = jnp.where(masked.any(), jnp.argmax(masked), env.num_actions).astype(jnp.int32)
    outs = [env.step(state, a, k2) for a in (bad, jnp.int32(-1))]
    if env.illegal == "end":
        return state.done | jnp.stack([(o.reward == -0.5) & o.done for o in outs]).all()
    # "random": the same as some legal action taken with the same key, with
    # the penalty added to its reward.
    legal = jax.vmap(lambda a: env.step(state, a, k2))(jnp.arange(env.num_actions))
    oks = []
    for o in outs:
        match = jax.vmap(lambda s: same_tree(s.replace(reward=o.reward), o))(legal)
        reward_ok = jnp.abs(legal.reward - (o.reward + 0.5)) < 1e-6
        oks.append((match & reward_ok & state.legal_action_mask).any())
    return state.done | jnp.stack(oks).all()


@pytest.mark.parametrize("name", NAMES)
def test_illegal_actions(name):
    env_end = envs.make(name, illegal="end", illegal_penalty=-0.5)
    env_rand = envs.make(name, illegal="random", illegal_penalty=-0.5)
    for env in (env_end, env_rand):
        assert env.reward_range[0] <= -0.5

    @jit
    def run(keys):
        return (jax.vmap(lambda k: illegal_check(env_end, k))(keys),
                jax.vmap(lambda k: illegal_check(env_rand, k))(keys))

    ok_end, ok_rand = run(jax.random.split(jax.random.PRNGKey(2), 32))
    assert bool(ok_end.all()), "illegal='end'"
    assert bool(ok_rand.all()), "illegal='random'"


@pytest.mark.parametrize("name", NAMES)
def test_auto_reset(name):
    env = envs.make(name)
    wrapped = AutoReset(env)
    n_steps = 2 * env.max_steps + 3

    def run(key):
        def body(state, k):
            new = wrapped.step(state, random_legal(k, state.legal_action_mask), k)
            fresh = env.init(wrapped.reset_key(k))
            is_fresh = same_tree(new.replace(reward=fresh.reward, done=fresh.done), fresh)
            return new, (new.done, ~new.done | is_fresh, new.step_count, new.reward)

        return jax.lax.scan(body, wrapped.init(key), jax.random.split(key, n_steps))[1]

    done, fresh_ok, count, reward = jit(jax.vmap(run))(jax.random.split(jax.random.PRNGKey(3), 16))
    assert bool(fresh_ok.all())
    assert bool((jnp.where(done, count, 0) == 0).all())
    assert bool((count <= env.max_steps).all())
    assert bool((done.sum(1) >= n_steps // env.max_steps).all())
    lo, hi = env.reward_range
    assert bool(((reward >= lo) & (reward <= hi)).all())


@pytest.mark.parametrize("name", NAMES)
def test_bad_options_raise(name):
    with pytest.raises(ValueError, match="illegal"):
        envs.make(name, illegal="ignore")
    with pytest.raises(ValueError, match="no_such_option"):
        envs.make(name, no_such_option=1)
    fields = [f.name for f in dataclasses.fields(type(envs.make(name)))]
    assert "illegal" in fields and "illegal_penalty" in fields


@pytest.mark.parametrize("name", NAMES)
def test_wrong_option_types_raise(name):
    """Numeric options reject a bool, a string and (int options) a float,
    naming the field: before this, k=2.5 built a bandit that failed in jit."""
    env = envs.make(name)
    numeric = [f.name for f in dataclasses.fields(env)
               if type(getattr(env, f.name)) in (int, float)]
    assert "illegal_penalty" in numeric
    for field in numeric:
        value = getattr(env, field)
        bad = [True, str(value)] + ([value + 0.5] if isinstance(value, int) else [])
        for v in bad:
            with pytest.raises(ValueError, match=f"{field}="):
                envs.make(name, **{field: v})


def test_unknown_env_raises():
    with pytest.raises(ValueError, match="available"):
        envs.make("no_such_env")


def test_an_env_missing_a_member_cannot_be_built():
    """Env's members are abstract: an env that leaves out `_step` is a
    TypeError naming it at construction, not an error deep inside a trace."""
    from jaxrl_lm.envs.bandit import Bandit

    kept = ("num_actions", "max_steps", "_init", "reward_range", "action_strings",
            "text_pieces", "max_render_pieces", "render_pieces", "render_text")
    half = dataclasses.dataclass(frozen=True)(
        type("Half", (envs.core.Env,), {name: getattr(Bandit, name) for name in kept}))
    with pytest.raises(TypeError, match="_step"):
        half()
