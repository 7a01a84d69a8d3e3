"""The sections of the run configuration: one frozen dataclass each, every
field checked in `__post_init__` (a bad value raises `ConfigError` naming
the field and what is allowed). `jaxrl_lm.config` composes them into
`Config`, with the cross-section checks and YAML / command-line loading.
"""

from __future__ import annotations

import dataclasses
import re

from jaxrl_lm import algorithms
from jaxrl_lm.advantages import GRPO_SCALES
from jaxrl_lm.algorithms.common import KL_IN
from jaxrl_lm.config_checks import (  # noqa: F401  (ConfigError, resolve_mesh_shape: re-exported)
    SECTION_OF, ConfigError, _at_least, _bounded, _choice, _fail, _finite_tree, is_finite,
    non_finite, resolve_mesh_shape)
from jaxrl_lm.data.prompts import OVERLONG
from jaxrl_lm.losses.aggregate import AGG_MODES
from jaxrl_lm.losses.kl import KL_KINDS
from jaxrl_lm.losses.policy import RATIO_LEVELS
from jaxrl_lm.models.config import DTYPES, MASTER_DTYPES, REMAT_MODES
from jaxrl_lm.models.lora import TARGETS as LORA_TARGETS, check_targets as check_lora_targets
from jaxrl_lm.train.optim import OPTIMIZERS, SCHEDULES
from jaxrl_lm.train.players import PLAYERS, WARMUP_TARGETS
from jaxrl_lm.verifiers import MARKERS, MODES

# Allowed values come from the library modules that implement them; only the
# two dispatched by the trainer itself are defined here.
MODEL_SOURCES = ("default", "hf")  # the embedded tiny policy | a local HF folder
DATA_SOURCES = ("sorting", "env")  # train.data for sft: synthetic sorting | scripted env play
MAX_LR = 10.0  # optim.lr and warmup.lr above this are typos (1e30), not learning rates
LABEL = re.compile(r"[A-Za-z0-9_-]+")  # env.mix labels: metric-key prefixes
RESERVED = ("eval", "time")  # prefixes the run's own metrics use (eval/..., time/...)
MAX_SEED = 2**32 - 1  # PRNG keys hold 32 bits of seed: 2**32 would run as seed 0


@dataclasses.dataclass(frozen=True)
class ModelSection:
    source: str = "default"  # "default" (embedded tiny policy) | "hf" (a local HF folder)
    path: str | None = None  # HF folder when source == "hf"
    dtype: str = "float32"  # activation dtype: float32 | bfloat16
    param_dtype: str = "float32"  # parameter dtype the forward sees: float32 | bfloat16
    remat: str = "none"  # recompute each decoder block in the backward: none | full | dots
    master_dtype: str | None = None  # float32: optimizer updates f32 master weights of bf16 params

    def __post_init__(self):
        _choice(self, "source", MODEL_SOURCES)
        _choice(self, "dtype", DTYPES)
        _choice(self, "param_dtype", DTYPES)
        _choice(self, "remat", REMAT_MODES)
        if self.master_dtype is not None:
            _choice(self, "master_dtype", MASTER_DTYPES)
            if self.param_dtype != "bfloat16":
                _fail(self, "master_dtype", "needs model.param_dtype: bfloat16 (float32 params "
                      "are their own master copy)")
        if self.source == "hf" and not self.path:
            _fail(self, "path", "must name a local HF folder when model.source is 'hf'")


