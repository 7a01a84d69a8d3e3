"""Evaluations during RL (`eval.every`) and the best policy kept (`eval.keep: best`).

Every `eval.every` iterations, and after the last, the policy plays each
evaluation target (every `eval.variants` entry, else the training env) as the
final evaluation does: `eval.episodes` episodes, greedy unless `eval.greedy`
is off. Its episodes are its own: the env's and the opponent's randomness come
from a key the final evaluation never uses, so the final evaluation is not the
one the best policy was picked on. It is the same key at every evaluation, so
successive policies meet the same draws and their scores compare on equal
terms. Each program compiles once (`evaluation.play.make_task_eval`); given
the run's `ConfigEval`, it plays the programs the final evaluation plays.

The results are logged with that iteration's metrics as
`eval/<target>/<metric>`, plus `eval/score`: the mean `return` over the
targets. With `eval.keep: best`, the params of the best score so far (the
earliest, on a tie) are saved to run_dir/best/ (an Orbax checkpoint of the
params alone, `checkpoint.Checkpointer`, with the iteration, the score and the
results in its JSON), and the run ends with them: they are exported to hf/ and
evaluated in the "after" rows. A resumed run reads the record back; an
evaluation replayed after a crash scores what it scored before (the run is
replayed exactly), so it does not save again.

The evaluations change nothing in training: they read the params and draw
from their own key, so a run trains the same with or without them.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

import jax
from flax import nnx

from jaxrl_lm.config import Config, to_dict
from jaxrl_lm.evaluation.play import ConfigEval
from jaxrl_lm.train.checkpoint import Checkpointer

# folded into the final evaluation's key: the evaluations during training draw other episodes
_STREAM = 1


class Validation:
    """`eval.every`'s evaluations of one RL run writing to `run_dir`."""

    def __init__(self, cfg: Config, tokenizer: Any, graphdef: nnx.GraphDef, run_dir: str,
                 evals: ConfigEval | None = None):
        self.cfg, self.graphdef, self.every = cfg, graphdef, cfg.eval.every
        evals = evals or ConfigEval(cfg, tokenizer)
        self.fns = evals.programs
        self.seed = evals.seed  # the final evaluation's seed; its own key stream below
        self.key = jax.random.fold_in(jax.random.key(self.seed), _STREAM)
        self.keep_best = cfg.eval.keep == "best"
        self.best = Checkpointer(os.path.join(run_dir, "best"), keep=1) \
            if self.keep_best else None
        self.best_step, self.best_score = None, -math.inf
        self._eval_config = to_dict(cfg)["eval"]

    def due(self, done: int) -> bool:
        return done % self.every == 0 or done == self.cfg.train.steps

    def begin(self, resumed: bool) -> None:
        """Read back the best policy's record when resuming (one written under
        other eval settings scored other episodes: it is dropped, with a warning)."""
        if self.best is None or not resumed:
            return
        for step in self.best.all_steps()[::-1]:
            try:
                meta = self.best.read_meta(step)
            except Exception:  # noqa: BLE001 - unreadable: the next save replaces it
                continue
            if (meta.get("config") or {}).get("eval") != self._eval_config:
                warnings.warn(f"{self.best.directory}: the best policy so far was picked under "
                              f"other eval settings; picking again from this run's "
                              f"evaluations", RuntimeWarning, stacklevel=2)
                return
            self.best_step, self.best_score = step, float(meta["data_state"]["score"])
            return

    def __call__(self, done: int, params: Any, rest: Any) -> dict[str, float]:
        """Evaluate the params after iteration `done`; keep them if best. Returns
        the metrics to log."""
        graphdef, state = nnx.split(nnx.merge(self.graphdef, params, rest))
        results = {label: fn(graphdef, state, self.key, self.seed)
                   for label, fn in self.fns.items()}
        score = sum(r["return"] for r in results.values()) / len(results)
        row = {f"eval/{label}/{k}": v for label, r in results.items() for k, v in r.items()
               if k != "episodes"}
        row["eval/score"] = score
        if self.keep_best and score > self.best_score:
            self._prune()
            if done in self.best.all_steps():  # a record that did not match (begin)
                self.best.manager.delete(done)
            self.best.save(done, params, data_state={"score": score, "results": results},
                           config={"eval": self._eval_config})
            self.best_step, self.best_score = done, score
        return row

    def _prune(self) -> None:
        """Delete every saved policy but the best so far, once its save is done
        (one is deleted only when a newer one can take its place)."""
        self.best.wait()
        for step in self.best.all_steps():
            if step != self.best_step:
                self.best.manager.delete(step)

    def kept(self, like: Any) -> dict | None:
        """{"params", "iteration", "score"} of the best evaluation (restored into
        the structure of `like`), or None when there is none or it does not read
        back intact (then a warning: the run ends with its last policy)."""
        if self.best is None or self.best_step is None:
            return None
        got = self.best.restore(like, self.best_step)
        if got is None:
            warnings.warn(f"{self.best.directory}: the best policy (iteration {self.best_step}) "
                          f"does not read back intact; the run ends with its last policy",
                          RuntimeWarning, stacklevel=2)
            return None
        return {"params": got[0], "iteration": self.best_step, "score": self.best_score}

    def close(self) -> None:
        if self.best is not None:
            if self.best_step is not None:
                self._prune()
            self.best.close()
