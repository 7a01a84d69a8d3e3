"""Config: every kind of invalid configuration is rejected with its message;
overrides parse and coerce; YAML presets load; the CLI prints `error:`."""

import dataclasses
import glob
import os
import subprocess
import sys
import typing

import pytest

from jaxrl_lm import config as C

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (kind, nested override data, substring the message must contain)
INVALID = [
    ("unknown section", {"trainer": {"steps": 3}}, "unknown key(s) trainer"),
    ("unknown field", {"optim": {"learning_rate": 0.1}}, "unknown key(s) optim.learning_rate"),
    ("group size does not divide batch", {"train": {"batch_size": 6}, "algo": {"group_size": 4}},
     "algo.group_size=4 must divide train.batch_size=6"),
    ("negative learning rate", {"optim": {"lr": -0.001}}, "optim.lr=-0.001: must lie in (0, 10]"),
    ("max length shorter than prompt",
     {"algo": {"name": "grpo"}, "env": {"max_prompt_len": 60}, "train": {"max_len": 64}},
     "train.max_len=64 is shorter than env.max_prompt_len + rollout.max_new_tokens = 68"),
    ("unknown algorithm", {"algo": {"name": "reinforce++"}}, "algo.name='reinforce++': must be one of sft"),
    ("bad dtype", {"model": {"dtype": "float8"}}, "model.dtype='float8': must be one of float32"),
    ("dtype the decoder lacks", {"model": {"dtype": "float16"}},
     "model.dtype='float16': must be one of float32, bfloat16"),
    ("bad top-p", {"rollout": {"top_p": 1.5}}, "rollout.top_p=1.5: must be None or lie in (0, 1]"),
    ("overlong window past the budget", {"shaping": {"overlong_cache": 8}},
     "shaping.overlong_cache=8: must be < rollout.max_new_tokens=8"),
    ("old and new name of one key", {"algo": {"temperature": 0.5}, "rollout": {"temperature": 0.7}},
     "algo.temperature and rollout.temperature are both given"),
    ("bad optimizer", {"optim": {"name": "sgd"}}, "optim.name='sgd': must be one of adamw, adafactor, lion"),
    ("bad schedule", {"optim": {"schedule": "linear"}}, "optim.schedule='linear': must be one of cosine"),
    ("bad warm-up schedule", {"warmup": {"schedule": "step"}},
     "warmup.schedule='step': must be one of cosine"),
    ("warmup longer than run", {"optim": {"warmup_steps": 20}, "train": {"steps": 10}},
     "optim.warmup_steps=20 must be <= train.steps=10"),
    ("micro-batches do not divide batch", {"train": {"batch_size": 10, "micro_batches": 3}},
     "train.micro_batches=3: must divide train.batch_size=10"),
    ("two -1 in mesh", {"mesh": {"data": -1, "fsdp": -1}}, "at most one of data/fsdp/tensor may be -1"),
    ("zero mesh size", {"mesh": {"tensor": 0}}, "mesh.tensor=0: must be a positive size or -1"),
    ("wrong type", {"train": {"steps": "many"}}, "train.steps='many': expected a value of type int"),
    ("negative KL coefficient", {"algo": {"beta": -0.1}}, "algo.beta=-0.1: must be >= 0"),
    ("negative update bound", {"trust_region": {"max_update_move": -0.1}},
     "trust_region.max_update_move=-0.1: must be >= 0"),
    ("momentum scaling without a first moment",
     {"trust_region": {"scale_momentum": True, "max_update_move": 0.1},
      "optim": {"name": "adafactor"}},
     "trust_region.scale_momentum needs a first moment to scale: optim.name must be adamw or lion"),
    ("bad KL estimator", {"algo": {"kl_kind": "k4"}}, "algo.kl_kind='k4': must be one of k1, k2, k3"),
    ("bad loss aggregation", {"algo": {"loss_agg": "mean"}}, "algo.loss_agg='mean': must be one of"),
    ("keep no checkpoints", {"train": {"keep_checkpoints": 0}}, "train.keep_checkpoints=0: must be >= 1"),
    ("bad Adam beta", {"optim": {"b2": 1.0}}, "optim.b2=1.0: must lie in [0, 1)"),
    ("hf without a path", {"model": {"source": "hf"}}, "model.path=None: must name a local HF folder"),
    ("half a multi-host spec", {"mesh": {"num_processes": 2}}, "must be given together"),
    ("section that is not a mapping", {"optim": 3}, "optim: expected a mapping"),
    ("unknown data source", {"train": {"data": "web"}}, "train.data='web': must be one of sorting, env"),
]


