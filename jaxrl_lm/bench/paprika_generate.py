"""`jaxrl-lm bench paprika-generate`: PAPRIKA's generation stage, episodes/s, vs a host loop.

Both sides play the task groups of a paprika config's `generate` section
(default launch/configs/paprika.yaml: its groups with their options, tasks x
trajectories episodes per group, min-p sampling at its temperature, max new
tokens, max turns and prompt length) with the embedded default policy (random
weights from --seed), and both turn every episode into the stage's record
(conversation, turns, success, score).

  ours       `jaxrl_lm.paprika.generate.generate` as the pipeline calls it:
             per group one jitted rollout (`make_rollout`, a lax.scan of
             render -> min-p sample -> parse -> env.step) over tasks x
             trajectories episodes, then `episodes_of` builds the records on
             the host. Its time is split into the rollout (device work and
             the copy to the host: everything but the records) and the host
             record building (`episodes_of`, timed by wrapping it).
  host loop  `jaxrl_lm.bench.rollout.HostLoop`, the rollout bench's baseline,
             per group: each turn render every live episode on the host
             (`env.render_text` + encode), call the jitted sampler
             `jaxrl_lm.sampling.sample` (same min-p, temperature, stops,
             prompt length) on the batch, decode and parse each answer on the
             host, play the rollout's random legal stand-in for unparsable
             answers, step the batch with a jitted vmapped `env.step`; the
             records are built from its transcript. Its time is split into
             sampler calls and host work.

Both sides use make_rollout's key schedule from generate()'s keys (the
episodes of a task share an init key; the same sampler, stand-in and step
keys each turn), so with equal prompts they play the same episodes: the
result counts the episodes whose records agree. Each side runs once to compile
(round 0, reported apart), then `--repeats` timed rounds alternating between
the sides; per group and in total the median round counts.

    jaxrl-lm bench paprika-generate                       # the preset's sizes, median of 3
    jaxrl-lm bench paprika-generate --tasks 16 --trajectories 20 --json
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import pathlib
import sys
import time

import numpy as np

from jaxrl_lm.cli_args import ArgumentParser

CONFIG = pathlib.Path(__file__).resolve().parents[2] / "launch/configs/paprika.yaml"


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog="jaxrl-lm bench paprika-generate",
                       description=__doc__.split("\n")[0])
    add = p.add_argument
    add("--config", default=str(CONFIG), help="a paprika config; its generate section is played")
    add("--tasks", type=int, default=None, help="tasks per group (default: the config's)")
    add("--trajectories", type=int, default=None,
        help="episodes per task (default: the config's; PAPRIKA: 20)")
    add("--repeats", type=int, default=3, help="timed rounds per side; the median counts")
    add("--seed", type=int, default=0, help="the default policy's weights")
    add("--json", action="store_true", help="print one JSON object instead of a table")
    return p


def _check(args) -> None:
    for name in ("tasks", "trajectories", "repeats"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name}={value}: must be >= 1")
    if not pathlib.Path(args.config).is_file():
        raise ValueError(f"--config={args.config}: no such file")


@contextlib.contextmanager
def _timed_records(log: list):
    """Wrap generate()'s `episodes_of`: log (group, seconds, end time) per call."""
    from jaxrl_lm.paprika import generate as gen_mod

    inner = gen_mod.episodes_of

    def timed(*a, **kw):
        t0 = time.perf_counter()
        out = inner(*a, **kw)
        t1 = time.perf_counter()
        log.append((kw["group"], t1 - t0, t1))
        return out

    gen_mod.episodes_of = timed
    try:
        yield
    finally:
        gen_mod.episodes_of = inner


def run_ours(gen, model, tokenizer, round_index: int) -> tuple[list[dict], dict]:
    """generate()'s records and, per group, {seconds, rollout_s, records_s}."""
    from jaxrl_lm.paprika.generate import generate

    log: list = []
    with _timed_records(log):
        t0 = time.perf_counter()
        records = generate(gen, model, tokenizer, round_index=round_index)
    if [g for g, _, _ in log] != [g["name"] for g in gen.groups]:
        raise RuntimeError("generate() no longer calls episodes_of once per group: "
                           "the bench cannot time its record building")
    times, start = {}, t0
    for group, rec_s, end in log:
        times[group] = dict(seconds=end - start, rollout_s=end - start - rec_s, records_s=rec_s)
        start = end
    return records, times


