"""`jaxrl-lm bench rollout`: tic-tac-toe episodes/s, jitted rollout vs a host loop.

Both sides play B episodes of tic-tac-toe with the embedded default policy
(random weights from the seed; same weights, sampler options and stop tokens,
prompts padded to the same fixed length so neither recompiles). Two settings:

  main       the main job's own (launch/configs/tictactoe.yaml, read at run time):
             env options (noisy minimax, the 20-character `board` prompt),
             max_prompt_len, max_turns, max_new_tokens, temperature, newline/EOS
             stops and train.batch_size episodes. The primary row. (The job's
             RL plays those options in three quarters of its groups and a
             random opponent in the rest, `env.mix`: the same env, prompt and
             model work per turn, so one rollout of the batch stands for it.)
  full       the env's default prompt (rules, board, legal-move list, 136
             tokens), opponent random, 10 new tokens, EOS stop, B = 64 and 256:
             about 3x the model work per turn of `main`.

  jitted     `jaxrl_lm.rollout.make_rollout`: one XLA program, a lax.scan over
             turns of render -> sample -> parse -> env.step, no host round trip.
  host loop  what a host-side env library does: each turn, render every live
             episode on the host (`env.render_text` + tokenizer.encode), call the
             jitted sampler `jaxrl_lm.sampling.sample` on the batch, decode and
             parse each completion on the host (`envs.text.parse_text`), play a
             random legal move for unparsable answers (as the rollout does), and
             step the batch with a jitted vmapped `env.step`, until all are done
             (or max_turns).

Each side runs once to compile (reported apart), then `--repeats` timed runs,
alternating between the sides; the best run of each counts. The host loop's
time is split into sampler calls and host work.

    jaxrl-lm bench rollout                  # both settings, best of 2 timed runs each
    jaxrl-lm bench rollout --settings main --batches 64,128
    jaxrl-lm bench rollout --quick --json   # main setting, B=4, 4 tokens
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np

from jaxrl_lm.cli_args import ArgumentParser

TARGET_RATIO = 10.0
INVALID_PENALTY = -5.0
MAIN_CONFIG = pathlib.Path(__file__).resolve().parents[2] / "launch/configs/tictactoe.yaml"
SETTINGS = ("main", "full")


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="jaxrl-lm bench rollout", description=__doc__.split("\n")[0])
    add = p.add_argument
    add("--settings", default="main,full", help=f"comma-separated, from {','.join(SETTINGS)}")
    add("--batches", default=None,
        help="comma-separated episode batch sizes (default: main train.batch_size; full 64,256)")
    add("--new", type=int, default=None,
        help="max new tokens per turn (default: main rollout.max_new_tokens; full 10)")
    add("--repeats", type=int, default=2, help="timed runs per side and batch; the best counts")
    add("--quick", action="store_true",
        help="tiny sizes (smoke test): main setting, B=4, 4 tokens, 1 repeat")
    add("--seed", type=int, default=0)
    add("--json", action="store_true", help="print one JSON object instead of a table")
    return p


def _check(args) -> tuple[list[str], list[int] | None]:
    if args.quick:
        args.settings, args.batches, args.new, args.repeats = "main", "4", 4, 1
    settings = args.settings.split(",")
    if not settings or any(name not in SETTINGS for name in settings):
        raise ValueError(f"--settings={args.settings!r}: must be comma-separated names "
                         f"from {SETTINGS}")
    batches = None
    if args.batches is not None:
        try:
            batches = [int(b) for b in args.batches.split(",")]
        except ValueError:
            raise ValueError(f"--batches={args.batches!r}: must be comma-separated ints") from None
        if not batches or min(batches) < 1:
            raise ValueError(f"--batches={args.batches!r}: sizes must be >= 1")
    for name in ("new", "repeats"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name}={value}: must be >= 1")
    return settings, batches


def setting(name: str, tokenizer, *, new: int | None, batches: list[int] | None) -> dict:
    """{env, text, max_turns, new, temperature, stops, batches, config} of one setting."""
    import jax

    from jaxrl_lm import envs
    from jaxrl_lm.envs.text import TextInterface

    if name == "main":
        from jaxrl_lm.config import load_config
        from jaxrl_lm.models.tokenizer import stop_tokens

        cfg = load_config(str(MAIN_CONFIG))
        if cfg.env.name != "tictactoe":
            raise ValueError(f"{MAIN_CONFIG}: env.name={cfg.env.name!r}, expected 'tictactoe'")
        options, max_len, max_turns = dict(cfg.env.options), cfg.env.max_prompt_len, cfg.env.max_turns
        new = cfg.rollout.max_new_tokens if new is None else new
        temperature, stops = cfg.rollout.temperature, stop_tokens(tokenizer)
        batches = [cfg.train.batch_size] if batches is None else batches
    else:
        options, max_turns, temperature = dict(opponent="random"), None, 1.0
        new, stops = (10 if new is None else new), (tokenizer.eos_token_id,)
        batches = [64, 256] if batches is None else batches
        max_len = None
    env = envs.make("tictactoe", **options)
    max_turns = env.max_steps if max_turns is None else max_turns
    if max_len is None:  # the empty board lists all 9 legal cells: the longest prompt
        longest = len(env.render_text(jax.device_get(env.init(jax.random.key(0)))))
        max_len = -(-longest // 8) * 8
    text = TextInterface(env, tokenizer, max_prompt_len=max_len, pad_id=tokenizer.pad_token_id)
    config = dict(setting=name, env="tictactoe", options=options, max_prompt_len=max_len,
                  max_new_tokens=new, max_turns=max_turns, temperature=temperature,
                  stop_tokens=list(stops))
    return dict(env=env, text=text, max_turns=max_turns, new=new, temperature=temperature,
                stops=tuple(stops), batches=batches, config=config)


class HostLoop:
    """The baseline: the env driven turn by turn from Python (see module docstring).

    Also `bench paprika-generate`'s baseline: `min_p` for its sampler,
    `group_size` episodes sharing an init key, `same_keys=True` for
    `make_rollout`'s key schedule (the same init, sampler, stand-in and step
    keys, so with equal prompts both play the same episodes) and
    `transcript=True` for each episode's turns (prompt and answer, text and ids).
    """

    def __init__(self, env, tokenizer, graphdef, params, *, max_prompt_len: int, max_new: int,
                 max_turns: int, temperature: float, stops: tuple[int, ...],
                 min_p: float | None = None):
        import jax

        from jaxrl_lm.rollout import _random_legal

        self.env, self.tok, self.model = env, tokenizer, (graphdef, params)
        self.max_len, self.max_new, self.max_turns = max_prompt_len, max_new, max_turns
        self.options = dict(max_new_tokens=max_new, temperature=temperature, stop_tokens=stops,
                            min_p=min_p, pad_id=tokenizer.pad_token_id)
        self.init = jax.jit(jax.vmap(env.init))
        self.step = jax.jit(jax.vmap(env.step))
        self.random_legal = jax.jit(_random_legal)  # the rollout's stand-in (same_keys)

    def play(self, batch: int, key, *, group_size: int = 1, same_keys: bool = False,
             transcript: bool = False) -> dict:
        import jax
        import jax.numpy as jnp

        from jaxrl_lm.envs.text import parse_text
        from jaxrl_lm import sampling

        env, tok = self.env, self.tok
        rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**31 - 1)))
        if same_keys:  # make_rollout's schedule: init key, then one key per turn, split 3 ways
            key_init, key_turns = jax.random.split(key)
            turn_keys = jax.random.split(key_turns, self.max_turns)
        else:
            key, key_init = jax.random.split(key)
        init_keys = jax.random.split(key_init, batch // group_size)
        state = self.init(jnp.repeat(init_keys, group_size, axis=0) if group_size > 1
                          else init_keys)
        prompts = np.full((batch, self.max_len), tok.pad_token_id, np.int32)
        lengths = np.ones((batch,), np.int32)
        returns, valid_turns, turns = np.zeros(batch), 0, 0
        env_returns, episode_valid = np.zeros(batch, np.float32), np.zeros(batch, np.int64)
        turns_of = [[] for _ in range(batch)] if transcript else None
        sample_s = 0.0
        for t in range(self.max_turns):
            host = jax.device_get(state)
            live = np.flatnonzero(~host.done)
            if live.size == 0:
                break
            texts = {}
            for b in live:  # finished rows keep their last prompt: fixed shapes
                texts[b] = env.render_text(jax.tree.map(lambda a: a[b], host))
                ids = tok.encode(texts[b], add_special_tokens=False)[: self.max_len]
                prompts[b, : len(ids)], prompts[b, len(ids):] = ids, tok.pad_token_id
                lengths[b] = len(ids)
            if same_keys:
                k_sample, k_random, k_step = jax.random.split(turn_keys[t], 3)
            else:
                key, k_sample, k_step = jax.random.split(key, 3)
            t0 = time.perf_counter()
            out = sampling.sample(self.model, prompts, lengths, k_sample, **self.options)
            out_tokens, out_len, out_done = jax.device_get((out.tokens, out.lengths, out.done))
            sample_s += time.perf_counter() - t0
            actions = np.zeros((batch,), np.int32)
            standin = None
            for b in live:  # the stop token is not part of the answer (as in the rollout)
                answer = out_tokens[b, : out_len[b] - int(out_done[b])].tolist()
                answer_text = tok.decode(answer)
                action, valid = parse_text(env, answer_text)
                if not valid:
                    if same_keys:
                        if standin is None:
                            standin = np.asarray(self.random_legal(host.legal_action_mask,
                                                                   k_random))
                        action = standin[b]
                    else:
                        action = rng.choice(np.flatnonzero(host.legal_action_mask[b]))
                    returns[b] += INVALID_PENALTY
                actions[b] = action
                valid_turns += int(valid)
                episode_valid[b] += int(valid)
                if transcript:
                    turns_of[b].append(dict(
                        prompt=texts[b], answer=answer_text,
                        prompt_ids=prompts[b, : lengths[b]].tolist(),
                        completion_ids=out_tokens[b, : out_len[b]].tolist()))
            state = self.step(state, actions, jax.random.split(k_step, batch))
            reward = np.asarray(state.reward)
            returns[live] += reward[live]
            env_returns[live] += reward[live]
            turns += live.size
        out = dict(mean_return=float(returns.mean()), valid_rate=valid_turns / max(turns, 1),
                   turns=turns, sample_s=sample_s)
        if transcript:
            out.update(episodes=turns_of, env_returns=env_returns, valid_turns=episode_valid)
        return out


def bench_batch(s: dict, tokenizer, graphdef, params, batch: int, repeats: int, key) -> dict:
    import jax

    from jaxrl_lm import rollout

    play = rollout.make_rollout(s["env"], s["text"], num_groups=batch, group_size=1,
                                max_turns=s["max_turns"], max_new_tokens=s["new"],
                                temperature=s["temperature"], stop_tokens=s["stops"],
                                invalid_penalty=INVALID_PENALTY)
    keys = iter(jax.random.split(key, 2 * repeats + 2))

    def run_jit():
        traj = jax.block_until_ready(play(graphdef, params, next(keys)))
        return dict(mean_return=float(rollout.episode_returns(traj).mean()),
                    valid_rate=float(traj.valid.sum() / traj.active.sum()),
                    turns=int(traj.active.sum()))

    loop = HostLoop(s["env"], tokenizer, graphdef, params,
                    max_prompt_len=s["text"].max_prompt_len, max_new=s["new"],
                    max_turns=s["max_turns"], temperature=s["temperature"], stops=s["stops"])

    def run_host():
        return loop.play(batch, next(keys))

    # Timed runs alternate between the sides, so load from other jobs on a shared
    # machine drifts over both alike; each side reports its best run.
    runs = {"jit": [], "host": []}
    for _ in range(repeats + 1):
        for side, fn in (("jit", run_jit), ("host", run_host)):
            t0 = time.perf_counter()
            out = fn()
            runs[side].append((time.perf_counter() - t0, out))
    (first_jit, _), (first_host, _) = runs["jit"].pop(0), runs["host"].pop(0)
    best_jit, jit_out = min(runs["jit"], key=lambda r: r[0])
    best_host, host_out = min(runs["host"], key=lambda r: r[0])
    jit_times, host_times = [t for t, _ in runs["jit"]], [t for t, _ in runs["host"]]
    return dict(
        setting=s["config"]["setting"], batch=batch,
        jitted=dict(seconds=best_jit, times=jit_times, episodes_per_s=batch / best_jit,
                    compile_s=max(first_jit - best_jit, 0.0), **jit_out),
        host_loop=dict(seconds=best_host, times=host_times, episodes_per_s=batch / best_host,
                       compile_s=max(first_host - best_host, 0.0),
                       host_s=best_host - host_out["sample_s"], **host_out),
        ratio=best_host / best_jit)


def run(args) -> dict:
    names, batches = _check(args)
    import jax
    from flax import nnx

    from jaxrl_lm.models.default import default_policy

    model, tokenizer = default_policy(args.seed)
    graphdef, params = nnx.split(model)
    settings = [setting(n, tokenizer, new=args.new, batches=batches) for n in names]
    todo = [(s, b) for s in settings for b in s["batches"]]
    keys = jax.random.split(jax.random.key(args.seed), len(todo))
    rows = [bench_batch(s, tokenizer, graphdef, params, b, args.repeats, k)
            for (s, b), k in zip(todo, keys)]
    return dict(settings={s["config"]["setting"]: s["config"] for s in settings},
                model="default_policy", seed=args.seed, repeats=args.repeats, rows=rows,
                target_ratio=TARGET_RATIO, backend=jax.default_backend(), jax=jax.__version__)


def _describe(c: dict) -> str:
    opts = ", ".join(f"{k}={v}" for k, v in c["options"].items())
    return (f"{c['setting']}: tic-tac-toe ({opts}), prompt <= {c['max_prompt_len']} tokens, "
            f"<= {c['max_new_tokens']} new tokens/turn, <= {c['max_turns']} turns, "
            f"T={c['temperature']}, stops {c['stop_tokens']}")


def _table(r: dict) -> str:
    lines = [f"rollout bench: default policy (random weights, seed {r['seed']}); "
             f"best of {r['repeats']}"]
    lines += ["  " + _describe(c) for c in r["settings"].values()]
    lines.append(f"{'setting':>8}{'B':>5}{'jitted ep/s':>13}{'host ep/s':>11}{'ratio':>8}"
                 f"{'host work s':>13}{'sampler s':>11}{'compile s':>11}")
    for row in r["rows"]:
        j, h = row["jitted"], row["host_loop"]
        lines.append(f"{row['setting']:>8}{row['batch']:>5}{j['episodes_per_s']:>13.1f}"
                     f"{h['episodes_per_s']:>11.1f}{row['ratio']:>7.2f}x{h['host_s']:>13.3f}"
                     f"{h['sample_s']:>11.3f}{j['compile_s']:>11.1f}")
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
