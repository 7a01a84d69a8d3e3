"""Typed run configuration: frozen nested dataclasses, YAML presets, overrides.

    cfg = load_config("launch/configs/tiny.yaml", ["--algo.beta", "0.04"])

Every field is validated in `__post_init__`; a bad value raises `ConfigError`
(a ValueError) naming the field and what is allowed; no float field takes NaN
or inf, and a YAML file that repeats a key or is not UTF-8 is refused. Checks
that need the outside world (the env registry, the model folder, the device
count, the machine's memory) live in `check_runtime`, which the CLI calls
before anything is compiled. (Levanter / Flax gemma style.)
The sections themselves live in `jaxrl_lm.config_sections`, the YAML and
override parsing in `jaxrl_lm.config_files`; `field_help()`
lists every field with its default and its comment (`jaxrl-lm train --help`).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import re
import sys
import typing
import warnings
from typing import Any

import yaml

from jaxrl_lm import algorithms
from jaxrl_lm.config_checks import (  # noqa: F401  (re-exported)
    ConfigError, is_finite, non_finite, resolve_mesh_shape,
)
from jaxrl_lm.config_sections import (  # noqa: F401  (re-exported)
    MAX_SEED, ModelSection, MeshSection, OptimSection,
    AlgoSection, RolloutSection,
    ShapingSection, TrustRegionSection, WarmupSection, TrainSection, EnvSection, EvalSection,
    DataSection, RewardSection, LoraSection,
)
from jaxrl_lm.config_files import (  # noqa: F401  (re-exported)
    _merge, _set, override_items, parse_overrides, parse_yaml, read_yaml,
)
from jaxrl_lm.config_preference import PreferenceSection
from jaxrl_lm.train.optim import WITH_FIRST_MOMENT

# Keys that moved when the old `algo` section was split: old -> new. A preset
# or override that uses an old key still works, with a warning.
MOVED_KEYS = {
    "algo.max_new_tokens": "rollout.max_new_tokens",
    "algo.temperature": "rollout.temperature",
    "algo.invalid_penalty": "shaping.invalid_penalty",
    "algo.exploration_bonus": "shaping.exploration_bonus",
    "algo.expected_reward": "shaping.expected_reward",
    "algo.overlong_cache": "shaping.overlong_cache",
    "algo.max_update_move": "trust_region.max_update_move",
    "algo.scale_momentum": "trust_region.scale_momentum",
}


@dataclasses.dataclass(frozen=True)
class Config:
    model: ModelSection = dataclasses.field(default_factory=ModelSection)  # policy to train
    lora: LoraSection = dataclasses.field(default_factory=LoraSection)  # LoRA adapters (rank 0: off)
    mesh: MeshSection = dataclasses.field(default_factory=MeshSection)  # device mesh
    optim: OptimSection = dataclasses.field(default_factory=OptimSection)  # optimizer
    algo: AlgoSection = dataclasses.field(default_factory=AlgoSection)  # the loss and advantages
    rollout: RolloutSection = dataclasses.field(default_factory=RolloutSection)  # sampling
    shaping: ShapingSection = dataclasses.field(default_factory=ShapingSection)  # reward shaping
    trust_region: TrustRegionSection = dataclasses.field(
        default_factory=TrustRegionSection)  # a bound on each iteration's move
    train: TrainSection = dataclasses.field(default_factory=TrainSection)  # the outer loop
    env: EnvSection = dataclasses.field(default_factory=EnvSection)  # environment
    data: DataSection = dataclasses.field(default_factory=DataSection)  # a prompt dataset instead
    reward: RewardSection = dataclasses.field(default_factory=RewardSection)  # data-run rewards
    preference: PreferenceSection = dataclasses.field(
        default_factory=PreferenceSection)  # pairwise losses: dpo, ipo, hinge, robust, simpo, rpo
    eval: EvalSection = dataclasses.field(default_factory=EvalSection)  # evaluation
    warmup: WarmupSection = dataclasses.field(default_factory=WarmupSection)  # SFT before RL
    # modules imported before the config is checked, so that the envs, algorithms
    # and rewards they register can be named in it (the working directory is searched)
    imports: tuple[str, ...] = ()

    def __post_init__(self):
        t, a, o, r = self.train, self.algo, self.optim, self.rollout
        if t.batch_size % a.group_size:
            raise ConfigError(f"algo.group_size={a.group_size} must divide "
                              f"train.batch_size={t.batch_size}")
        groups, entries = t.batch_size // a.group_size, len(self.env.mix)
        if groups < entries:  # train/mix.py gives each entry one group at least
            raise ConfigError(f"env.mix has {entries} entries, each needing a group of "
                              f"algo.group_size={a.group_size} episodes at least; "
                              f"train.batch_size={t.batch_size} gives {groups}")
        # no group constraint per micro-batch: advantages are computed over the whole
        # batch before the update, and micro-batches cut its turn rows, not its groups
        if o.warmup_steps > t.steps:
            raise ConfigError(f"optim.warmup_steps={o.warmup_steps} must be <= "
                              f"train.steps={t.steps}")
        if self.warmup.steps and self.warmup.player == "greedy_frequency" and \
                self.env.name != "bandit":
            raise ConfigError(f"warmup.player='greedy_frequency' plays env.name='bandit' only "
                              f"(it reads arm counts and means), got {self.env.name!r}")
        tr = self.trust_region
        if tr.scale_momentum and tr.max_update_move and o.name not in WITH_FIRST_MOMENT:
            raise ConfigError(f"trust_region.scale_momentum needs a first moment to scale: "
                              f"optim.name must be {' or '.join(WITH_FIRST_MOMENT)}, "
                              f"got {o.name!r}")
        if self.shaping.overlong_cache and self.shaping.overlong_cache >= r.max_new_tokens:
            raise ConfigError(f"shaping.overlong_cache={self.shaping.overlong_cache}: must be < "
                              f"rollout.max_new_tokens={r.max_new_tokens}")
        if self.data.path is not None:
            # RL plays the prompts; SFT (and an RL run's warm-up) imitates the rows'
            # data.demo_column, checked when the rows are read
            pass
        elif self.reward != RewardSection():
            raise ConfigError("reward: answer_weight, format_weight and functions grade a prompt "
                              "dataset's completions; they need data.path")
        uses_prompts = self.is_rl or t.data == "env"
        if uses_prompts and t.max_len < self.env.max_prompt_len + r.max_new_tokens:
            raise ConfigError(
                f"train.max_len={t.max_len} is shorter than env.max_prompt_len + "
                f"rollout.max_new_tokens = {self.env.max_prompt_len + r.max_new_tokens}")
        e = self.eval
        if e.keep == "best" and not e.every:
            raise ConfigError("eval.keep='best' picks among the evaluations during training: "
                              "set eval.every > 0 (RL iterations between them)")
        if e.every and not (self.is_rl and self.data.path is None):
            raise ConfigError(f"eval.every={e.every}: evaluations during training are for RL "
                              f"runs on an env; prompt-dataset runs (data.path) and SFT or "
                              f"preference runs have none (set eval.every 0)")
        try:  # the algorithm's own rules across sections (algorithms/<name>.py)
            algorithms.get(a.name).check_config(self)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    @property
    def is_rl(self) -> bool:
        """The run is warm-up + RL (an RL algorithm), not plain SFT."""
        return algorithms.get(self.algo.name).kind == "rl"

    @property
    def needs_env(self) -> bool:
        """The run plays env.name (RL without data.path, or SFT on env play)."""
        return (self.is_rl and self.data.path is None) or self.train.data == "env"


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check/convert one YAML or command-line value to the field's type."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an int past float's range
                raise ConfigError(f"{where}={value!r}: must be a finite number") from None
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is dict or origin is dict:
        if isinstance(value, dict):
            return value
    elif origin is tuple:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, (list, tuple)):
            return tuple(_coerce(v, args[0], where) for v in value)
    else:  # pragma: no cover - every field uses one of the types above
        return value
    name = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"{where}={value!r}: expected a value of type {name}")


def _build(cls: type, data: dict, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(f'{where}.{k}'.lstrip('.') for k in unknown)};"
                          f" allowed in {where or 'the top level'}: {', '.join(names)}")
    kwargs = {}
    for k, v in data.items():
        path = f"{where}.{k}".lstrip(".")
        hint = hints[k]
        if dataclasses.is_dataclass(hint):
            kwargs[k] = _build(hint, v if v is not None else {}, path)
        else:
            kwargs[k] = _coerce(v, hint, path)
    out = cls(**kwargs)
    # Every float field, whatever its section checks: NaN passes a bound written
    # with < or <=, and inf passes a lower bound (optim.max_grad_norm=nan would
    # silently turn clipping off).
    for k, v in kwargs.items():
        if isinstance(v, float) and not is_finite(v):
            raise ConfigError(f"{where}.{k}".lstrip(".") + f"={v!r}: must be a finite number "
                              f"(not NaN or inf)")
    return out


def move_old_keys(data: dict) -> dict:
    """`data` with the keys of MOVED_KEYS under their new names (a warning
    each); the same key under both names is an error."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for old, new in MOVED_KEYS.items():
        (s_old, k_old), (s_new, k_new) = old.split("."), new.split(".")
        if not isinstance(out.get(s_old), dict) or k_old not in out[s_old]:
            continue
        section = out.setdefault(s_new, {})
        if not isinstance(section, dict):
            continue  # _build reports the bad section
        if k_new in section:
            raise ConfigError(f"{old} and {new} are both given; {old} is the old name of {new}, "
                              f"keep only {new}")
        section[k_new] = out[s_old].pop(k_old)
        warnings.warn(f"config key {old} is now {new}; the old name still works for now",
                      FutureWarning, stacklevel=3)
    return out


