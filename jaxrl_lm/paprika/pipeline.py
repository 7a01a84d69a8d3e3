"""`jaxrl-lm paprika`: generate -> pairs -> SFT on the winners -> RPO.

    jaxrl-lm paprika --config launch/configs/paprika.yaml --out DIR [--resume]

The config has four parts: `model` (the model section every stage starts
from), `generate` (`generate.GenerateSection`: the task groups and the
sampling), and `sft` / `rpo`, each the overrides of a `jaxrl-lm train`
config (train, optim, preference, data sections) for that stage. Stages run
in DIR's subfolders and each writes `stage.json` when it is finished:

    generate/  trajectories.jsonl (every episode, scored), summary.json
    pairs/     pairs.jsonl (TRL multi-turn rows), config.json
    sft/       SFT on the chosen trajectories' assistant tokens (the
               preference data module's masks), a run directory with hf/
    rpo/       RPO from the SFT policy on the pairs (DPO beta 0.1 + alpha 1.0 x
               the chosen response's length-normalised NLL; the reference is
               the SFT policy), a run directory with hf/ and summary.json

With --resume a finished stage is skipped and an unfinished SFT or RPO run
continues from its newest checkpoint; without it, a DIR holding a finished
stage is an error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Any

from jaxrl_lm.config import Config, ConfigError, from_dict, read_yaml
from jaxrl_lm.paprika.generate import GenerateSection, generate, summarize
from jaxrl_lm.paprika.pairs import make_pairs, write_pairs

STAGES = ("generate", "pairs", "sft", "rpo")
RPO_DEFAULTS = {"algo": {"name": "rpo"}, "preference": {"beta": 0.1, "alpha": 1.0},
                "data": {"on_overlong": "drop", "eval_fraction": 0.0}}


@dataclasses.dataclass(frozen=True)
class PaprikaConfig:
    model: dict  # the model section (as in a train config) every stage starts from
    generate: GenerateSection  # task groups, n per task, min-p sampling
    sft: dict  # overrides of the SFT stage's train config (train, optim)
    rpo: dict  # overrides of the RPO stage's train config (train, optim, preference, data)
    raw: dict  # the config as read, written to pairs/config.json


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load(path: str) -> PaprikaConfig:
    """The pipeline config; every stage's config is built and checked here."""
    data = read_yaml(path) or {}
    unknown = sorted(set(data) - {"model", "generate", "sft", "rpo"})
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)}; allowed at the top of a "
                          f"paprika config: model, generate, sft, rpo")
    gen = dict(data.get("generate") or {})
    bad = sorted(set(gen) - {f.name for f in dataclasses.fields(GenerateSection)})
    if bad:
        raise ConfigError(f"unknown key(s) {', '.join('generate.' + k for k in bad)}")
    gen["groups"] = tuple(gen.get("groups") or ())
    pc = PaprikaConfig(model=dict(data.get("model") or {}), generate=GenerateSection(**gen),
                       sft=dict(data.get("sft") or {}), rpo=dict(data.get("rpo") or {}), raw=data)
    sft_config(pc)
    rpo_config(pc, "sft/hf", "pairs/pairs.jsonl")
    return pc


def sft_config(pc: PaprikaConfig) -> Config:
    for key in ("model", "algo"):
        if key in pc.sft:
            raise ConfigError(f"sft.{key}: set by the pipeline (the top-level model; algo sft)")
    try:
        return from_dict(_merge(pc.sft, {"model": pc.model, "algo": {"name": "sft"}}))
    except ConfigError as e:
        raise ConfigError(f"sft: {e}") from None


def rpo_config(pc: PaprikaConfig, sft_hf: str, pairs_path: str) -> Config:
    if "model" in pc.rpo or "path" in (pc.rpo.get("data") or {}):
        raise ConfigError("rpo.model / rpo.data.path: set by the pipeline (the SFT policy, "
                          "the pairs)")
    model = {**{k: v for k, v in pc.model.items() if k not in ("source", "path")},
             "source": "hf", "path": sft_hf}
    try:
        return from_dict(_merge(_merge(RPO_DEFAULTS, pc.rpo),
                                {"model": model, "data": {"path": pairs_path}}))
    except ConfigError as e:
        raise ConfigError(f"rpo: {e}") from None


def _done(out: str, stage: str) -> dict | None:
    path = os.path.join(out, stage, "stage.json")
    return json.load(open(path)) if os.path.exists(path) else None


def _finish(out: str, stage: str, info: dict) -> dict:
    with open(os.path.join(out, stage, "stage.json"), "w") as f:
        json.dump(info, f, indent=2)
    return info


