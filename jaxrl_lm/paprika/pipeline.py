"""`jaxrl-lm paprika` (or `jaxrl-lm train` on a paprika config): PAPRIKA's rounds.

    jaxrl-lm paprika --config launch/configs/paprika.yaml --out DIR [--resume]
    jaxrl-lm paprika --config ... --out DIR --leave-one-out      # one run per held-out group
    jaxrl-lm paprika --config ... --out DIR --curriculum.kind uniform   # any value overridden

A paprika config has these parts: `model` (the model section every stage
starts from), `warmup` (`warmup.WarmupSection`: SFT on scripted random play
teaching the formats, for a model that has none), `generate`
(`generate.GenerateSection`: task groups, n trajectories per task, min-p),
`rounds`, `curriculum` ({kind: ucb | uniform, c}), `eval` ({episodes, seed}:
held-out tasks per group, greedy) and `sft` / `rpo`, each the overrides of a
`jaxrl-lm train` config (train, optim, preference, data) for that stage.
Stages run in DIR's subfolders, each writing `stage.json` when finished:

    warmup/           scripted SFT (warmup.steps > 0), its policy in hf/
    before/           the starting policy on the held-out tasks
    round<r>/generate trajectories.jsonl (every episode, scored, with its turns' token
                      ids); the round's split of tasks over groups; each task's score cv
    round<r>/pairs    pairs.jsonl (turn pairs, data.turn_pairs), config.json
    round<r>/sft      SFT from the round's starting policy on the chosen trajectories'
                      turns, a run directory with hf/
    round<r>/sft_eval the SFT policy on the held-out tasks ("SFT alone")
    round<r>/rpo      RPO from the SFT policy on the pairs (DPO beta 0.1 + alpha 1.0 x
                      the chosen side's length-normalised NLL; reference: the SFT policy)
    round<r>/rpo_eval the RPO policy on the held-out tasks; the next round starts from it

Each round's generation budget is `generate.tasks` x the number of groups,
split by the curriculum (`curriculum.py`): `ucb` over the groups with each
task's coefficient of variation of scores as the reward (PAPRIKA), or
`uniform`. The job ends with a table per group: before, after SFT and after
RPO (the last round), success with its standard error, and `summary.json`.

With --resume a finished stage is skipped and an unfinished SFT or RPO run
continues from its newest checkpoint; without it, a DIR holding a finished
stage is an error.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any

import numpy as np

from jaxrl_lm.cli_args import ArgumentParser
from jaxrl_lm.config import Config, ConfigError
from jaxrl_lm.paprika import curriculum as cur
from jaxrl_lm.paprika.config import (  # noqa: F401  (from_data, is_paprika_config: re-exported)
    EVAL_STREAM, PaprikaConfig, from_data, is_paprika_config, load, rpo_config,
    sft_config)
from jaxrl_lm.paprika.generate import generate, summarize
from jaxrl_lm.paprika.pairs import make_pairs, write_pairs
from jaxrl_lm.paprika.warmup import mix_data, warmup_config

def chosen_data(pairs_path: str, tokenizer: Any, cfg: Config):
    """SFT data: every turn of the chosen side of every pair, scored on its
    completion tokens (`data.turn_pairs`); pure in the step."""
    from jaxrl_lm.data import read_rows
    from jaxrl_lm.data.preference import build_pairs
    from jaxrl_lm.data.prompts import batch_rows

    t = cfg.train
    pairs = build_pairs(read_rows(pairs_path), tokenizer, max_len=t.max_len, on_overlong="drop")
    n = pairs.tokens.shape[-1]
    tokens, mask = pairs.tokens[:, 0].reshape(-1, n), pairs.mask[:, 0].reshape(-1, n)
    keep = mask.sum(-1) > 0  # a side with fewer turns than the longest has empty rows
    tokens, mask = tokens[keep], mask[keep]

    def data_fn(step: int, key) -> dict:
        del key
        idx = batch_rows(step, t.batch_size, len(tokens), seed=t.seed, shuffle=True)
        return {"tokens": np.asarray(tokens[idx]), "loss_mask": np.asarray(mask[idx])}

    return data_fn, len(pairs), pairs.dropped


def allocation(pc: PaprikaConfig, task_cvs: list[dict[str, list[float]]]) -> dict[str, int]:
    """Tasks per group for the next round, from every earlier round's task cvs."""
    names = [g["name"] for g in pc.generate.groups]
    budget = pc.generate.tasks * len(names)
    if pc.curriculum["kind"] == "uniform":
        split = cur.uniform(len(names), budget)
    else:
        state = cur.ucb_init(len(names))
        for cvs in task_cvs:
            for name, values in cvs.items():
                for v in values:
                    state = cur.ucb_update(state, names.index(name), v)
        split = cur.allocate(state, budget, c=pc.curriculum["c"])
    return {n: int(k) for n, k in zip(names, split)}


