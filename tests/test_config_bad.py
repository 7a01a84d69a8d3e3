"""Bad configs, values and files at every `jaxrl-lm` entry point (issue 27:
nothing lost, nothing silent): exit status 2, exactly one stderr line
`error: ...` that names the field, flag or file, no traceback, no run
directory. The table runs in-process through `jaxrl_lm.cli.main`; a few cases
go through the real entry points in subprocesses. Every float field of every
config section is checked for NaN and inf by enumeration, so a field added
later cannot miss it. Malformed command lines: tests/test_cli_usage.py."""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import subprocess
import sys
import typing

import pytest

from jaxrl_lm import config as C
from jaxrl_lm.cli import main
from tests.bad_input import TTT, E, H, T, files, one_error_line  # noqa: F401 - files: a fixture


# (kind, argv, a substring of the error line); {d}: the fixture folder, {run}: --out
CASES = [
    # floats: NaN, inf, absurd
    ("lr NaN", T("--optim.lr", ".nan"), "optim.lr=nan: must lie in (0, 10]"),
    ("lr inf", T("--optim.lr", ".inf"), "optim.lr=inf: must lie in (0, 10]"),
    ("lr 1e30", T("--optim.lr", "1e30"), "optim.lr=1e+30: must lie in (0, 10]"),
    ("lr the word nan", T("--optim.lr", "nan"), "optim.lr='nan': expected a value of type float"),
    ("lr past float range", T("--optim.lr", "1" + "0" * 400), "must be a finite number"),
    ("lr a bool", T("--optim.lr", "true"), "optim.lr=True: expected a value of type float"),
    ("eps NaN", T("--optim.eps", ".nan"), "optim.eps=nan: must lie in (0, 1]"),
    ("clipping NaN", T("--optim.max_grad_norm", ".nan"),
     "optim.max_grad_norm=nan: must be >= 0 and finite"),
    ("clipping inf", T("--optim.max_grad_norm", ".inf"),
     "optim.max_grad_norm=inf: must be >= 0 and finite"),
    ("weight decay 1e6", T("--optim.weight_decay", "1e6"),
     "optim.weight_decay=1000000.0: must lie in [0, 10]"),
    ("Adam beta NaN", T("--optim.b1", ".nan"), "optim.b1=nan: must lie in [0, 1)"),
    ("KL coefficient inf", T("--algo.beta", ".inf"), "algo.beta=inf: must be >= 0 and finite"),
    ("discount NaN", T("--algo.gamma", ".nan"), "algo.gamma=nan: must lie in [0, 1]"),
    ("dual clip NaN", T("--algo.dual_clip", ".nan"), "algo.dual_clip=nan: must be None or > 1"),
    ("temperature inf", T("--rollout.temperature", ".inf"),
     "rollout.temperature=inf: must be > 0 and finite"),
    ("top-p NaN", T("--rollout.top_p", ".nan"), "rollout.top_p=nan: must be None or lie in (0, 1]"),
    ("invalid penalty -inf", T("--shaping.invalid_penalty", "-.inf"),
     "shaping.invalid_penalty=-inf: must be <= 0 and finite"),
    ("update bound NaN", T("--trust_region.max_update_move", ".nan"),
     "trust_region.max_update_move=nan: must be >= 0 and finite"),
    ("warm-up lr NaN", T("--warmup.lr", ".nan"), "warmup.lr=nan: must lie in (0, 10]"),
    ("eval fraction NaN", T("--data.eval_fraction", ".nan"), "data.eval_fraction=nan: must lie in"),
    ("reward weight NaN", T("--reward.answer_weight", ".nan"),
     "reward.answer_weight=nan: must be a finite number"),
    # sizes: negative, zero, fractional, past memory
    ("zero batch", T("--train.batch_size", "0"), "train.batch_size=0: must be >= 1"),
    ("negative steps", T("--train.steps", "-1"), "train.steps=-1: must be >= 1"),
    ("zero micro-batches", T("--train.micro_batches", "0"), "train.micro_batches=0: must be >= 1"),
    ("zero new tokens", T("--rollout.max_new_tokens", "0"), "rollout.max_new_tokens=0: must be >= 1"),
    ("negative prompt length", T("--env.max_prompt_len", "-5"), "env.max_prompt_len=-5: must be >= 1"),
    ("zero eval episodes", T("--eval.episodes", "0"), "eval.episodes=0: must be >= 1"),
    ("fractional batch", T("--train.batch_size", "2.5"),
     "train.batch_size=2.5: expected a value of type int"),
    ("max_len 1e9", T("--train.max_len", "1e9"),
     "train.max_len=1000000000: the sft update needs at least"),
    ("batch 1e7", T("--train.batch_size", "1e7"),
     "train.batch_size=10000000, train.micro_batches=1, train.max_len=64: the sft update needs"),
    ("RL turns 1e6", T("--config", TTT, "--env.max_turns", "1e6"), "env.max_turns=1000000, "),
    ("RL eval episodes 1e9", T("--config", TTT, "--eval.episodes", "1e9"),
     "eval.episodes=1000000000, env.max_prompt_len="),
    # seeds
    ("seed 2**32", T("--train.seed", str(2**32)), "train.seed=4294967296: must lie in [0, 4294967295]"),
    ("seed 2**40", T("--train.seed", str(2**40)), "train.seed=1099511627776: must lie in [0, "),
    ("seed 2**63", T("--train.seed", str(2**63)), "train.seed=9223372036854775808: must lie in [0, "),
    ("seed -1", T("--train.seed", "-1"), "train.seed=-1: must lie in [0, 4294967295]"),
    # choices, keys, types
    ("unknown algorithm", T("--algo.name", "a2c"), "algo.name='a2c': must be one of"),
    ("unknown optimizer", T("--optim.name", "sgd"), "optim.name='sgd': must be one of"),
    ("unknown dtype", T("--model.dtype", "float8"), "model.dtype='float8': must be one of"),
    ("unknown env", T("--config", TTT, "--env.name", "chess"), "env.name='chess': unknown env"),
    ("mix without a group per entry", T("--config", TTT, "--train.batch_size", "8"),
     "env.mix has 2 entries, each needing a group of algo.group_size=8 episodes at least; "
     "train.batch_size=8 gives 1"),
    ("unknown field", T("--optim.learning_rate", "0.1"), "unknown key(s) optim.learning_rate"),
    ("unknown section", T("--trainer.steps", "3"), "unknown key(s) trainer"),
    ("override without a value", T("--optim.lr"), "override --optim.lr: missing a value"),
    ("wrong type", T("--train.steps", "many"), "train.steps='many': expected a value of type int"),
    # env options and eval variants
    ("env option NaN", T("--config", TTT, "--env.options", "{noise: .nan}"),
     "env.options.noise=nan: must be a finite number"),
    ("env option inf in a list", T("--env.options", "{ships: [3, .inf]}"),
     "env.options.ships.1=inf: must be a finite number"),
    ("eval variant NaN", T("--config", TTT, "--eval.variants", "{noisy: {noise: .nan}}"),
     "eval.variants.noisy.noise=nan: must be a finite number"),
    ("a key inside a non-mapping field", T("--train.steps.x", "1"),
     "override --train.steps.x: train.steps does not hold a mapping"),
    ("keep best without evaluations", T("--config", TTT, "--eval.every", "0"),
     "eval.keep='best' picks among the evaluations during training: set eval.every > 0"),
    ("evaluations during SFT", T("--eval.every", "10"), "eval.every=10: evaluations during "
     "training are for RL runs on an env"),
    ("unknown env option", T("--config", TTT, "--env.options", "{zzz: 1}"),
     "env.options: unknown option"),
    ("env options with a key twice", T("--env.options", "{noise: 0.1, noise: 0.2}"),
     "override --env.options: duplicate key noise"),
    # config files
    ("duplicate key", T("--config", "{d}/dup.yaml"),
     "duplicate key optim.lr (line 3; first given on line 2)"),
    ("duplicate section", T("--config", "{d}/dup_section.yaml"), "duplicate key train (line 3;"),
    ("non-UTF-8 config", T("--config", "{d}/latin1.yaml"),
     "config '{d}/latin1.yaml' is not UTF-8 text (byte 0xe9 on line 2)"),
    ("missing config", T("--config", "{d}/nope.yaml"),
     "cannot read config '{d}/nope.yaml': No such file or directory"),
    ("config is a folder", T("--config", "{d}"), "cannot read config '{d}': Is a directory"),
    ("config not YAML", T("--config", "{d}/broken.yaml"), "config '{d}/broken.yaml' is not valid YAML"),
    ("config not a mapping", T("--config", "{d}/list.yaml"), "expected a mapping at the top level"),
    # model.path folders
    ("model folder missing", H("nope"), "model.path='{d}/nope': path='{d}/nope' is not a directory"),
    ("no config.json", H("no_config"), "has no config.json"),
    ("config.json not JSON", H("bad_json"), "config.json' is not valid JSON"),
    ("config.json not UTF-8", H("latin1_json"), "config.json' is not UTF-8 text"),
    ("config.json not an object", H("list_json"), "expected a JSON object, got list"),
    ("unsupported model_type", H("phi3"), "config.json: model_type='phi3' is not supported"),
    ("config.json field missing", H("no_vocab"), "missing required field 'vocab_size'"),
    ("config.json field a string", H("str_hidden"), "hidden_size='128' must be a positive integer"),
    ("no weights", H("no_weights"), "has no *.safetensors weights"),
    ("truncated safetensors", H("truncated"),
     "'{d}/truncated/model.safetensors' is not a readable safetensors file"),
    ("garbage safetensors", H("garbage"), "model.safetensors' is not a readable safetensors file"),
    ("wrong-shape tensor", H("wrong_shape"), "tensor 'model.layers.1.mlp.up_proj.weight' has "
     "shape (128, 512); config.json implies (512, 128)"),
    ("missing tensor", H("missing_tensor"), "missing tensor 'model.norm.weight'"),
    ("extra tensor", H("extra_tensor"), "1 tensors the llama config does not use, e.g. ['extra']"),
    ("no tokenizer files", H("no_tokenizer"), "has no tokenizer files"),
    ("shard index not JSON", H("bad_index"), "model.safetensors.index.json' is not valid JSON"),
    ("shard missing", H("missing_shard"), "lists 'model-00002-of-00002.safetensors', which is missing"),
    ("tokenizer.json broken", H("bad_tokenizer"), "'{d}/bad_tokenizer': its tokenizer files do not load"),
    # jaxrl-lm eval
    ("eval --max-new-tokens 0", E("--max-new-tokens", "0"), "--max-new-tokens 0: must be >= 1"),
    ("eval --max-new-tokens -1", E("--max-new-tokens", "-1"), "--max-new-tokens -1: must be >= 1"),
    ("eval --max-prompt-len 0", E("--max-prompt-len", "0"), "--max-prompt-len 0: must be >= 1"),
    ("eval --episodes 0", E("--episodes", "0"), "--episodes 0: must be >= 1"),
    ("eval --episodes 1e9", E("--episodes", "1000000000"),
     "--episodes 1000000000, --max-prompt-len 160, --max-new-tokens 10: sampling needs at least"),
    ("eval --seed 2**32", E("--seed", str(2**32)), "--seed 4294967296: must lie in [0, 4294967295]"),
    ("eval --seed -1", E("--seed", "-1"), "--seed -1: must lie in [0, 4294967295]"),
    ("eval option NaN", E("--option", "noise=.nan"), "--option noise=nan: must be a finite number"),
    ("eval option with a key twice", E("--option", "x={a: 1, a: 2}"), "--option x: duplicate key a"),
    ("eval option not YAML", E("--option", "x={a"), "--option 'x={a': the value is not YAML"),
    ("eval unknown env", ["eval", "--checkpoint", "{d}/base", "--env", "chess"],
     "--env 'chess': unknown env"),
    ("eval truncated checkpoint", ["eval", "--checkpoint", "{d}/truncated", "--env", "tictactoe"],
     "--checkpoint '{d}/truncated': '{d}/truncated/model.safetensors' is not a readable"),
    ("eval wrong-shape checkpoint", ["eval", "--checkpoint", "{d}/wrong_shape", "--env", "tictactoe"],
     "tensor 'model.layers.1.mlp.up_proj.weight' has shape (128, 512)"),
    ("eval checkpoint without config.json", ["eval", "--checkpoint", "{d}/no_config", "--env",
                                             "tictactoe"], "no HF folder (config.json) there"),
    ("eval run config not UTF-8", ["eval", "--checkpoint", "{d}/latin1_run", "--env", "tictactoe"],
     "run config '{d}/latin1_run/config.yaml' is not UTF-8 text"),
    # bench, plot, the command itself
    ("unknown benchmark", ["bench", "nosuch"], "bench 'nosuch': unknown benchmark; choose one of"),
    ("bench flag value", ["bench", "grpo-step", "--group", "1"],
     "bench grpo-step --group=1: GRPO needs >= 2 completions per prompt"),
    ("bench flag list", ["bench", "rollout", "--batches", "x"],
     "bench rollout --batches='x': must be comma-separated ints"),
    ("bench chunk table size", ["bench", "logprobs-memory", "--chunk-table", "0,128"],
     "bench logprobs-memory --chunk-table='0,128': every chunk must be >= 1"),
    ("plot without metrics", ["plot", "{d}"], "has no metrics.jsonl"),
    ("unknown command", ["fit"], "unknown command 'fit'; choose one of"),
]