def import_plugins(names) -> None:
    """Import each module of `names` (a config's `imports`), so what it registers
    (an env, an algorithm, a reward function) exists before the config is checked.
    The working directory is searched too, so `my_rewards.py` next to the config
    imports as `my_rewards`."""
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"imports={names!r}: expected a list of module names, "
                          f"e.g. [my_project.envs]")
    if names and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    for name in names:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            raise ConfigError(f"imports: cannot import {name!r}: {e}") from None
        except Exception as e:  # noqa: BLE001  (the user's module failed while importing)
            raise ConfigError(f"imports: importing {name!r} raised {type(e).__name__}: {e}") \
                from e


def from_dict(data: dict | None) -> Config:
    """Build a validated Config from nested plain data (as YAML gives it),
    after importing the modules its `imports` names."""
    data = move_old_keys(data or {})
    import_plugins(data.get("imports", ()))
    return _build(Config, data, "")


def to_dict(cfg: Config) -> dict:
    """Plain nested data (tuples as lists), as YAML and JSON write it."""
    return dataclasses.asdict(cfg, dict_factory=lambda kv: {
        k: list(v) if isinstance(v, tuple) else v for k, v in kv})


def _mapping_fields() -> list[str]:
    """`section.field` of every field that holds a mapping (env.options, ...)."""
    out = []
    for sec in dataclasses.fields(Config):
        cls = sec.default_factory if sec.default_factory is not dataclasses.MISSING else None
        if cls is None or not dataclasses.is_dataclass(cls):
            continue
        out += [f"{sec.name}.{f.name}" for f in dataclasses.fields(cls)
                if f.default_factory is dict]
    return out