@dataclasses.dataclass(frozen=True)
class LoraSection:
    rank: int = 0  # LoRA adapter rank r; 0 = off (every parameter is trained)
    alpha: float = 16.0  # the adapters' update B A is scaled by alpha / rank
    # only 0: RL's importance ratios need the training forward to equal the sampler's,
    # which a dropped-out adapter input would not (models/lora.py)
    dropout: float = 0.0
    # the projections that get adapters (any of q_proj k_proj v_proj o_proj gate_proj
    # up_proj down_proj); the rest of the model is frozen
    targets: tuple[str, ...] = LORA_TARGETS

    def __post_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, int):
            _fail(self, "rank", "must be an int (0 turns LoRA off)")
        _at_least(self, "rank", 0)
        _bounded(self, "alpha", 0.0, lo_open=True)
        _bounded(self, "dropout", 0.0, 1.0, hi_open=True)
        if self.dropout != 0.0:
            _fail(self, "dropout", "only 0 is supported: RL's importance ratios need the "
                                   "training forward to equal the sampler's")
        try:
            check_lora_targets(self.targets)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.rank == 0:
            changed = [f.name for f in dataclasses.fields(self) if f.name != "rank"
                       and getattr(self, f.name) != f.default]
            if changed:
                _fail(self, "rank", f"must be >= 1 when lora.{changed[0]} is set "
                                    f"(rank 0 turns LoRA off)")


@dataclasses.dataclass(frozen=True)
class MeshSection:
    data: int = -1  # data-parallel size; -1 = the devices left over
    fsdp: int = 1  # parameter/optimizer sharding size; -1 allowed (once)
    tensor: int = 1  # tensor-parallel size; -1 allowed (once)
    coordinator_address: str | None = None  # host:port of process 0 (multi-host)
    num_processes: int | None = None  # processes in a multi-host run
    process_id: int | None = None  # this process's index

    def __post_init__(self):
        sizes = (self.data, self.fsdp, self.tensor)
        for name in ("data", "fsdp", "tensor"):
            v = getattr(self, name)
            if v == 0 or v < -1:
                _fail(self, name, "must be a positive size or -1 (the rest of the devices)")
        if sizes.count(-1) > 1:
            raise ConfigError(f"mesh: at most one of data/fsdp/tensor may be -1, got {sizes}")
        if (self.num_processes is None) != (self.process_id is None):
            raise ConfigError("mesh.num_processes and mesh.process_id must be given together")
        if self.num_processes is not None:
            _at_least(self, "num_processes", 1)
            if not 0 <= self.process_id < self.num_processes:
                _fail(self, "process_id", f"must lie in [0, {self.num_processes})")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.data, self.fsdp, self.tensor)


@dataclasses.dataclass(frozen=True)
class OptimSection:
    name: str = "adamw"  # adamw | adafactor | lion
    lr: float = 1e-3  # peak learning rate, in (0, 10]
    schedule: str = "cosine"  # after warmup: cosine decay | constant
    warmup_steps: int = 0  # linear warmup from 0 to lr
    min_lr_ratio: float = 0.1  # cosine ends at lr * min_lr_ratio
    b1: float = 0.9  # first-moment decay (adamw, lion)
    b2: float = 0.999  # second-moment decay (adamw, lion)
    eps: float = 1e-8  # adamw denominator epsilon, in (0, 1]
    weight_decay: float = 0.0  # decoupled weight decay, in [0, 10]
    max_grad_norm: float = 1.0  # global-norm clipping; 0 disables

    def __post_init__(self):
        _choice(self, "name", OPTIMIZERS)
        _choice(self, "schedule", SCHEDULES)
        _bounded(self, "lr", 0.0, MAX_LR, lo_open=True)
        _at_least(self, "warmup_steps", 0)
        _bounded(self, "min_lr_ratio", 0.0, 1.0)
        for name in ("b1", "b2"):
            _bounded(self, name, 0.0, 1.0, hi_open=True)
        _bounded(self, "eps", 0.0, 1.0, lo_open=True)
        _bounded(self, "weight_decay", 0.0, 10.0)
        _at_least(self, "max_grad_norm", 0.0)


