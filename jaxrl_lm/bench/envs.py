"""`jaxrl-lm bench envs [--json]`: steps/s of every env against pgx and gymnax.

One harness for every side: B envs run `--steps` steps in one jitted
`lax.scan` over vmapped steps, each step playing a uniformly random legal
action (`random_legal`), with auto-reset (ours: `envs.AutoReset`, pgx:
`pgx.experimental.auto_reset`, gymnax: its built-in reset). Each step the
harness draws, per env, the action's random bits and the key passed to the
env's step (`--rng`):

  hash      (default) hashed from the env's seed words and the step number
            (`hashed_draws`: MurmurHash3 finalisers, a counter-based
            generator): the null harness ran 152-193 M steps/s with it at
            batch 4096 on the 2-core CPU, 61 M with threefry;
  threefry  jax.random.split / bits per step, as a plain jit(vmap) loop
            does. XLA:CPU runs threefry as a rolled loop: these two draws
            and the rank sampler then cost ~2/3 of a pgx tic-tac-toe step
            before any env runs, so every ratio is squeezed towards 1.

Either way the draws are the same for every side, and the keys are valid
keys of the default impl (pgx and gymnax draw from them with jax.random). Compile time is
measured on its own (`lower().compile()`); steps/s is B * steps over the
best of `--reps` timed calls. Ratios are against the named baseline at the
same batch size, measured in the same run:

  tictactoe (random opponent)   vs pgx "tic_tac_toe"
  bandit (k=2, bernoulli, 100)  vs gymnax "BernoulliBandit-misc" (2 arms, 100)
  every env                     vs "null", the harness alone (the ceiling)

A step is one `env.step` call: for our tic-tac-toe that is the agent's move
plus the opponent's reply, for pgx one move of either player.

The text table times `render` (state -> prompt ids) and `parse` (response
ids -> action) of envs/text.py with the character tokenizer, jit(vmap)'d.
"""

from __future__ import annotations

import functools
import json
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxrl_lm import envs
from jaxrl_lm.cli_args import ArgumentParser, int_list
from jaxrl_lm.envs.bits import GOLDEN, fmix32
from jaxrl_lm.envs.core import AutoReset
from jaxrl_lm.envs.text import TextInterface

# (row name, env name, options, baseline row)
OURS = [
    ("tictactoe", "tictactoe", {}, "pgx tic_tac_toe"),
    ("bandit k=2 bernoulli", "bandit", {"k": 2, "dist": "bernoulli", "horizon": 100},
     "gymnax BernoulliBandit"),
]
# Setup (not timed) compiles at XLA's cheapest backend level: ~3x faster.
setup_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
RNGS = ("hash", "threefry")
SMALL = 32  # up to this many actions, sample by rank; above, by rejection
TRIES = 16  # rejection tries per step before the exact (rank) fallback


def _mulhi(bits_b: jax.Array, n_b: jax.Array) -> jax.Array:
    """floor(bits * n / 2**32) for uint32 bits and n < 2**16 (Lemire's
    multiply-shift: uniform over [0, n) up to a bias <= n / 2**32, like
    bits % n, but in vectorisable multiplies instead of a division)."""
    hi = (bits_b >> 16) * n_b
    lo = (bits_b & jnp.uint32(0xFFFF)) * n_b
    return (hi + (lo >> 16)) >> 16