@pytest.mark.parametrize("kind,data,message", INVALID, ids=[k for k, _, _ in INVALID])
def test_invalid_config_is_rejected(kind, data, message):
    with pytest.raises(C.ConfigError) as e:
        C.from_dict(data)
    assert message in str(e.value), str(e.value)


def test_mesh_product_must_match_devices():
    cfg = C.from_dict({"mesh": {"data": 2, "fsdp": 2, "tensor": 1}})
    with pytest.raises(C.ConfigError, match=r"has 4 devices but jax.device_count\(\) is 8"):
        C.check_runtime(cfg, 8)
    cfg = C.from_dict({"mesh": {"data": -1, "fsdp": 3}})
    with pytest.raises(C.ConfigError, match="do not divide the 8 devices"):
        C.check_runtime(cfg, 8)
    assert C.resolve_mesh_shape((-1, 2, 2), 8) == (2, 2, 2)
    assert C.resolve_mesh_shape((1, -1, 1), 1) == (1, 1, 1)


def test_batch_must_split_over_data_and_fsdp():
    cfg = C.from_dict({"mesh": {"data": 4, "fsdp": 2}, "train": {"batch_size": 12}})
    with pytest.raises(C.ConfigError, match="must be divisible by mesh.data\\*mesh.fsdp=8"):
        C.check_runtime(cfg, 8)


def test_unknown_env_checked_against_registry():
    from jaxrl_lm import envs

    cfg = C.from_dict({"algo": {"name": "grpo"}, "env": {"name": "chess", "max_prompt_len": 8},
                       "train": {"max_len": 32}})
    with pytest.raises(C.ConfigError, match="env.name='chess': unknown env; choose one of") as e:
        C.check_runtime(cfg, 8)
    assert ", ".join(envs.registered()) in str(e.value)


def test_unknown_env_option_checked():
    from jaxrl_lm import envs

    name = envs.registered()[0]
    cfg = C.from_dict({"algo": {"name": "grpo"}, "env": {"name": name, "options": {"zzz": 1},
                       "max_prompt_len": 8}, "train": {"max_len": 32}})
    with pytest.raises(C.ConfigError, match="env.options: unknown option"):
        C.check_runtime(cfg, 8)


def test_overrides_parse_and_coerce():
    got = C.parse_overrides(["--algo.beta", "0.04", "--train.steps=7", "--optim.lr", "1e-4",
                             "--train.progress", "false", "--algo.clip_high", "none"])
    assert got == {"algo": {"beta": 0.04, "clip_high": None}, "train": {"steps": 7, "progress": False},
                   "optim": {"lr": 1e-4}}
    cfg = C.from_dict(got)
    assert cfg.algo.beta == 0.04 and isinstance(cfg.train.steps, int) and cfg.optim.lr == 1e-4
    # an int given for a float field becomes a float
    assert isinstance(C.from_dict({"algo": {"beta": 1}}).algo.beta, float)
    for bad in (["--algo"], ["algo.beta", "1"], ["--beta", "1"], ["--algo.beta"]):
        with pytest.raises(C.ConfigError, match="override"):
            C.parse_overrides(bad)