@dataclasses.dataclass(frozen=True)
class AlgoSection:
    name: str = "sft"  # a registered algorithm: sft | grpo | dr_grpo | opo | rloo | reinforce | ppo
    group_size: int = 1  # episodes per task group (contiguous in the batch)
    beta: float = 0.0  # KL coefficient towards the frozen reference policy
    kl_kind: str = "k3"  # KL estimator: k1 | k2 | k3
    kl_in: str = "loss"  # where the KL goes: loss (a loss term) | reward (per-turn penalty)
    clip_low: float = 0.2  # PPO ratio clip below 1
    clip_high: float | None = None  # PPO ratio clip above 1 (None = clip_low; DAPO: 0.28)
    dual_clip: float | None = None  # dual-clip bound c > 1 for negative advantages
    ratio_level: str = "token"  # token | sequence (GSPO) | sequence-token (GSPO-token)
    loss_agg: str = "token-mean"  # how per-token losses are reduced
    scale: str = "group"  # GRPO advantage std: group | batch | none
    dynamic_sampling: bool = False  # DAPO: drop groups whose returns are all equal
    gamma: float = 1.0  # discount over turns (ppo, reinforce)
    lam: float = 0.95  # GAE lambda (ppo)
    vf_coef: float = 0.5  # value-loss weight (ppo)
    value_clip: float | None = None  # PPO value clipping range (None = off)
    epochs: int = 1  # optimizer steps per rollout batch (opo: must be 1, strictly on-policy)
    # turn-level credit: a turn whose answer is unparsable or illegal gets its own
    # whitened -1 advantage, times this weight, on top of the episode's (0 = off; not ppo)
    turn_weight: float = 0.0

    def __post_init__(self):
        _choice(self, "name", algorithms.names())
        _choice(self, "kl_kind", KL_KINDS)
        _choice(self, "kl_in", KL_IN)
        _choice(self, "loss_agg", AGG_MODES)
        _choice(self, "ratio_level", RATIO_LEVELS)
        _choice(self, "scale", GRPO_SCALES)
        _at_least(self, "group_size", 1)
        _at_least(self, "beta", 0.0)
        _bounded(self, "clip_low", 0.0, 1.0, hi_open=True)
        _bounded(self, "clip_high", 0.0, optional=True)
        _bounded(self, "dual_clip", 1.0, lo_open=True, optional=True)
        for name in ("gamma", "lam"):
            _bounded(self, name, 0.0, 1.0)
        _at_least(self, "vf_coef", 0.0)
        _bounded(self, "value_clip", 0.0, lo_open=True, optional=True)
        _at_least(self, "epochs", 1)
        _at_least(self, "turn_weight", 0.0)
        try:  # the algorithm's own rules (algorithms/<name>.py)
            algorithms.get(self.name).check(self)
        except ValueError as e:
            raise ConfigError(str(e)) from None


@dataclasses.dataclass(frozen=True)
class RolloutSection:
    max_new_tokens: int = 8  # completion length budget per turn
    temperature: float = 1.0  # sampling temperature (the loss scores softmax(z / T) too)
    top_k: int | None = None  # keep the k most likely tokens (None = off)
    top_p: float | None = None  # nucleus sampling mass (None = off)
    min_p: float | None = None  # drop tokens below min_p x the top probability (None = off)
    stop_at_newline: bool = True  # a completion ends at a newline as well as at EOS

    def __post_init__(self):
        _at_least(self, "max_new_tokens", 1)
        _at_least(self, "temperature", 0.0, strict=True)
        if self.top_k is not None:
            _at_least(self, "top_k", 1)
        for name in ("top_p", "min_p"):
            _bounded(self, name, 0.0, 1.0, lo_open=True, optional=True)