def host_records(out: dict, tokenizer, *, group: str, trajectories: int,
                 max_turns: int) -> list[dict]:
    """generate()'s records (`episodes_of`'s fields) from a HostLoop transcript."""
    from jaxrl_lm.paprika.generate import BY_REWARD, score

    records = []
    for e, turns in enumerate(out["episodes"]):
        msgs, steps = [], []
        for s in turns:
            msgs += [{"role": "user", "content": s["prompt"]},
                     {"role": "assistant", "content": s["answer"]}]
            steps.append({"prompt": s["prompt"], "completion": tokenizer.decode(
                s["completion_ids"]), "prompt_ids": s["prompt_ids"],
                "completion_ids": s["completion_ids"]})
        n, env_return = len(turns), float(out["env_returns"][e])
        records.append({
            "group": group, "task": e // trajectories, "episode": e % trajectories,
            "messages": msgs, "turns": n, "steps": steps, "success": env_return > 0,
            "env_return": env_return, "valid_rate": float(out["valid_turns"][e] / max(n, 1)),
            "score": float(score(np.asarray(env_return > 0), np.asarray(n),
                                 np.asarray(env_return), max_turns=max_turns,
                                 by_reward=group in BY_REWARD))})
    return records


def same_record(a: dict, b: dict) -> bool:
    """The records agree on every field both have (returns up to float32 rounding)."""
    for k in set(a) & set(b):
        if k in ("env_return", "score"):
            if not math.isclose(a[k], b[k], rel_tol=1e-5, abs_tol=1e-5):
                return False
        elif a[k] != b[k]:
            return False
    return True