def _set_inside(data: dict, key: str, parts: list[str], value: Any) -> None:
    """`--env.options.noise 0.7`: one key set inside a mapping field, the rest kept."""
    field = ".".join(parts[:2])
    mappings = _mapping_fields()
    if field not in mappings:
        raise ConfigError(f"override --{key}: {field} does not hold a mapping; only "
                          f"{', '.join(mappings)} take a key after the field")
    section = data.setdefault(parts[0], {})
    if not isinstance(section, dict):
        raise ConfigError(f"override --{key}: {parts[0]} is not a section")
    if section.get(parts[1]) is None:
        section[parts[1]] = {}
    node = section[parts[1]]
    if not isinstance(node, dict):
        raise ConfigError(f"override --{key}: {field}={node!r} is not a mapping")
    _set(node, key, parts[2:], value)


def load_config(path: str | None = None, overrides: list[str] | None = None,
                imports: list[str] | None = None) -> Config:
    """Read a YAML preset (or the defaults), apply `--a.b value` overrides, add
    `imports` (the command line's --import) to the preset's, validate."""
    data: dict = {}
    if path is not None:
        data = read_yaml(path) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config {path!r}: expected a mapping at the top level")
    items = override_items(list(overrides or []), depth=6)
    flat = {}
    for key, parts, value in items:  # whole fields first, as a preset's keys
        if len(parts) == 2:
            _set(flat, key, parts, value)
    data = _merge(data, flat)
    for key, parts, value in items:  # then keys inside a mapping: --env.options.noise 0.7
        if len(parts) > 2:
            _set_inside(data, key, parts, value)
    if imports:
        given = data.get("imports") or []
        data["imports"] = [*([given] if isinstance(given, str) else given), *imports]
    return from_dict(data)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def model_config(cfg: Config):
    """The policy's ModelConfig, without building it: the embedded default's, or the
    HF folder's after every check `load_hf` makes that reads no weights
    (`models.hf.check_hf_folder`); a bad folder is a ConfigError naming model.path."""
    from jaxrl_lm.models import hf
    from jaxrl_lm.models.tokenizer import DEFAULT_DIR

    m = cfg.model
    try:
        if m.source == "default":
            mcfg = hf.load_config(DEFAULT_DIR, dtype=m.dtype, param_dtype=m.param_dtype)
        else:
            mcfg = hf.check_hf_folder(m.path, dtype=m.dtype, param_dtype=m.param_dtype,
                                      value_head=algorithms.get(cfg.algo.name).needs_value)
    except hf.HFLoadError as e:
        raise ConfigError(f"model.path={m.path!r}: {e}") from None
    return mcfg.replace(remat=m.remat, master_dtype=m.master_dtype)