def chosen_data(pairs_path: str, tokenizer: Any, cfg: Config):
    """SFT data: the chosen side of every pair, scored on its assistant tokens
    (`build_pairs`' masks); pure in the step."""
    import numpy as np

    from jaxrl_lm.data import read_rows
    from jaxrl_lm.data.preference import build_pairs
    from jaxrl_lm.data.prompts import batch_rows

    t = cfg.train
    pairs = build_pairs(read_rows(pairs_path), tokenizer, max_len=t.max_len,
                        on_overlong="drop")
    tokens, mask = pairs.tokens[:, 0], pairs.mask[:, 0]

    def data_fn(step: int, key) -> dict:
        del key
        idx = batch_rows(step, t.batch_size, len(tokens), seed=t.seed, shuffle=True)
        return {"tokens": np.asarray(tokens[idx]), "loss_mask": np.asarray(mask[idx])}

    return data_fn, len(tokens), pairs.dropped


def run(pc: PaprikaConfig, out: str, *, resume: bool = False, say=print) -> dict:
    """Every stage not yet finished; returns {stage: its stage.json}."""
    from jaxrl_lm.train import sft
    from jaxrl_lm.train.preference import run_preference
    from jaxrl_lm.train.trainer import build_policy, export_hf

    finished = {s: _done(out, s) for s in STAGES}
    if not resume and any(finished.values()):
        raise ConfigError(f"--out {out}: holds finished stages "
                          f"({', '.join(s for s in STAGES if finished[s])}); add --resume")
    if not resume:
        finished = dict.fromkeys(STAGES)
    info: dict[str, Any] = {}
    scfg = sft_config(pc)
    model, tokenizer = build_policy(scfg)
    for i, stage in enumerate(STAGES, 1):
        if finished[stage] is not None:
            say(f"[{i}/4] {stage}: finished, skipped")
            info[stage] = finished[stage]
            continue
        t0 = time.perf_counter()
        folder = os.path.join(out, stage)
        os.makedirs(folder, exist_ok=True)
        say(f"[{i}/4] {stage}")
        if stage == "generate":
            records = generate(pc.generate, model, tokenizer)
            with open(os.path.join(folder, "trajectories.jsonl"), "w") as f:
                for r in records:
                    f.write(json.dumps(r) + "\n")
            summary = summarize(records)
            with open(os.path.join(folder, "summary.json"), "w") as f:
                json.dump(summary, f, indent=2)
            res = {"episodes": len(records), "groups": summary}
        elif stage == "pairs":
            with open(os.path.join(out, "generate", "trajectories.jsonl")) as f:
                records = [json.loads(line) for line in f]
            rows = make_pairs(records, seed=pc.generate.seed)
            tasks = len({(r["group"], r["task"]) for r in records})
            if not rows:
                raise ValueError(f"pairs: none of the {tasks} tasks gave a pair (every task's "
                                 f"trajectories scored alike); sample more tasks or trajectories")
            write_pairs(rows, folder, {"paprika": pc.raw, "source": "generate/trajectories.jsonl"})
            per_group = {}
            for r in rows:
                per_group[r["group"]] = per_group.get(r["group"], 0) + 1
            res = {"pairs": len(rows), "tasks": tasks, "per_group": per_group}
        elif stage == "sft":
            data_fn, n, dropped = chosen_data(os.path.join(out, "pairs", "pairs.jsonl"),
                                              tokenizer, scfg)
            result = sft.train_sft(scfg, folder, model=model, data_fn=data_fn, resume=resume)
            export_hf(result.state.params, model, tokenizer, os.path.join(folder, "hf"))
            res = {"winners": n, "dropped": dropped, "last_metrics": result.last_metrics}
        else:
            rcfg = rpo_config(pc, os.path.join(out, "sft", "hf"),
                              os.path.join(out, "pairs", "pairs.jsonl"))
            rmodel, rtok = build_policy(rcfg)
            run_preference(rcfg, folder, rmodel, rtok, resume=resume, export=export_hf)
            res = json.load(open(os.path.join(folder, "summary.json")))
        res["wall_s"] = round(time.perf_counter() - t0, 1)
        info[stage] = _finish(out, stage, res)
    return info


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="jaxrl-lm paprika", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="a paprika config (launch/configs/paprika.yaml)")
    p.add_argument("--out", required=True, help="the run directory (stages in subfolders)")
    p.add_argument("--resume", action="store_true", help="skip finished stages, continue the rest")
    args = p.parse_args(argv)
    try:
        pc = load(args.config)
        if os.path.exists(args.out) and not os.path.isdir(args.out):
            raise ConfigError(f"--out {args.out}: is a file, not a directory")
        info = run(pc, args.out, resume=args.resume)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({s: {k: v for k, v in info[s].items() if k != "last_metrics"}
                      for s in STAGES}))
    return 0