def test_the_table_has_forty_kinds_or_more():
    kinds = [k for k, _, _ in CASES]
    assert len(kinds) == len(set(kinds)) and len(kinds) >= 40


@pytest.mark.parametrize("kind,argv,message", CASES, ids=[k for k, _, _ in CASES])
def test_bad_input_isone_error_line(files, tmp_path, capsys, kind, argv, message):
    run = tmp_path / "run"
    fill = lambda s: s.replace("{d}", str(files)).replace("{run}", str(run))  # noqa: E731
    assert main([fill(a) for a in argv]) == 2
    one_error_line(capsys.readouterr().err, fill(message))
    assert not run.exists()


def _float_fields() -> list[tuple[str, str]]:
    """(section, field) of every float (or float | None) field of every section."""
    out = []
    for sec in dataclasses.fields(C.Config):
        cls = typing.get_type_hints(C.Config)[sec.name]
        if dataclasses.is_dataclass(cls):
            hints = typing.get_type_hints(cls)
            out += [(sec.name, f.name) for f in dataclasses.fields(cls)
                    if float in (hints[f.name], *typing.get_args(hints[f.name]))]
    return out


def test_every_float_field_refuses_nan_and_inf():
    """No float field accepts NaN or +-inf, each refused with an error naming it
    (14 of 21 took NaN once: a bound written with < lets NaN through)."""
    fields = _float_fields()
    assert ("optim", "max_grad_norm") in fields and len(fields) >= 21
    for section, field in fields:
        for value in (math.nan, math.inf, -math.inf):
            with pytest.raises(C.ConfigError) as e:
                C.from_dict({section: {field: value}})
            assert str(e.value).startswith(f"{section}.{field}={value!r}: must "), str(e.value)