def _by_rank(bits_b: jax.Array, mask_ba: jax.Array) -> jax.Array:
    """The r-th legal action of each row, r uniform in [0, #legal) from the bits.

    Up to SMALL actions the running count is unrolled over the rows of the
    transposed mask, so the work is elementwise over the batch (XLA's CPU
    backend runs a cumsum or argmax over a short minor axis as a slow
    reduce-window or row reduction), and the pick ends in a reduction over
    the actions: XLA materialises a reduction once, where it would re-run a
    cheap elementwise sampler inside every fusion that reads the actions,
    per element of the [B, ...] outputs that broadcast them."""
    b, a = mask_ba.shape
    if a <= SMALL:
        m_ab = mask_ba.T.astype(jnp.uint32)
        seen = [jnp.zeros((b,), jnp.uint32)]
        for row_b in m_ab:
            seen.append(seen[-1] + row_b)
        r_b = _mulhi(bits_b, seen.pop())
        hit_ab = (m_ab > 0) & (jnp.stack(seen) == r_b[None, :])
        return jnp.sum(jnp.where(hit_ab, jnp.arange(a, dtype=jnp.int32)[:, None], 0), axis=0)
    count_ba = jnp.cumsum(mask_ba.astype(jnp.uint32), axis=1)
    r_b = _mulhi(bits_b, jnp.maximum(count_ba[:, -1], 1))
    return jnp.argmax(count_ba > r_b[:, None], axis=1).astype(jnp.int32)


def random_legal(key: jax.Array, mask_ba: jax.Array) -> jax.Array:
    """i32[B]: a uniformly random legal action of each row of `mask_ba`, from
    one threefry draw of 32 bits per row (`random_legal_from_bits`)."""
    return random_legal_from_bits(jax.random.bits(key, (mask_ba.shape[0],), jnp.uint32), mask_ba)


def random_legal_from_bits(bits_b: jax.Array, mask_ba: jax.Array) -> jax.Array:
    """i32[B]: a uniformly random legal action of each row of `mask_ba`, from
    32 uniformly random bits per row (bias <= A / 2**32). Up to SMALL actions:
    the r-th legal action, r = floor(bits * #legal / 2**32). Above (a prefix
    sum over thousands of actions per step would cost more than most envs):
    the first legal one of up to TRIES indices hashed from the bits, which is
    uniform over the legal actions. Tries are made one at a time in a
    `lax.while_loop` that stops once every row has hit, so a mostly-legal
    mask costs one gather per row, not TRIES; only if some row misses every
    try does the whole batch take the exact rank path (a real `lax.cond`: the
    harness is batched by hand, not vmapped, so the fallback costs nothing
    when unused)."""
    b, a = mask_ba.shape
    if a >= 2**16:
        raise ValueError(f"random_legal: {a} actions; at most 65535 are supported")
    if a <= SMALL:
        return _by_rank(bits_b, mask_ba)
    rows_b = jnp.arange(b)

    def one_try(carry):
        t, pick_b, hit_b = carry
        salt = (t + 1).astype(jnp.uint32) * jnp.uint32(0x9E3779B9)
        try_b = _mulhi(fmix32(bits_b ^ salt), jnp.uint32(a)).astype(jnp.int32)
        pick_b = jnp.where(hit_b, pick_b, try_b)
        return t + 1, pick_b, hit_b | mask_ba[rows_b, try_b]

    _, pick_b, hit_b = jax.lax.while_loop(
        lambda c: (c[0] < TRIES) & ~c[2].all(), one_try,
        (jnp.int32(0), jnp.zeros((b,), jnp.int32), jnp.zeros((b,), jnp.bool_)))
    return jax.lax.cond(hit_b.all(), lambda: pick_b,
                        lambda: jnp.where(hit_b, pick_b, _by_rank(bits_b, mask_ba)))


