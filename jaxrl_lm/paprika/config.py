"""A paprika config: `PaprikaConfig`, read from YAML (`load`, `from_data`) and
checked whole before anything compiles, and the `jaxrl-lm train` configs of
its SFT and RPO stages (`sft_config`, `rpo_config`). The parts are described
in `pipeline.py`'s module doc."""

from __future__ import annotations

import dataclasses

from jaxrl_lm.config import Config, ConfigError, from_dict, read_yaml
from jaxrl_lm.paprika.generate import GenerateSection
from jaxrl_lm.paprika.warmup import WarmupSection, warmup_config

TOP_KEYS = ("model", "warmup", "generate", "rounds", "curriculum", "eval", "sft", "rpo")
CURRICULA = ("ucb", "uniform")
EVAL_STREAM = 2**30  # held-out tasks: a key stream no generation round draws from
RPO_DEFAULTS = {"algo": {"name": "rpo"}, "preference": {"beta": 0.1, "alpha": 1.0},
                "data": {"on_overlong": "drop", "eval_fraction": 0.0}}


@dataclasses.dataclass(frozen=True)
class PaprikaConfig:
    model: dict  # the model section (as in a train config) every stage starts from
    warmup: WarmupSection  # scripted SFT teaching the formats (0 steps: none)
    generate: GenerateSection  # task groups, n per task, min-p sampling
    rounds: int  # generate -> pairs -> SFT -> RPO, this many times
    curriculum: dict  # {kind: ucb | uniform, c: UCB's exploration weight}
    eval: dict  # {episodes: held-out tasks per group (greedy), seed}
    sft: dict  # overrides of the SFT stage's train config (train, optim)
    rpo: dict  # overrides of the RPO stage's train config (train, optim, preference, data)
    raw: dict  # the config as read, written to each round's pairs/config.json
    eval_groups: tuple = ()  # groups evaluated (default: generate.groups; leave-one-out: all)


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _section(data: dict, name: str, allowed: tuple[str, ...]) -> dict:
    value = data.get(name) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{name}: must be a mapping, got {type(value).__name__}")
    bad = sorted(set(value) - set(allowed))
    if bad:
        raise ConfigError(f"unknown key(s) {', '.join(name + '.' + k for k in bad)}; allowed: "
                          f"{', '.join(allowed)}")
    return dict(value)


def from_data(data: dict) -> PaprikaConfig:
    """The pipeline config from a parsed YAML; every stage's config is built
    and checked here, before anything compiles."""
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)}; allowed at the top of a "
                          f"paprika config: {', '.join(TOP_KEYS)}")
    gen = _section(data, "generate", tuple(f.name for f in dataclasses.fields(GenerateSection)))
    gen["groups"] = tuple(gen.get("groups") or ())
    warm = _section(data, "warmup", tuple(f.name for f in dataclasses.fields(WarmupSection)))
    curriculum = {"kind": "ucb", "c": 1.0, **_section(data, "curriculum", ("kind", "c"))}
    if curriculum["kind"] not in CURRICULA:
        raise ConfigError(f"curriculum.kind={curriculum['kind']!r}: must be one of "
                          f"{', '.join(CURRICULA)}")
    c = curriculum["c"]
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 <= c < float("inf"):
        raise ConfigError(f"curriculum.c={c!r}: must be a finite number >= 0")
    ev = {"episodes": 128, "seed": 1, **_section(data, "eval", ("episodes", "seed"))}
    for key in ("episodes", "seed"):
        v = ev[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < (1 if key == "episodes" else 0):
            raise ConfigError(f"eval.{key}={v!r}: must be an int >= {int(key == 'episodes')}")
    rounds = data.get("rounds", 1)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"rounds={rounds!r}: must be an int >= 1")
    generate_section = GenerateSection(**gen)
    pc = PaprikaConfig(model=dict(data.get("model") or {}), warmup=WarmupSection(**warm),
                       generate=generate_section, rounds=rounds, curriculum=curriculum,
                       eval=ev, sft=dict(data.get("sft") or {}), rpo=dict(data.get("rpo") or {}),
                       raw=data, eval_groups=generate_section.groups)
    sft_config(pc, "start/hf")
    rpo_config(pc, "sft/hf", "pairs/pairs.jsonl")
    if pc.warmup.steps:
        warmup_config(pc.model, pc.warmup, pc.generate)
    return pc


def load(path: str, overrides: list[str] | tuple = ()) -> PaprikaConfig:
    """The config at `path` with `--a.b value` overrides applied."""
    from jaxrl_lm.config import parse_overrides

    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path!r}: expected a mapping at the top level")
    return from_data(_merge(data, parse_overrides(list(overrides), depth=3)))


def is_paprika_config(path: str) -> bool:
    """A YAML with a top-level `generate` section (what `jaxrl-lm train` hands here)."""
    try:
        data = read_yaml(path)
    except (ConfigError, OSError):
        return False
    return isinstance(data, dict) and "generate" in data


def _model_from(pc: PaprikaConfig, hf: str | None) -> dict:
    if hf is None:
        return pc.model
    return {**{k: v for k, v in pc.model.items() if k not in ("source", "path")},
            "source": "hf", "path": hf}


def sft_config(pc: PaprikaConfig, start_hf: str | None) -> Config:
    for key in ("model", "algo"):
        if key in pc.sft:
            raise ConfigError(f"sft.{key}: set by the pipeline (the round's policy; algo sft)")
    try:
        return from_dict(_merge(pc.sft, {"model": _model_from(pc, start_hf),
                                         "algo": {"name": "sft"}}))
    except ConfigError as e:
        raise ConfigError(f"sft: {e}") from None


def rpo_config(pc: PaprikaConfig, sft_hf: str, pairs_path: str) -> Config:
    if "model" in pc.rpo or "path" in (pc.rpo.get("data") or {}):
        raise ConfigError("rpo.model / rpo.data.path: set by the pipeline (the SFT policy, "
                          "the pairs)")
    try:
        return from_dict(_merge(_merge(RPO_DEFAULTS, pc.rpo),
                                {"model": _model_from(pc, sft_hf), "data": {"path": pairs_path}}))
    except ConfigError as e:
        raise ConfigError(f"rpo: {e}") from None