def task_cvs(records: list[dict]) -> dict[str, list[float]]:
    """Each task's coefficient of variation of its trajectories' scores, per group."""
    by_task: dict[tuple, list[float]] = {}
    for r in records:
        by_task.setdefault((r["group"], r["task"]), []).append(r["score"])
    out: dict[str, list[float]] = {}
    for (group, _), scores in by_task.items():
        out.setdefault(group, []).append(cur.task_cv(np.asarray(scores)))
    return out


def evaluate(pc: PaprikaConfig, model: Any, tokenizer: Any) -> dict[str, dict]:
    """Greedy success per group on eval.episodes held-out tasks each."""
    gen = dataclasses.replace(pc.generate, seed=pc.eval["seed"])
    return summarize(generate(gen, model, tokenizer, round_index=EVAL_STREAM, trajectories=1,
                              groups=pc.eval_groups, greedy=True,
                              tasks={g["name"]: pc.eval["episodes"] for g in pc.eval_groups}))


def format_table(columns: dict[str, dict[str, dict]]) -> str:
    """Success ± standard error per group (rows) and stage (columns), with the mean."""
    names = list(next(iter(columns.values())))
    head = f"{'group':<20}" + "".join(f"{c:>18}" for c in columns)
    lines = [head]
    for name in names + ["mean"]:
        cells = []
        for res in columns.values():
            if name == "mean":
                p = np.mean([res[n]["success_rate"] for n in names])
                se = np.sqrt(np.sum([res[n]["success_se"] ** 2 for n in names])) / len(names)
            else:
                p, se = res[name]["success_rate"], res[name]["success_se"]
            cells.append(f"{p:>10.3f} ± {se:.3f}")
        lines.append(f"{name:<20}" + "".join(cells))
    return "\n".join(lines)


class _Stages:
    """stage.json bookkeeping in one run directory."""

    def __init__(self, out: str, resume: bool, say):
        self.out, self.resume, self.say = out, resume, say

    def done(self, stage: str) -> dict | None:
        path = os.path.join(self.out, stage, "stage.json")
        return json.load(open(path)) if self.resume and os.path.exists(path) else None

    def folder(self, stage: str) -> str:
        path = os.path.join(self.out, stage)
        os.makedirs(path, exist_ok=True)
        return path

    def finish(self, stage: str, info: dict, t0: float) -> dict:
        info["wall_s"] = round(time.perf_counter() - t0, 1)
        with open(os.path.join(self.out, stage, "stage.json"), "w") as f:
            json.dump(info, f, indent=2)
        return info


def train_warmup(pc: PaprikaConfig, folder: str, *, resume: bool) -> dict:
    """The scripted warm-up over every group into `folder`, its policy in folder/hf."""
    from jaxrl_lm.train import sft
    from jaxrl_lm.train.trainer import build_policy, export_hf

    wcfg = warmup_config(pc.model, pc.warmup, pc.generate)
    model, tok = build_policy(wcfg)
    res = sft.train_sft(wcfg, folder, model=model, resume=resume,
                        data_fn=mix_data(wcfg, pc.generate, tok))
    export_hf(res.state.params, model, tok, os.path.join(folder, "hf"))
    return {"steps": pc.warmup.steps, "last_metrics": res.last_metrics}