def test_an_override_may_set_one_key_inside_a_mapping_field():
    ttt = os.path.join(ROOT, "launch", "configs", "tictactoe.yaml")
    preset = C.load_config(ttt)
    cfg = C.load_config(ttt, ["--env.options.noise", "0.7", "--eval.variants.random.opponent",
                              "noisy", "--eval.variants.mcts", "{opponent: mcts}"])
    assert cfg.env.options == {**preset.env.options, "noise": 0.7}  # the other keys kept
    assert cfg.eval.variants == {"random": {"opponent": "noisy", "illegal": "end"},
                                 "minimax": preset.eval.variants["minimax"],
                                 "mcts": {"opponent": "mcts"}}
    # a whole mapping replaces the preset's; a key inside it is set after, in any order
    cfg = C.load_config(ttt, ["--env.options.prompt", "short", "--env.options", "{noise: 0.1}"])
    assert cfg.env.options == {"noise": 0.1, "prompt": "short"}
    with pytest.raises(C.ConfigError, match=r"^override --train.steps.x: train.steps does not "
                                            r"hold a mapping; only env.options, eval.variants"):
        C.load_config(ttt, ["--train.steps.x", "1"])
    with pytest.raises(C.ConfigError, match=r"env.options.noise=nan: must be a finite number"):
        C.load_config(ttt, ["--env.options.noise", ".nan"])


def test_presets_load_and_round_trip(tmp_path):
    # paprika.yaml drives `jaxrl-lm paprika` (its stages hold train configs): tests/test_paprika.py
    paths = sorted(p for p in glob.glob(os.path.join(ROOT, "launch", "configs", "*.yaml"))
                   if not p.endswith("paprika.yaml"))
    assert any(p.endswith("tiny.yaml") for p in paths)
    for p in paths:
        cfg = C.load_config(p)
        out = tmp_path / "c.yaml"
        out.write_text(C.dump_yaml(cfg))
        assert C.load_config(str(out)) == cfg
    cfg = C.load_config(os.path.join(ROOT, "launch", "configs", "tiny.yaml"), ["--train.steps", "30"])
    assert cfg.train.steps == 30


def test_cli_prints_error_without_traceback(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "jaxrl_lm.cli", "train", "--config",
                        os.path.join(ROOT, "launch", "configs", "tiny.yaml"), "--optim.lr", "-1",
                        "--out", str(tmp_path / "run")], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip() == "error: optim.lr=-1.0: must lie in (0, 10]", r.stderr
    assert "Traceback" not in r.stderr


def test_cli_mesh_error_before_compiling(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "jaxrl_lm.cli", "train", "--config",
                        os.path.join(ROOT, "launch", "configs", "tiny.yaml"), "--mesh.data", "3",
                        "--out", str(tmp_path / "run")], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: mesh {'data': 3, 'fsdp': 1, 'tensor': 1} has 3 devices"), r.stderr
    assert not (tmp_path / "run").exists()


def test_warmup_sub_run_takes_the_warmup_schedule():
    """The SFT sub-run gets warmup.lr/schedule and the run's own min_lr_ratio; its
    cosine ends at lr * min_lr_ratio after warmup.steps."""
    from jaxrl_lm.train.trainer import warmup_config
    from jaxrl_lm.train.optim import make_schedule

    base = {"warmup": {"steps": 40, "lr": 0.004}, "optim": {"lr": 0.001, "warmup_steps": 2,
                                                            "min_lr_ratio": 0.25}}
    const = warmup_config(C.from_dict(base))
    assert (const.optim.schedule, const.optim.lr, const.train.steps) == ("constant", 0.004, 40)
    cos = warmup_config(C.from_dict({**base, "warmup": {**base["warmup"], "schedule": "cosine"}}))
    assert cos.optim.schedule == "cosine"
    sched = make_schedule(cos.optim, cos.train.steps)
    assert float(sched(2)) == pytest.approx(0.004)
    assert float(sched(40)) == pytest.approx(0.001)
    assert float(make_schedule(const.optim, 40)(40)) == pytest.approx(0.004)


def test_old_keys_still_load_with_a_warning():
    """Keys that moved out of `algo` load as their new names, with a FutureWarning."""
    old = {"algo": {"name": "grpo", "group_size": 2, "max_new_tokens": 5, "temperature": 0.7,
                    "invalid_penalty": -1.0, "overlong_cache": 2, "max_update_move": 0.1,
                    "scale_momentum": True, "exploration_bonus": 0.5, "expected_reward": True}}
    new = {"algo": {"name": "grpo", "group_size": 2},
           "rollout": {"max_new_tokens": 5, "temperature": 0.7},
           "shaping": {"invalid_penalty": -1.0, "overlong_cache": 2, "exploration_bonus": 0.5,
                       "expected_reward": True},
           "trust_region": {"max_update_move": 0.1, "scale_momentum": True}}
    with pytest.warns(FutureWarning, match="algo.max_new_tokens is now rollout.max_new_tokens"):
        got = C.from_dict(old)
    assert got == C.from_dict(new)
    assert set(C.MOVED_KEYS) == {f"algo.{k}" for k in old["algo"]} - {"algo.name", "algo.group_size"}
    with pytest.warns(FutureWarning):
        assert C.load_config(None, ["--algo.temperature", "0.5"]).rollout.temperature == 0.5