def test_sections_built_directly_refuse_nan_too():
    """The range checks themselves are NaN-safe, not only the loader's coercion."""
    with pytest.raises(C.ConfigError, match=r"optim.max_grad_norm=nan: must be >= 0 and finite"):
        C.OptimSection(max_grad_norm=math.nan)
    with pytest.raises(C.ConfigError, match=r"algo.value_clip=inf: must be None or > 0"):
        C.AlgoSection(value_clip=math.inf)
    with pytest.raises(C.ConfigError, match=r"env.options.sigma=nan: must be a finite number"):
        C.EnvSection(options={"sigma": math.nan})


def test_seed_bounds_are_inclusive():
    assert C.from_dict({"train": {"seed": 2**32 - 1}}).train.seed == C.MAX_SEED == 2**32 - 1
    assert C.from_dict({"train": {"seed": 0}}).train.seed == 0


def test_memory_estimate_passes_the_presets_and_names_what_it_counts():
    from jaxrl_lm import memory_check

    cfg = C.load_config(TTT)
    mcfg = C.model_config(cfg)
    need = memory_check.check_memory(cfg, mcfg)
    assert 0 < need < 2**30  # the tiny preset needs well under a GiB
    budget = (1024, "a test budget")
    # the largest need is named: the preset's 512 evaluation episodes, else the rollout's 128
    with pytest.raises(C.ConfigError, match=r"^eval.episodes=512, .*: the evaluation needs at "
                                            r"least .* but the machine has 1\.0 KiB \(a test "
                                            r"budget\); lower these sizes$"):
        memory_check.check_memory(cfg, mcfg, available=budget)
    cfg = C.load_config(TTT, ["--eval.episodes", "128"])
    with pytest.raises(C.ConfigError, match=r"^train.batch_size=128, .*: the rollout needs at "
                                            r"least .* but the machine has 1\.0 KiB \(a test "
                                            r"budget\); lower these sizes$"):
        memory_check.check_memory(cfg, mcfg, available=budget)
    assert memory_check.param_count(mcfg) == 1_000_576 - (2 * 4 + 1) * 128  # norms left out