def hashed_draws(data_bw: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(key words u32[B, W], action bits u32[B]) of scan step `t` for B envs
    whose seed keys have data `data_bw`: each env's words are hashed with the
    step number (two passes of MurmurHash3's finaliser, as
    `envs.bits.derive_key` does: every output word depends on every seed word
    and on t), the action bits are one more hash. Distinct (env, t) pairs give
    independent-looking draws, without threefry (tests/test_bench_envs.py
    checks uniformity and distinctness)."""
    h = jnp.broadcast_to(fmix32((t.astype(jnp.uint32) + 1) * jnp.uint32(GOLDEN)),
                         data_bw.shape[:1])
    for w in range(data_bw.shape[1]):
        h = fmix32(h ^ data_bw[:, w])
    words = []
    for w in range(data_bw.shape[1]):
        h = fmix32(h ^ data_bw[:, w])
        words.append(h)
    return jnp.stack(words, axis=1), fmix32(h ^ jnp.uint32(0x68E31DA4))


def harness(init: Callable, step: Callable, mask: Callable, reward: Callable,
            steps: int, rng: str = "hash", **jit_options) -> Callable:
    """keys[B] -> summed reward[B]: `steps` steps of B envs in one jitted
    lax.scan over vmapped steps (what jit(vmap(scan)) compiles to), with the
    per-step draws of `rng` (see the module docstring)."""
    if rng not in RNGS:
        raise ValueError(f"--rng {rng!r} unknown (allowed: {RNGS})")

    def run(keys_b):
        b = keys_b.shape[0]
        data = jax.random.key_data(keys_b)
        data_bw = data.reshape(b, -1).astype(jnp.uint32)

        def body(state, x):
            if rng == "threefry":
                k_act, k_step = jax.random.split(x)
                bits_b = jax.random.bits(k_act, (b,), jnp.uint32)
                step_keys = jax.random.split(k_step, b)
            else:
                words_bw, bits_b = hashed_draws(data_bw, x)
                step_keys = jax.random.wrap_key_data(
                    words_bw.reshape(data.shape).astype(data.dtype),
                    impl=jax.random.key_impl(keys_b))
            action_b = random_legal_from_bits(bits_b, jax.vmap(mask)(state))
            state = jax.vmap(step)(state, action_b, step_keys)
            return state, jax.vmap(reward)(state)

        if rng == "threefry":
            xs = jax.random.split(jax.random.fold_in(keys_b[0], b), steps)
        else:
            xs = jnp.arange(steps, dtype=jnp.uint32)
        _, r_tb = jax.lax.scan(body, jax.vmap(init)(keys_b), xs)
        return r_tb.sum(0)

    return jax.jit(run, **jit_options)


def ours(name: str, options: dict, steps: int, rng: str = "hash", **jit_options) -> Callable:
    env = AutoReset(envs.make(name, **options))
    return harness(env.init, env.step, lambda s: s.legal_action_mask, lambda s: s.reward, steps,
                   rng, **jit_options)


def null(steps: int, num_actions: int = 9, rng: str = "hash", **jit_options) -> Callable:
    """The harness alone: the state is the last action, the reward a copy of it
    (so XLA cannot drop the action sampling)."""
    return harness(lambda k: jnp.int32(0), lambda s, a, k: a,
                   lambda s: jnp.ones((num_actions,), bool),
                   lambda s: s.astype(jnp.float32), steps, rng, **jit_options)


def pgx_tictactoe(steps: int, rng: str = "hash", **jit_options) -> Callable:
    import pgx
    from pgx.experimental import auto_reset

    env = pgx.make("tic_tac_toe")
    return harness(env.init, auto_reset(env.step, env.init), lambda s: s.legal_action_mask,
                   lambda s: s.rewards[0], steps, rng, **jit_options)


def gymnax_bandit(steps: int, rng: str = "hash", **jit_options) -> Callable:
    import gymnax

    env, params = gymnax.make("BernoulliBandit-misc")

    def init(k):
        return env.reset(k, params)[1], jnp.float32(0)

    def step(s, a, k):
        state, r = env.step(k, s[0], a, params)[1:3]  # auto-resets when done
        return state, r.astype(jnp.float32)

    return harness(init, step, lambda s: jnp.ones((env.num_actions,), bool),
                   lambda s: s[1], steps, rng, **jit_options)


def time_calls(fns: list[Callable], args: tuple, reps: int) -> list[tuple[float, float, Any]]:
    """(compile seconds, best seconds of `reps` calls, output) of each jitted fn. The
    timed calls go round-robin, so a load spike on a shared machine hits
    every fn alike rather than one row."""
    compiled, compile_s, outs = [], [], []
    for fn in fns:
        t0 = time.perf_counter()
        compiled.append(fn.lower(*args).compile())
        compile_s.append(time.perf_counter() - t0)
        outs.append(jax.block_until_ready(compiled[-1](*args)))
    best = [float("inf")] * len(fns)
    for rep in range(reps):
        for i, fn in enumerate(compiled):
            if rep and best[i] > 1.0:  # slow rows: one timed call is precise enough
                continue
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            best[i] = min(best[i], time.perf_counter() - t0)
    return list(zip(compile_s, best, outs))


def step_rows(batches: list[int], steps: int, reps: int, env_names: list[str],
              echo: Callable = print, every_batch: bool = False, rng: str = "hash",
              **jit_options) -> list[dict]:
    """Steps/s rows. The baselines and their peers run at every batch size,
    the other envs at the largest only (unless `every_batch`)."""
    peers: list[tuple[str, Callable, str | None]] = [
        ("null", lambda: null(steps, rng=rng, **jit_options), None),
        ("pgx tic_tac_toe", lambda: pgx_tictactoe(steps, rng, **jit_options), None),
        ("gymnax BernoulliBandit", lambda: gymnax_bandit(steps, rng, **jit_options), None),
    ]
    peers += [(row, lambda n=n, o=o: ours(n, o, steps, rng, **jit_options), base)
              for row, n, o, base in OURS if n in env_names]
    rest = [(n, lambda n=n: ours(n, {}, steps, rng, **jit_options), None)
            for n in env_names if n != "tictactoe"]
    rows = []
    for batch in batches:
        sides = peers + (rest if every_batch or batch == max(batches) else [])
        keys = jax.random.split(jax.random.key(0), batch)
        times = time_calls([build() for _, build, _ in sides], (keys,), reps)
        rate = {row: batch * steps / t for (row, _, _), (_, t, _) in zip(sides, times)}
        for (row, _, base), (compile_s, _, _) in zip(sides, times):
            out = {"env": row, "batch": batch, "steps_per_s": rate[row], "compile_s": compile_s,
                   "baseline": base, "ratio": rate[row] / rate[base] if base else None,
                   "of_null": rate[row] / rate["null"]}
            rows.append(out)
            echo(_fmt_step(out))
    return rows


def played_states(env, key: jax.Array, batch: int) -> envs.State:
    """`batch` states after max_steps // 2 random legal steps (or done)."""

    def body(state, k):
        k_act, k_step = jax.random.split(k)
        # The barrier stops XLA constant-folding over an init mask (slow for
        # thousands of actions).
        mask = jax.lax.optimization_barrier(state.legal_action_mask)
        action = random_legal(k_act, mask)
        return jax.vmap(env.step)(state, action, jax.random.split(k_step, batch)), None

    @setup_jit
    def run(key):
        k_init, k_run = jax.random.split(key)
        state = jax.vmap(env.init)(jax.random.split(k_init, batch))
        n = max(env.max_steps // 2, 1)
        return jax.lax.scan(body, state, jax.random.split(k_run, n))[0]

    return run(key)


def text_rows(batch: int, reps: int, env_names: list[str], echo: Callable = print,
              response_len: int = 64, **jit_options) -> list[dict]:
    """Render and parse rates of states after a few random moves; L is the
    longest of (up to) 64 of their prompts, rounded up to 64 tokens."""
    from jaxrl_lm.models.tokenizer import char_tokenizer

    tok = char_tokenizer()
    rows = []
    for name in env_names:
        env = envs.make(name)
        k_init, k_act = jax.random.split(jax.random.key(1))
        states = played_states(env, k_init, batch)
        host = jax.device_get(states)
        longest = max(len(tok.encode(env.render_text(jax.tree.map(lambda x: x[i], host))).ids)
                      for i in range(min(batch, 64)))
        ti = TextInterface(env, tok, max_prompt_len=-(-longest // 64) * 64)
        acts = jax.random.randint(k_act, (batch,), 0, env.num_actions)
        width = ti.answer_ids.shape[1]
        ids = jnp.zeros((batch, response_len), jnp.int32).at[:, :width].set(ti.answer_ids[acts])
        render = jax.jit(jax.vmap(ti.render), **jit_options)
        parse = jax.jit(jax.vmap(ti.parse), **jit_options)
        (c_r, t_r, (_, lengths)), = time_calls([render], (states,), reps)
        (c_p, t_p, _), = time_calls([parse], (ids, ti.answer_len[acts]), reps)
        tokens = float(lengths.sum())
        out = {"env": name, "batch": batch, "prompt_len": ti.max_prompt_len,
               "renders_per_s": batch / t_r, "render_tokens_per_s": tokens / t_r,
               "parses_per_s": batch / t_p, "response_len": response_len,
               "compile_s": c_r + c_p}
        rows.append(out)
        echo(_fmt_text(out))
    return rows


STEP_HEADER = f"{'env':24s} {'batch':>6s} {'Msteps/s':>10s} {'compile':>8s} {'of null':>7s}  ratio"


def _fmt_step(r: dict) -> str:
    ratio = f"{r['ratio']:6.2f}x {r['baseline']}" if r["ratio"] else ""
    return (f"{r['env']:24s} {r['batch']:6d} {r['steps_per_s'] / 1e6:10.3f} "
            f"{r['compile_s']:8.2f} {r['of_null']:7.3f}  {ratio}")


def _fmt_text(r: dict) -> str:
    return (f"{r['env']:24s} {r['batch']:6d} {r['prompt_len']:6d} {r['renders_per_s'] / 1e3:10.1f} "
            f"{r['render_tokens_per_s'] / 1e6:10.2f} {r['parses_per_s'] / 1e3:10.1f} "
            f"{r['compile_s']:8.2f}")


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="jaxrl-lm bench envs", description=__doc__.split("\n")[0])
    p.add_argument("--batch", default="1,1024,4096", type=int_list,
                   help="comma-separated batch sizes")
    p.add_argument("--steps", type=int, default=100, help="scan length per call")
    p.add_argument("--reps", type=int, default=5, help="timed calls per row (best is kept)")
    p.add_argument("--text-batch", type=int, default=1024, help="states per render/parse call")
    p.add_argument("--every-batch", action="store_true",
                   help="run every env at every batch size (default: the largest only)")
    p.add_argument("--envs", default=",".join(envs.registered()), help="comma-separated envs")
    p.add_argument("--rng", default="hash", choices=RNGS,
                   help="the harness's per-step draws (module docstring); the same for every side")
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test, not a timing)")
    p.add_argument("--json", action="store_true", help="print one JSON object, no table")
    args = p.parse_args(argv)
    batches = [int(b) for b in args.batch.split(",")]
    names = [n for n in args.envs.split(",") if n]
    unknown = sorted(set(names) - set(envs.registered()))
    if unknown or min(batches) < 1:
        raise ValueError(f"--envs {unknown} unknown (allowed: {envs.registered()})"
                         if unknown else f"--batch {args.batch}: sizes must be >= 1")
    jit_options = {}
    if args.quick:  # the cheapest XLA backend level compiles ~3x faster
        batches, args.steps, args.reps, args.text_batch = [2], 3, 1, 2
        jit_options = {"compiler_options": {"xla_backend_optimization_level": 0}}
    echo = (lambda line: None) if args.json else (lambda line: print(line, flush=True))
    echo(f"harness draws: {args.rng}")
    echo(STEP_HEADER)
    steps = step_rows(batches, args.steps, args.reps, names, echo, args.every_batch,
                      args.rng, **jit_options)
    echo(f"\n{'text (char tokenizer)':24s} {'batch':>6s} {'L':>6s} {'krender/s':>10s} "
         f"{'Mtok/s':>10s} {'kparse/s':>10s} {'compile':>8s}")
    text = text_rows(args.text_batch, args.reps, names, echo, **jit_options)
    if args.json:
        print(json.dumps({"device": str(jax.devices()[0]), "steps": args.steps, "rng": args.rng,
                          "step_rows": steps, "text_rows": text}, indent=1))
    return 0