def test_field_help_lists_every_field_with_default_and_comment():
    text = C.field_help()
    for section in dataclasses.fields(C.Config):
        cls = typing.get_type_hints(C.Config)[section.name]
        if not dataclasses.is_dataclass(cls):  # the top-level `imports` list
            assert f"config key {section.name}: ()" in text
            continue
        for f in dataclasses.fields(cls):
            line = next(l for l in text.splitlines() if l.strip().startswith(f"--{section.name}.{f.name} "))
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            assert f"({default!r})" in line
            assert len(line.split(")  ", 1)[-1]) > 5, f"no help for {section.name}.{f.name}"
    assert "--trust_region.max_update_move (0.0)  scale an iteration's step back" in text


PLUGIN = '''
import dataclasses
from typing import ClassVar

from jaxrl_lm import algorithms
from jaxrl_lm.algorithms import reinforce
from jaxrl_lm.envs.bandit import Bandit
from jaxrl_lm.envs.core import register


@register
@dataclasses.dataclass(frozen=True)
class PluginBandit(Bandit):
    name: ClassVar[str] = "plugin_bandit"


algorithms.register(algorithms.Algorithm("plugin_reinforce", "rl", reinforce.advantages,
                                          summary="a user's algorithm"))
'''


def test_imports_register_a_users_env_and_algorithm(tmp_path):
    """A module named by `imports` (or --import) is imported before the config is
    checked: its env and algorithm can be named; from the working directory too.
    Run in a subprocess so the test process's registries stay as they are."""
    (tmp_path / "my_plugin.py").write_text(PLUGIN)
    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('boom')\n")
    cfg = tmp_path / "run.yaml"
    cfg.write_text("imports: [my_plugin]\nalgo: {name: plugin_reinforce}\n"
                   "env: {name: plugin_bandit}\n")
    code = ("import sys; from jaxrl_lm.config import load_config, check_runtime, ConfigError\n"
            "c = load_config(sys.argv[1], [], imports=sys.argv[2:])\n"
            "check_runtime(c, 1); print(c.imports, c.algo.name, c.env.name)\n")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    run = lambda *a: subprocess.run([sys.executable, "-c", code, *a], cwd=tmp_path,  # noqa: E731
                                    capture_output=True, text=True, env=env)
    out = run(str(cfg))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["('my_plugin',)", "plugin_reinforce", "plugin_bandit"]
    (tmp_path / "bare.yaml").write_text("algo: {name: plugin_reinforce}\nenv: {name: plugin_bandit}\n")
    out = run(str(tmp_path / "bare.yaml"), "my_plugin")  # the --import path
    assert out.returncode == 0 and "plugin_reinforce" in out.stdout, out.stderr
    out = run(str(tmp_path / "bare.yaml"))
    assert "algo.name='plugin_reinforce': must be one of" in out.stderr
    out = run(str(tmp_path / "bare.yaml"), "no_such_plugin")
    assert "imports: cannot import 'no_such_plugin': No module named 'no_such_plugin'" in out.stderr
    out = run(str(tmp_path / "bare.yaml"), "broken_plugin")
    assert "imports: importing 'broken_plugin' raised RuntimeError: boom" in out.stderr
    with pytest.raises(C.ConfigError, match="imports=3: expected a list of module names"):
        C.from_dict({"imports": 3})


def test_config_with_imports_round_trips_through_yaml():
    import yaml

    cfg = C.from_dict({"imports": ["json"]})
    assert cfg.imports == ("json",)
    assert C.from_dict(yaml.safe_load(C.dump_yaml(cfg))) == cfg