@dataclasses.dataclass(frozen=True)
class ShapingSection:
    invalid_penalty: float = -5.0  # reward added to a turn whose answer does not parse
    exploration_bonus: float = 0.0  # RLFT: reward added to a turn whose parsed action is new
    # train on the env's expected reward of the action played (a bandit arm's mean)
    # instead of its sampled reward; the model still sees sampled rewards, eval reports them
    expected_reward: bool = False
    overlong_cache: int = 0  # DAPO soft overlong penalty window in tokens (0 = off)
    turn_penalty: float = 0.0  # reward added to every turn played (<= 0): a cost per move,
    #                            so that of two wins the shorter scores higher
    # Long-CoT: replace each turn's env reward by the cosine length reward of its
    # completion (correct = env reward > 0; rewards.cosine_length_reward's defaults)
    cosine_length: bool = False
    repetition_ngram: int = 0  # Long-CoT n-gram repetition penalty: n-gram size (0 = off)
    repetition_penalty: float = -0.05  # added per completion token inside a repeated n-gram
    # an unparsable answer plays a random legal stand-in; true: the turn keeps the env's
    # reward for it (RLFT), false: env reward 0 (single-turn tasks a stand-in could solve)
    standin_reward: bool = True

    def __post_init__(self):
        _bounded(self, "invalid_penalty", hi=0.0)
        _at_least(self, "repetition_ngram", 0)
        _bounded(self, "repetition_penalty", hi=0.0)
        _at_least(self, "exploration_bonus", 0.0)
        _at_least(self, "overlong_cache", 0)
        _bounded(self, "turn_penalty", -1.0, 0.0)


@dataclasses.dataclass(frozen=True)
class TrustRegionSection:
    # scale an iteration's step back along itself when its updates moved the sampled
    # tokens' log-probs by more than this many nats on average (0 = off)
    max_update_move: float = 0.0
    # when a step is scaled back by s, scale the optimizer's first moment by s too
    # (no effect while max_update_move is 0)
    scale_momentum: bool = False

    def __post_init__(self):
        _at_least(self, "max_update_move", 0.0)


@dataclasses.dataclass(frozen=True)
class WarmupSection:
    steps: int = 0  # supervised warm-up steps on scripted play before RL (0 = none)
    player: str = "random"  # scripted player whose moves are imitated
    lr: float = 2.0e-3  # warm-up learning rate (peak, after optim.warmup_steps), in (0, 10]
    # after its linear warm-up: "constant" | "cosine" (decays to lr * optim.min_lr_ratio)
    schedule: str = "constant"
    batch_size: int = 16  # warm-up examples per step
    # "sampled": imitate one move drawn from the player per board; "expected": the
    # cross-entropy against the player's whole move distribution (the mean of the
    # sampled loss over its moves; needs moves that differ in one answer token)
    targets: str = "sampled"

    def __post_init__(self):
        _at_least(self, "steps", 0)
        _choice(self, "player", PLAYERS)
        _choice(self, "targets", WARMUP_TARGETS)
        _choice(self, "schedule", SCHEDULES)
        _bounded(self, "lr", 0.0, MAX_LR, lo_open=True)
        _at_least(self, "batch_size", 1)


@dataclasses.dataclass(frozen=True)
class TrainSection:
    steps: int = 100  # optimizer steps in the run
    batch_size: int = 16  # sequences per step (all processes together)
    micro_batches: int = 1  # gradient-accumulation chunks per step
    max_len: int = 64  # token length of every training sequence
    seed: int = 0  # root of every random key in the run, in [0, 2**32 - 1]
    data: str = "sorting"  # data source: sorting (synthetic SFT) | env (scripted env play)
    log_every: int = 1  # steps between metric lines
    ckpt_every: int = 50  # steps between checkpoints (and one at the end)
    keep_checkpoints: int = 3  # checkpoints kept on disk
    progress: bool = True  # show a rich progress bar
    max_skipped_steps: int = 10  # consecutive skipped (non-finite) steps that stop the run

    def __post_init__(self):
        _choice(self, "data", DATA_SOURCES)
        for name in ("steps", "batch_size", "micro_batches", "max_len", "log_every",
                     "ckpt_every", "keep_checkpoints", "max_skipped_steps"):
            _at_least(self, name, 1)
        _bounded(self, "seed", 0, MAX_SEED)
        if self.batch_size % self.micro_batches:
            _fail(self, "micro_batches", f"must divide train.batch_size={self.batch_size}")


