"""`jaxrl-lm bench rollout`: tic-tac-toe episodes/s, jitted rollout vs a host loop.

Both sides play B episodes of `envs.make("tictactoe", opponent="random")` with
the embedded default policy (same weights, same sampler options, prompts
padded to the same fixed length so neither recompiles).

  jitted     `jaxrl_lm.rollout.make_rollout`: one XLA program, a lax.scan over
             turns of render -> sample -> parse -> env.step, no host round trip.
  host loop  what a host-side env library does: each turn, render every live
             episode on the host (`env.render_text` + tokenizer.encode), call the
             jitted sampler `jaxrl_lm.sampling.sample` on the batch, decode and
             parse each completion on the host (`envs.text.parse_text`), play a
             random legal move for unparsable answers (as the rollout does), and
             step the batch with a jitted vmapped `env.step`, until all are done.

Each side runs once to compile (reported apart), then `--repeats` timed runs;
the best counts. The host loop's time is split into sampler and host work.

    jaxrl-lm bench rollout                  # B = 64 and 256, 10 new tokens, 1 timed run each
    jaxrl-lm bench rollout --quick --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

TARGET_RATIO = 10.0
INVALID_PENALTY = -5.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jaxrl-lm bench rollout", description=__doc__.split("\n")[0])
    add = p.add_argument
    add("--batches", default="64,256", help="comma-separated episode batch sizes")
    add("--new", type=int, default=10, help="max new tokens per turn")
    add("--repeats", type=int, default=1, help="timed runs per side and batch; the best counts")
    add("--quick", action="store_true", help="tiny sizes (smoke test): B=4, 4 tokens, 1 repeat")
    add("--seed", type=int, default=0)
    add("--json", action="store_true", help="print one JSON object instead of a table")
    return p


def _check(args) -> list[int]:
    if args.quick:
        args.batches, args.new, args.repeats = "4", 4, 1
    try:
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        raise ValueError(f"--batches={args.batches!r}: must be comma-separated ints") from None
    if not batches or min(batches) < 1:
        raise ValueError(f"--batches={args.batches!r}: sizes must be >= 1")
    for name in ("new", "repeats"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name}={getattr(args, name)}: must be >= 1")
    return batches


class HostLoop:
    """The baseline: the env driven turn by turn from Python (see module docstring)."""

    def __init__(self, env, tokenizer, graphdef, params, *, max_prompt_len: int, max_new: int):
        import jax

        self.env, self.tok, self.model = env, tokenizer, (graphdef, params)
        self.max_len, self.max_new = max_prompt_len, max_new
        self.init = jax.jit(jax.vmap(env.init))
        self.step = jax.jit(jax.vmap(env.step))

    def play(self, batch: int, key) -> dict:
        import jax

        from envs.text import parse_text
        from jaxrl_lm import sampling

        env, tok = self.env, self.tok
        rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**31 - 1)))
        key, sub = jax.random.split(key)
        state = self.init(jax.random.split(sub, batch))
        prompts = np.full((batch, self.max_len), tok.pad_token_id, np.int32)
        lengths = np.ones((batch,), np.int32)
        returns, valid_turns, turns = np.zeros(batch), 0, 0
        sample_s = 0.0
        while True:
            host = jax.device_get(state)
            live = np.flatnonzero(~host.done)
            if live.size == 0:
                break
            for b in live:  # finished rows keep their last prompt: fixed shapes
                ids = tok.encode(env.render_text(jax.tree.map(lambda a: a[b], host)),
                                 add_special_tokens=False)[: self.max_len]
                prompts[b, : len(ids)], prompts[b, len(ids):] = ids, tok.pad_token_id
                lengths[b] = len(ids)
            key, k_sample, k_step = jax.random.split(key, 3)
            t0 = time.perf_counter()
            out = sampling.sample(self.model, prompts, lengths, k_sample,
                                  max_new_tokens=self.max_new,
                                  stop_tokens=(tok.eos_token_id,), pad_id=tok.pad_token_id)
            out_tokens, out_len = jax.device_get((out.tokens, out.lengths))
            sample_s += time.perf_counter() - t0
            actions = np.zeros((batch,), np.int32)
            for b in live:
                action, valid = parse_text(env, tok.decode(out_tokens[b, : out_len[b]].tolist()))
                if not valid:
                    action = rng.choice(np.flatnonzero(host.legal_action_mask[b]))
                    returns[b] += INVALID_PENALTY
                actions[b] = action
                valid_turns += int(valid)
            state = self.step(state, actions, jax.random.split(k_step, batch))
            returns[live] += np.asarray(state.reward)[live]
            turns += live.size
        return dict(mean_return=float(returns.mean()), valid_rate=valid_turns / max(turns, 1),
                    turns=turns, sample_s=sample_s)


def _time(fn, repeats: int) -> tuple[float, list[float], object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), times, out


def bench_batch(env, text, tokenizer, graphdef, params, batch: int, args, key) -> dict:
    import jax

    from jaxrl_lm import rollout

    play = rollout.make_rollout(env, text, num_groups=batch, group_size=1,
                                max_new_tokens=args.new, stop_tokens=(tokenizer.eos_token_id,),
                                invalid_penalty=INVALID_PENALTY)
    keys = iter(jax.random.split(key, 2 * args.repeats + 2))

    def run_jit():
        traj = jax.block_until_ready(play(graphdef, params, next(keys)))
        return dict(mean_return=float(rollout.episode_returns(traj).mean()),
                    valid_rate=float(traj.valid.sum() / traj.active.sum()),
                    turns=int(traj.active.sum()))

    loop = HostLoop(env, tokenizer, graphdef, params, max_prompt_len=text.max_prompt_len,
                    max_new=args.new)

    def run_host():
        return loop.play(batch, next(keys))

    first_jit = _time(run_jit, 1)[0]
    best_jit, jit_times, jit_out = _time(run_jit, args.repeats)
    first_host = _time(run_host, 1)[0]
    best_host, host_times, host_out = _time(run_host, args.repeats)
    return dict(
        batch=batch,
        jitted=dict(seconds=best_jit, times=jit_times, episodes_per_s=batch / best_jit,
                    compile_s=max(first_jit - best_jit, 0.0), **jit_out),
        host_loop=dict(seconds=best_host, times=host_times, episodes_per_s=batch / best_host,
                       compile_s=max(first_host - best_host, 0.0),
                       host_s=best_host - host_out["sample_s"], **host_out),
        ratio=best_host / best_jit)


def run(args) -> dict:
    batches = _check(args)
    import jax
    from flax import nnx

    import envs
    from envs.text import TextInterface
    from jaxrl_lm.models.default import default_policy

    model, tokenizer = default_policy(args.seed)
    graphdef, params = nnx.split(model)
    env = envs.make("tictactoe", opponent="random")
    # The empty board lists all 9 legal cells: the longest prompt. Pad to a multiple of 8.
    longest = len(env.render_text(jax.device_get(env.init(jax.random.key(0)))))
    text = TextInterface(env, tokenizer, max_prompt_len=-(-longest // 8) * 8,
                         pad_id=tokenizer.pad_token_id)
    keys = jax.random.split(jax.random.key(args.seed), len(batches))
    rows = [bench_batch(env, text, tokenizer, graphdef, params, b, args, k)
            for b, k in zip(batches, keys)]
    return dict(config=dict(env="tictactoe", opponent="random", model="default_policy",
                            max_prompt_len=text.max_prompt_len, max_new_tokens=args.new,
                            max_turns=env.max_steps, repeats=args.repeats),
                rows=rows, target_ratio=TARGET_RATIO, backend=jax.default_backend(),
                jax=jax.__version__)


def _table(r: dict) -> str:
    c = r["config"]
    lines = [f"rollout bench: tic-tac-toe vs random, default policy, prompt <= "
             f"{c['max_prompt_len']} tokens, <= {c['max_new_tokens']} new tokens/turn, "
             f"<= {c['max_turns']} turns; best of {c['repeats']}",
             f"{'B':>5}{'jitted ep/s':>13}{'host ep/s':>11}{'ratio':>8}"
             f"{'host work s':>13}{'sampler s':>11}{'compile s':>11}"]
    for row in r["rows"]:
        j, h = row["jitted"], row["host_loop"]
        lines.append(f"{row['batch']:>5}{j['episodes_per_s']:>13.1f}{h['episodes_per_s']:>11.1f}"
                     f"{row['ratio']:>7.2f}x{h['host_s']:>13.3f}{h['sample_s']:>11.3f}"
                     f"{j['compile_s']:>11.1f}")
    lines.append(f"target >= {r['target_ratio']:.0f}x; host loop time = host work (render, "
                 f"encode, decode, parse, env step) + sampler calls; compile = jitted "
                 f"rollout's; jax backend {r['backend']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    result = run(args)
    print(json.dumps(result, indent=2) if args.json else _table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
