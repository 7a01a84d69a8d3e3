"""The `jaxrl-lm` command line: train, eval, bench, plot."""

from __future__ import annotations

import argparse
import importlib
import sys

BENCHES = {
    "envs": "jaxrl_lm.bench.envs",
    "sampler": "jaxrl_lm.bench.sampler",
    "logprobs-memory": "jaxrl_lm.bench.logprobs_memory",
    "rollout": "jaxrl_lm.bench.rollout",
    "grpo-step": "jaxrl_lm.bench.grpo_step",
}


def _bench(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="jaxrl-lm bench", add_help=False,
                                     description="Run a benchmark; `jaxrl-lm bench NAME --help` "
                                                 "lists its flags.")
    parser.add_argument("name", choices=sorted(BENCHES), help="which benchmark")
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    args, rest = parser.parse_known_args(argv)
    module = importlib.import_module(BENCHES[args.name])
    return module.main(rest) or 0


def _train(argv: list[str]) -> int:
    from jaxrl_lm.train.trainer import main_train

    return main_train(argv)


def _plot(argv: list[str]) -> int:
    from jaxrl_lm.train.trainer import main_plot

    return main_plot(argv)


def _eval(argv: list[str]) -> int:
    from jaxrl_lm.evaluation.cli import main_eval

    return main_eval(argv)


COMMANDS = {"bench": _bench, "train": _train, "eval": _eval, "plot": _plot}

HELP = """\
usage: jaxrl-lm {bench,eval,plot,train} ...

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
  plot    redraw a run's curves from its metrics.jsonl
            jaxrl-lm plot runs/ttt
  bench   speed and memory benchmarks against a baseline measured in the same run
            jaxrl-lm bench envs|sampler|logprobs-memory|rollout|grpo-step [--json]
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(HELP, end="")
        return 0
    if argv[0] not in COMMANDS:
        print(HELP, end="", file=sys.stderr)
        print(f"jaxrl-lm: unknown command {argv[0]!r}; choose one of "
              f"{', '.join(sorted(COMMANDS))}", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