def _subprocess(argv: list[str], tmp_path: pathlib.Path) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    return subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow  # four interpreters start (~25 s on 2 cores)
def test_real_entry_points_printone_error_line(files, tmp_path):
    """`python -m jaxrl_lm.cli` and the installed `jaxrl-lm` script, side by side."""
    script = pathlib.Path(sys.executable).parent / "jaxrl-lm"
    module = [sys.executable, "-m", "jaxrl_lm.cli"]
    run = tmp_path / "run"
    cases = [
        (module + ["train", "--out", str(run), "--optim.max_grad_norm", ".nan"],
         "error: optim.max_grad_norm=nan: must be >= 0 and finite"),
        (module + ["train", "--out", str(run), "--model.source", "hf", "--model.path",
                   str(files / "wrong_shape")],
         "tensor 'model.layers.1.mlp.up_proj.weight' has shape (128, 512); config.json implies"),
        ([str(script) if script.exists() else sys.executable, *([] if script.exists() else
          ["-m", "jaxrl_lm.cli"]), "eval", "--checkpoint", str(files / "base"), "--env",
          "tictactoe", "--max-new-tokens", "0"], "error: --max-new-tokens 0: must be >= 1"),
        (module + ["bench", "envs", "--batch", "x"],  # a traceback once
         "error: jaxrl-lm bench envs: argument --batch: invalid value 'x'"),
    ]
    procs = [_subprocess(argv, tmp_path) for argv, _ in cases]
    for proc, (_, message) in zip(procs, cases):
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 2, err
        one_error_line(err, message)
    assert not run.exists()