def _finished_any(out: str) -> list[str]:
    found = []
    for root, _, files in os.walk(out) if os.path.isdir(out) else ():
        if "stage.json" in files:
            found.append(os.path.relpath(root, out))
    return sorted(found)


def run(pc: PaprikaConfig, out: str, *, resume: bool = False, say=print,
        start_hf: str | None = None) -> dict:
    """Every stage not yet finished; returns {stage: its stage.json}. `start_hf`:
    an HF folder to start from instead of the warm-up (leave-one-out's shared one)."""
    from jaxrl_lm.train import sft
    from jaxrl_lm.train.preference import run_preference
    from jaxrl_lm.train.trainer import build_policy, export_hf

    finished = _finished_any(out)
    if not resume and finished:
        raise ConfigError(f"--out {out}: holds finished stages ({', '.join(finished)}); "
                          f"add --resume")
    st, info = _Stages(out, resume, say), {}

    def stage(name: str, fn) -> dict:
        prior = st.done(name)
        if prior is not None:
            say(f"{name}: finished, skipped")
            info[name] = prior
            return prior
        say(name)
        t0 = time.perf_counter()
        info[name] = st.finish(name, fn(st.folder(name)), t0)
        return info[name]

    start = start_hf
    if start is None and pc.warmup.steps:
        stage("warmup", lambda folder: train_warmup(pc, folder, resume=resume))
        start = os.path.join(out, "warmup", "hf")

    def policy(hf: str | None):
        return build_policy(sft_config(pc, hf))

    stage("before", lambda folder: {"groups": evaluate(pc, *policy(start))})
    cvs: list[dict] = []
    for r in range(1, pc.rounds + 1):
        rd = f"round{r}"

        def gen_stage(folder, r=r):
            split = allocation(pc, cvs)
            model, tok = policy(start)
            records = generate(pc.generate, model, tok, tasks=split, round_index=r - 1)
            with open(os.path.join(folder, "trajectories.jsonl"), "w") as f:
                for rec in records:
                    f.write(json.dumps(rec) + "\n")
            return {"episodes": len(records), "tasks": split, "task_cv": task_cvs(records),
                    "groups": summarize(records)}

        g = stage(f"{rd}/generate", gen_stage)
        cvs.append(g["task_cv"])

        def pairs_stage(folder, rd=rd):
            with open(os.path.join(out, rd, "generate", "trajectories.jsonl")) as f:
                records = [json.loads(line) for line in f]
            rows = make_pairs(records, seed=pc.generate.seed)
            tasks = len({(x["group"], x["task"]) for x in records})
            if not rows:
                raise ConfigError(f"{rd}/pairs: none of the {tasks} tasks gave a pair (every "
                                 f"task's trajectories scored alike); sample more tasks or "
                                 f"trajectories, or warm the model up (warmup.steps)")
            write_pairs(rows, folder, {"paprika": pc.raw, "round": int(rd[5:]),
                                       "source": f"{rd}/generate/trajectories.jsonl"})
            per_group: dict[str, int] = {}
            for x in rows:
                per_group[x["group"]] = per_group.get(x["group"], 0) + 1
            return {"pairs": len(rows), "tasks": tasks, "per_group": per_group}

        stage(f"{rd}/pairs", pairs_stage)
        pairs_path = os.path.join(out, rd, "pairs", "pairs.jsonl")

        def sft_stage(folder):
            scfg = sft_config(pc, start)
            model, tok = build_policy(scfg)
            data_fn, n, dropped = chosen_data(pairs_path, tok, scfg)
            res = sft.train_sft(scfg, folder, model=model, data_fn=data_fn, resume=resume)
            export_hf(res.state.params, model, tok, os.path.join(folder, "hf"))
            return {"winners": n, "dropped": dropped, "last_metrics": res.last_metrics}

        stage(f"{rd}/sft", sft_stage)
        sft_hf = os.path.join(out, rd, "sft", "hf")
        stage(f"{rd}/sft_eval", lambda folder: {"groups": evaluate(pc, *policy(sft_hf))})

        def rpo_stage(folder):
            rcfg = rpo_config(pc, sft_hf, pairs_path)
            model, tok = build_policy(rcfg)
            run_preference(rcfg, folder, model, tok, resume=resume, export=export_hf)
            return json.load(open(os.path.join(folder, "summary.json")))

        stage(f"{rd}/rpo", rpo_stage)
        start = os.path.join(out, rd, "rpo", "hf")
        stage(f"{rd}/rpo_eval", lambda folder: {"groups": evaluate(pc, *policy(start))})

    last = f"round{pc.rounds}"
    columns = {"before": info["before"]["groups"], "SFT": info[f"{last}/sft_eval"]["groups"],
               "SFT + RPO": info[f"{last}/rpo_eval"]["groups"]}
    say(f"held-out tasks, greedy success ({pc.eval['episodes']} episodes per group; "
        f"round {pc.rounds}):\n{format_table(columns)}")
    shares = {}
    for r in range(1, pc.rounds + 1):
        shares[f"round{r}"] = info[f"round{r}/generate"]["tasks"]
    summary = {"eval": columns, "tasks_per_round": shares,
               "curriculum": pc.curriculum, "rounds": pc.rounds}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    info["summary"] = summary
    return info


