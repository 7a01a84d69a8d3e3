"""The `jaxrl-lm` command line: train, eval, bench, plot, data, plan, paprika.

An expected failure (a bad config or flag, an HF folder that does not load)
prints one line, `error: <message naming the field, flag or file>`, on stderr
and exits with status 2, before anything is compiled or written; a traceback
means a bug. A malformed command line (an unknown flag, a missing required
one, a value argparse cannot convert) is one such line too, naming the command,
the flag and the value, with a pointer to the command's --help
(`cli_args.ArgumentParser`, the class of every parser here).

SIGTERM (SLURM preemption, `kill`) stops a command the way an exception
would: a run finishes its pending checkpoint, closes its metrics and releases
its run directory's lock, then `jaxrl-lm` exits with status 143 (128 + 15);
`--resume` continues the run (`cli_args.sigterm_unwinds`).
"""

from __future__ import annotations

import importlib
import signal
import sys

from jaxrl_lm.cli_args import (SIGINT_STATUS, ArgumentParser, Terminated, UsageError,
                               UsageExit, print_error, sigterm_unwinds)

BENCHES = {
    "envs": "jaxrl_lm.bench.envs",
    "sampler": "jaxrl_lm.bench.sampler",
    "logprobs-memory": "jaxrl_lm.bench.logprobs_memory",
    "rollout": "jaxrl_lm.bench.rollout",
    "grpo-step": "jaxrl_lm.bench.grpo_step",
    "data-grpo": "jaxrl_lm.bench.data_grpo",
    "lora-memory": "jaxrl_lm.bench.lora_memory",
    "paprika-generate": "jaxrl_lm.bench.paprika_generate",
}


def _bench(argv: list[str]) -> int:
    parser = ArgumentParser(prog="jaxrl-lm bench", add_help=False,
                            description="Run a benchmark; `jaxrl-lm bench NAME --help` "
                                        "lists its flags.")
    parser.add_argument("name", choices=sorted(BENCHES), help="which benchmark")
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    if argv[0] not in BENCHES:
        raise UsageError(f"bench {argv[0]!r}: unknown benchmark; choose one of "
                         f"{', '.join(sorted(BENCHES))}")
    args, rest = parser.parse_known_args(argv)
    module = importlib.import_module(BENCHES[args.name])
    try:
        return module.main(rest) or 0
    except ValueError as e:
        # the benchmarks check their flags first and name the flag: "--batch=0: ..."
        if str(e).startswith("--"):
            raise UsageError(f"bench {args.name} {e}") from None
        raise


def _config_flag(argv: list[str]) -> str | None:
    """The value of --config in a train command line, if given."""
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def _train(argv: list[str]) -> int:
    from jaxrl_lm.paprika import pipeline

    config = _config_flag(argv)
    if config and pipeline.is_paprika_config(config):  # a `generate` section: PAPRIKA's stages
        for flag in ("--import", "--allow-config-change"):
            if any(a == flag or a.startswith(flag + "=") for a in argv):
                raise UsageError(f"train: {flag} does not apply to a paprika config "
                                 f"(--config {config} has a generate section)")
        return pipeline.main(argv)
    from jaxrl_lm.train.trainer import main_train

    return main_train(argv)


def _plot(argv: list[str]) -> int:
    from jaxrl_lm.train.trainer import main_plot

    return main_plot(argv)


def _eval(argv: list[str]) -> int:
    from jaxrl_lm.evaluation.cli import main_eval

    return main_eval(argv)


def _data(argv: list[str]) -> int:
    from jaxrl_lm.data.generate import main as main_data

    return main_data(argv)


def _plan(argv: list[str]) -> int:
    from jaxrl_lm.plan import main as main_plan

    return main_plan(argv)


def _paprika(argv: list[str]) -> int:
    from jaxrl_lm.paprika.pipeline import main as main_paprika

    return main_paprika(argv)


COMMANDS = {"bench": _bench, "train": _train, "eval": _eval, "plot": _plot, "data": _data,
            "plan": _plan, "paprika": _paprika}

HELP = """\
usage: jaxrl-lm {bench,data,eval,paprika,plan,plot,train} ...

RL fine-tuning of language models in JAX. `jaxrl-lm COMMAND --help` lists a
command's flags.

commands:
  train   run a config: SFT, or warm-up + RL + before/after evaluation, on an env
          or on your own prompts (--data.path FILE)
            jaxrl-lm train --config launch/configs/tictactoe.yaml --out runs/ttt [--resume]
            jaxrl-lm train --config launch/configs/prompts.yaml --data.path my.jsonl --out runs/my
            (any config field: --section.field VALUE, e.g. --train.steps 50;
             `jaxrl-lm train --help` lists them all with their defaults)
  eval    play an env with a run's policy (greedy) and print win/draw/loss
            jaxrl-lm eval --checkpoint runs/ttt --env tictactoe --opponent minimax
          or score a prompt dataset: pass@1 greedy, pass@k sampled
            jaxrl-lm eval --checkpoint runs/math --data held-out --samples 8
  plot    redraw a run's curves from its metrics.jsonl
            jaxrl-lm plot runs/ttt
  plan    estimate each device's memory per stage for a config and mesh, from
          model.path's config.json (no weights read, nothing compiled)
            jaxrl-lm plan --config launch/configs/qwen2.5-0.5b.yaml --devices 8 --memory-gib 80
  data    write a built-in reasoning task (addition, countdown) as a JSONL dataset
            jaxrl-lm data addition --out data/addition.jsonl --rows 900
  paprika PAPRIKA: sample n trajectories per task of several task groups (min-p),
          pair each task's best with a worse one, SFT on the winners, then RPO
            jaxrl-lm paprika --config launch/configs/paprika.yaml --out runs/paprika [--resume]
  bench   speed and memory benchmarks against a baseline measured in the same run
            jaxrl-lm bench envs|sampler|logprobs-memory|rollout|grpo-step|data-grpo|lora-memory|paprika-generate [--json]
"""


error = print_error  # `error: <message>` as one line on stderr; returns the exit status 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(HELP, end="")
        return 0
    if argv[0] not in COMMANDS:
        return error(f"jaxrl-lm: unknown command {argv[0]!r}; choose one of "
                     f"{', '.join(sorted(COMMANDS))} (jaxrl-lm --help lists them)")
    try:
        with sigterm_unwinds():
            return COMMANDS[argv[0]](argv[1:])
    except UsageExit as e:  # argparse's usage error, already printed as one line
        return e.code
    except Terminated as e:
        name = "SIGTERM" if e.signum == signal.SIGTERM else "Ctrl-C"
        print(f"jaxrl-lm {argv[0]}: stopped by {name} (exit status {e.status}); what it "
              f"wrote is kept and closed (a run continues with --resume)", file=sys.stderr)
        return e.status
    except KeyboardInterrupt:  # a second Ctrl-C: at once, wherever it landed
        print(f"jaxrl-lm {argv[0]}: stopped by a second Ctrl-C (exit status {SIGINT_STATUS}); "
              f"a run continues from its last checkpoint with --resume", file=sys.stderr)
        return SIGINT_STATUS
    except ValueError as e:  # an expected failure the command did not report itself
        if not _expected(e):
            raise
        return error(str(e))


def _expected(e: ValueError) -> bool:
    # imported only now: `bench sampler` sets XLA flags before JAX starts
    from jaxrl_lm.config_sections import ConfigError
    from jaxrl_lm.models.hf_config import HFLoadError

    return isinstance(e, (ConfigError, HFLoadError, UsageError))


if __name__ == "__main__":
    sys.exit(main())