@dataclasses.dataclass(frozen=True)
class EnvSection:
    name: str = "tictactoe"  # a registered env (envs.registered())
    options: dict = dataclasses.field(default_factory=dict)  # passed to envs.make
    max_prompt_len: int = 32  # fixed length of rendered prompts, in tokens
    max_turns: int = 9  # turns per episode in a rollout
    # RL on a mixture of envs: [{name, weight, options, label}], each group's share
    # of train.batch_size in proportion to its weight (jaxrl_lm/train/mix.py). It
    # replaces env.name for the RL rollout only: env.name and env.options still
    # make the warm-up's and the evaluation's env, and each entry plays its own
    # options. `label` (default: the name) prefixes the group's metrics; labels
    # are unique, so one env can appear twice with different options
    mix: tuple[dict, ...] = ()

    def __post_init__(self):
        _at_least(self, "max_prompt_len", 1)
        _at_least(self, "max_turns", 1)
        _finite_tree(self, "options")  # envs compare options with <, which NaN passes
        if self.mix:
            self._check_mix()

    def _check_mix(self) -> None:
        """env.mix: dicts of a registered name, a finite weight > 0, options
        envs.make accepts and an optional label; labels (default: the name)
        unique."""
        from jaxrl_lm import envs  # lazily: importing every env costs time

        seen = set()
        for i, entry in enumerate(self.mix):
            where = f"env.mix.{i}"
            if not isinstance(entry, dict):
                raise ConfigError(f"{where}={entry!r}: expected {{name, weight, options}}")
            unknown = sorted(set(entry) - {"name", "weight", "options", "label"})
            if unknown:
                raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: "
                                  f"name, weight, options, label")
            name, weight = entry.get("name"), entry.get("weight", 1.0)
            options = entry.get("options") or {}
            if name not in envs.registered():
                raise ConfigError(f"{where}.name={name!r}: unknown env; choose one of "
                                  f"{', '.join(envs.registered())}")
            label = entry.get("label", name)
            if not isinstance(label, str) or not LABEL.fullmatch(label) or label in RESERVED:
                raise ConfigError(f"{where}.label={label!r}: must be letters, digits, '_' or "
                                  f"'-', not {' or '.join(RESERVED)} (it prefixes the group's "
                                  f"metrics)")
            if label in seen:
                raise ConfigError(f"{where}: label {label!r} used twice (an entry's label "
                                  f"defaults to its name); give each entry its own label")
            seen.add(label)
            if not is_finite(weight) or weight <= 0:
                raise ConfigError(f"{where}.weight={weight!r}: must be > 0 and finite")
            if not isinstance(options, dict):
                raise ConfigError(f"{where}.options={options!r}: expected a mapping")
            bad = non_finite(options, f"{where}.options")
            if bad:
                raise ConfigError(f"{bad[0][0]}={bad[0][1]!r}: must be a finite number "
                                  f"(not NaN or inf)")
            try:
                envs.make(name, **options)
            except (TypeError, ValueError) as e:
                raise ConfigError(f"{where}.options: {e}") from None


@dataclasses.dataclass(frozen=True)
class EvalSection:
    episodes: int = 64  # episodes per evaluation (per variant)
    every: int = 0  # RL runs on an env: also evaluate every N iterations and after the last,
    #                 on episodes of their own (logged as eval/...); 0 = before and after only
    keep: str = "last"  # the policy an RL run ends with (exported, evaluated after): last |
    #                     best (the best mean return over the targets of those evaluations)
    greedy: bool = True  # argmax decoding during evaluation
    samples: int = 0  # data runs: sampled completions per held-out row for pass@k (0: greedy only)
    variants: dict = dataclasses.field(default_factory=dict)  # label -> env.options overrides,
    #   each evaluated (e.g. {minimax: {opponent: minimax}}); none: the training env itself

    def __post_init__(self):
        _at_least(self, "episodes", 1)
        _at_least(self, "every", 0)
        _choice(self, "keep", ("last", "best"))
        _at_least(self, "samples", 0)
        for label, opts in self.variants.items():
            if not isinstance(opts, dict):
                _fail(self, "variants", f"{label!r} must map to a dict of env options, "
                                         f"got {opts!r}")
        _finite_tree(self, "variants")