def leave_one_out(pc: PaprikaConfig, out: str, *, resume: bool = False, say=print) -> dict:
    """For each group: the pipeline trained on every other group, evaluated on
    all of them; one shared warm-up (on every group: the stand-in for
    pretraining). Writes out/leave_one_out.json and returns it."""
    start = None
    if pc.warmup.steps:
        folder = os.path.join(out, "warmup")
        if not (resume and os.path.exists(os.path.join(folder, "hf", "config.json"))):
            os.makedirs(folder, exist_ok=True)
            train_warmup(pc, folder, resume=resume)
        start = os.path.join(folder, "hf")
    table = {}
    groups = pc.generate.groups
    for g in groups:
        rest = tuple(x for x in groups if x["name"] != g["name"])
        sub = dataclasses.replace(pc, generate=dataclasses.replace(pc.generate, groups=rest),
                                  eval_groups=groups)
        say(f"leave-one-out: without {g['name']}")
        res = run(sub, os.path.join(out, f"without_{g['name']}"), resume=resume, say=say,
                  start_hf=start)
        ev = res["summary"]["eval"]
        table[g["name"]] = {stage: ev[stage][g["name"]] for stage in ev}
    with open(os.path.join(out, "leave_one_out.json"), "w") as f:
        json.dump(table, f, indent=2)
    say("leave-one-out: each group held out of training, its greedy success\n"
        + format_table({stage: {n: table[n][stage] for n in table}
                        for stage in next(iter(table.values()))}))
    return table


def main(argv: list[str]) -> int:
    p = ArgumentParser(prog="jaxrl-lm paprika", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="a paprika config (launch/configs/paprika.yaml)")
    p.add_argument("--out", required=True, help="the run directory (stages in subfolders)")
    p.add_argument("--resume", action="store_true", help="skip finished stages, continue the rest")
    p.add_argument("--rounds", type=int, help="override the config's rounds")
    p.add_argument("--leave-one-out", action="store_true",
                   help="one run per group, trained on the others, evaluated on all")
    args, overrides = p.parse_known_args(argv)
    from jaxrl_lm.train.run_lock import RunLock

    lock = RunLock(args.out, enabled=False)
    try:
        pc = load(args.config, overrides)
        if args.rounds is not None:
            pc = from_data({**pc.raw, "rounds": args.rounds})
        if os.path.exists(args.out) and not os.path.isdir(args.out):
            raise ConfigError(f"--out {args.out}: is a file, not a directory")
        lock = RunLock(args.out).acquire()
        if args.leave_one_out:
            leave_one_out(pc, args.out, resume=args.resume)
        else:
            run(pc, args.out, resume=args.resume)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        lock.release()
    return 0