def check_runtime(cfg: Config, device_count: int) -> None:
    """Checks against the world outside the file: env registry, the model folder,
    devices and memory (`jaxrl_lm.memory_check`)."""
    if cfg.needs_env:
        from jaxrl_lm import envs  # lazily: importing every env costs time

        if cfg.env.name not in envs.registered():
            raise ConfigError(f"env.name={cfg.env.name!r}: unknown env; choose one of "
                              f"{', '.join(envs.registered())}")
        try:
            envs.make(cfg.env.name, **cfg.env.options)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"env.options: {e}") from None
    shape = resolve_mesh_shape(cfg.mesh.shape, device_count)
    per_micro = cfg.train.batch_size // cfg.train.micro_batches
    if per_micro % (shape[0] * shape[1]):
        raise ConfigError(
            f"train.batch_size/train.micro_batches={per_micro} must be divisible by "
            f"mesh.data*mesh.fsdp={shape[0] * shape[1]} (batch rows are split over them)")
    from jaxrl_lm.memory_check import check_memory

    check_memory(cfg, model_config(cfg))


def _comments(cls: type) -> dict[str, str]:
    """field name -> its comment in the class source: the trailing `# ...` of
    its line, or the `#` lines right above it."""
    out, above = {}, []
    for line in inspect.getsource(cls).splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# "))
            continue
        m = re.match(r"\s+(\w+): [^#]*?(?:#\s*(.*))?$", line)
        if m and not stripped.startswith(("def ", "@")):
            out[m.group(1)] = " ".join(above + ([m.group(2)] if m.group(2) else []))
        above = []
    return out


def field_help() -> str:
    """Every config field as `--section.field (default): help`, section by section."""
    lines = []
    for sec in dataclasses.fields(Config):
        cls = typing.get_type_hints(Config)[sec.name]
        if not dataclasses.is_dataclass(cls):
            note = _comments(Config).get(sec.name, "")
            lines.append(f"--import MODULE (repeatable; config key {sec.name}: "
                         f"{sec.default!r})  {note}")
            continue
        notes = _comments(cls)
        lines.append(f"{sec.name}:")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"  --{sec.name}.{f.name} ({default!r})  {notes.get(f.name, '')}".rstrip())
    return "\n".join(lines)