@dataclasses.dataclass(frozen=True)
class DataSection:
    # a prompt dataset to train on instead of env play: a JSONL / JSON / Parquet file
    # or a folder saved by `datasets` (None: play env.name)
    path: str | None = None
    split: str | None = None  # the split of a saved DatasetDict folder (None: train)
    eval_path: str | None = None  # held-out prompts (None: eval_fraction of path's rows)
    eval_split: str | None = None  # the split of eval_path's DatasetDict folder
    eval_fraction: float = 0.1  # rows of path held out when eval_path is None
    prompt_column: str = "prompt"  # a string, or a chat `messages` list of {role, content}
    answer_column: str = "answer"  # the reference answer each completion is graded against
    system_prompt: str | None = None  # a system turn put before every prompt
    chat: bool = True  # render prompts through the tokenizer's chat template (else the plain one)
    on_overlong: str = "error"  # a prompt longer than env.max_prompt_len: error | drop (counted)
    shuffle: bool = True  # a new row order each epoch
    marker: str = "####"  # where a completion's final answer is: #### | boxed | answer_tag
    match: str = "number"  # how answers compare: number (normalised) | exact
    answer_width: int = 32  # bytes kept of an extracted answer
    demo_column: str = "demo"  # worked completions the SFT warm-up imitates (warmup.steps > 0)
    # what decides pass@k in evaluation: "verifier" (the answer after data.marker against
    # answer_column) or a host reward function (built-in or module.fn; right when >= 1)
    grader: str = "verifier"

    def __post_init__(self):
        _choice(self, "on_overlong", OVERLONG)
        _choice(self, "marker", MARKERS)
        _choice(self, "match", MODES)
        _at_least(self, "answer_width", 1)
        _bounded(self, "eval_fraction", 0.0, 1.0, hi_open=True)
        if self.path is None and self.eval_path is not None:
            _fail(self, "eval_path", "needs data.path (the prompts to train on)")


@dataclasses.dataclass(frozen=True)
class RewardSection:
    answer_weight: float = 1.0  # data runs: weight of the verifier's 0/1 answer reward
    format_weight: float = 0.0  # data runs: weight of the think/answer tags' format reward
    # data runs: host reward functions on the decoded text, TRL's form
    # fn(prompts, completions, **columns) -> floats: [{fn: module.name or math_verify, weight: 1.0}]
    functions: tuple[dict, ...] = ()
    workers: int = 0  # processes computing the functions, each on a slice of the batch (0: none)

    def __post_init__(self):
        _at_least(self, "workers", 0)
        _bounded(self, "answer_weight")
        _bounded(self, "format_weight")
        for i, entry in enumerate(self.functions):
            if not isinstance(entry, dict) or not isinstance(entry.get("fn"), str):
                _fail(self, "functions", f"entry {i} must be a mapping with a string `fn`, "
                                         f"e.g. {{fn: math_verify, weight: 1.0}}")
            extra = sorted(set(entry) - {"fn", "weight"})
            if extra:
                _fail(self, "functions", f"entry {i}: unknown key(s) {', '.join(extra)}; "
                                         f"allowed: fn, weight")
            w = entry.get("weight", 1.0)
            if not is_finite(w):
                _fail(self, "functions", f"entry {i}: weight {w!r} must be a finite number")


# `_fail` names a section by this table (config_checks.py owns it)
SECTION_OF.update({ModelSection: "model", MeshSection: "mesh", OptimSection: "optim",
                   AlgoSection: "algo", RolloutSection: "rollout", ShapingSection: "shaping",
                   TrustRegionSection: "trust_region", TrainSection: "train",
                   EnvSection: "env", DataSection: "data", RewardSection: "reward",
                   EvalSection: "eval", WarmupSection: "warmup", LoraSection: "lora"})