def _median(runs: list[dict]) -> dict:
    """The run of median `seconds` (the lower middle one for an even count)."""
    return sorted(runs, key=lambda r: r["seconds"])[(len(runs) - 1) // 2]


def run(args) -> dict:
    _check(args)
    import jax
    from flax import nnx

    from jaxrl_lm import envs
    from jaxrl_lm.bench.rollout import HostLoop
    from jaxrl_lm.models.default import default_policy
    from jaxrl_lm.models.tokenizer import stop_tokens
    from jaxrl_lm.paprika.pipeline import load

    gen = load(args.config).generate
    gen = dataclasses.replace(gen, tasks=args.tasks or gen.tasks,
                              trajectories=args.trajectories or gen.trajectories)
    batch = gen.tasks * gen.trajectories
    model, tokenizer = default_policy(args.seed)
    graphdef, params = nnx.split(model)
    stops = stop_tokens(tokenizer)
    loops, max_turns = {}, {}
    for g in gen.groups:
        env = envs.make(g["name"], **(g.get("options") or {}))
        max_turns[g["name"]] = min(gen.max_turns, env.max_steps)  # as generate() plays
        loops[g["name"]] = HostLoop(env, tokenizer, graphdef, params,
                                    max_prompt_len=gen.max_prompt_len,
                                    max_new=gen.max_new_tokens, max_turns=max_turns[g["name"]],
                                    temperature=gen.temperature, stops=stops, min_p=gen.min_p)

    def run_host(round_index: int) -> tuple[list[dict], dict]:
        root = jax.random.fold_in(jax.random.key(gen.seed), round_index)  # generate()'s keys
        records, times = [], {}
        for i, g in enumerate(gen.groups):
            name = g["name"]
            t0 = time.perf_counter()
            out = loops[name].play(batch, jax.random.fold_in(root, i),
                                   group_size=gen.trajectories, same_keys=True, transcript=True)
            records += host_records(out, tokenizer, group=name, trajectories=gen.trajectories,
                                    max_turns=max_turns[name])
            seconds = time.perf_counter() - t0
            times[name] = dict(seconds=seconds, sample_s=out["sample_s"],
                               host_s=seconds - out["sample_s"])
        return records, times

    # Round 0 compiles each side; timed rounds alternate between the sides, so load
    # from other jobs on a shared machine drifts over both alike.
    runs: dict[str, list] = {"ours": [], "host": []}
    same = compared = 0
    for r in range(args.repeats + 1):
        for side, fn in (("ours", lambda r=r: run_ours(gen, model, tokenizer, r)),
                         ("host", run_host)):
            t0 = time.perf_counter()
            records, times = fn(r)
            runs[side].append((time.perf_counter() - t0, records, times))
        (_, ours_recs, _), (_, host_recs, _) = runs["ours"][-1], runs["host"][-1]
        if len(ours_recs) != len(host_recs):
            raise RuntimeError(f"round {r}: {len(ours_recs)} episodes from generate(), "
                               f"{len(host_recs)} from the host loop")
        same += sum(same_record(a, b) for a, b in zip(ours_recs, host_recs))
        compared += len(ours_recs)
    warm = {side: runs[side].pop(0)[0] for side in runs}

    def side_stats(side: str, name: str | None) -> dict:
        per = []
        for total, records, times in runs[side]:
            rs = [x for x in records if name is None or x["group"] == name]
            t = dict(times[name]) if name else {
                k: sum(v[k] for v in times.values()) for k in next(iter(times.values()))}
            if name is None:
                t["seconds"] = total
            per.append(dict(t, episodes=len(rs), turns=sum(x["turns"] for x in rs)))
        m = _median(per)
        return dict(m, times=[p["seconds"] for p in per],
                    episodes_per_s=m["episodes"] / m["seconds"],
                    turns_per_s=m["turns"] / m["seconds"])

    rows = []
    for name in [g["name"] for g in gen.groups] + [None]:
        ours, host = side_stats("ours", name), side_stats("host", name)
        rows.append(dict(group=name or "total", episodes=ours["episodes"], ours=ours,
                         host_loop=host, ratio=host["seconds"] / ours["seconds"]))
    config = dict(config=str(args.config), groups=[dict(g) for g in gen.groups],
                  tasks=gen.tasks, trajectories=gen.trajectories, min_p=gen.min_p,
                  temperature=gen.temperature, max_new_tokens=gen.max_new_tokens,
                  max_turns=gen.max_turns, max_prompt_len=gen.max_prompt_len, seed=gen.seed,
                  stop_tokens=list(stops))
    return dict(config=config, model="default_policy", model_seed=args.seed,
                repeats=args.repeats, rows=rows[:-1], total=rows[-1],
                warmup_s=dict(ours=warm["ours"], host_loop=warm["host"]),
                same_episodes=same, episodes_compared=compared,
                backend=jax.default_backend(), jax=jax.__version__)


def _table(r: dict) -> str:
    c = r["config"]
    groups = ", ".join(f"{g['name']}({', '.join(f'{k}={v}' for k, v in g['options'].items())})"
                       for g in c["groups"])
    lines = [f"paprika-generate bench: default policy (random weights, seed {r['model_seed']}); "
             f"median of {r['repeats']}",
             f"  {groups}",
             f"  {c['tasks']} tasks x {c['trajectories']} trajectories per group, min-p "
             f"{c['min_p']} at T={c['temperature']}, <= {c['max_new_tokens']} new tokens, "
             f"<= {c['max_turns']} turns, prompts <= {c['max_prompt_len']} tokens",
             f"{'group':>18}{'episodes':>9}{'turns':>7}{'ours ep/s':>11}{'host ep/s':>11}"
             f"{'ratio':>8}{'rollout s':>11}{'records s':>11}{'sampler s':>11}{'host work s':>13}"]
    for row in r["rows"] + [r["total"]]:
        o, h = row["ours"], row["host_loop"]
        lines.append(f"{row['group']:>18}{row['episodes']:>9}{o['turns']:>7}"
                     f"{o['episodes_per_s']:>11.1f}{h['episodes_per_s']:>11.1f}"
                     f"{row['ratio']:>7.2f}x{o['rollout_s']:>11.3f}{o['records_s']:>11.3f}"
                     f"{h['sample_s']:>11.3f}{h['host_s']:>13.3f}")
    t = r["total"]
    lines.append(f"turns/s: ours {t['ours']['turns_per_s']:.1f}, host loop "
                 f"{t['host_loop']['turns_per_s']:.1f}; ours = rollout (device + copy) + records "
                 f"(episodes_of); host loop = sampler calls + host work (render, encode, decode, "
                 f"parse, env step, records)")
    lines.append(f"warm-up round (compile): ours {r['warmup_s']['ours']:.1f} s, host loop "
                 f"{r['warmup_s']['host_loop']:.1f} s; episodes with the same record on both "
                 f"sides: {r['same_episodes']}/{r['episodes_compared']}; jax backend "
                 f"{r['backend']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    result = run(args)
    print(json.dumps(result, indent=2) if args.json else _table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
