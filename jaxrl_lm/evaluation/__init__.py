"""jaxrl_lm.evaluation: play an env with a policy and report what happened.

    evaluate(model, tokenizer, "tictactoe", {"opponent": "minimax"}, episodes=64)
    evaluate_config(model, tokenizer, cfg)   # every eval.variants entry of a run
    episode_stats(traj)                      # rollout metrics (training logs use them too)
    bandit_report(env, traj, episodes=...)   # RLFT's decision metrics, UCB and random beside
    answer_stats(traj, first_token=...)      # single-turn answers: accuracy, length, style

`jaxrl-lm eval` is `jaxrl_lm.evaluation.cli`.
"""

from jaxrl_lm.evaluation.answers import answer_stats, answers, make_answer_eval
from jaxrl_lm.evaluation.bandit import bandit_report, bandit_table, decision_metrics
from jaxrl_lm.evaluation.play import evaluate, evaluate_config, format_table
from jaxrl_lm.evaluation.stats import episode_stats

__all__ = ["answer_stats", "answers", "bandit_report", "bandit_table", "decision_metrics",
           "episode_stats", "evaluate", "evaluate_config", "format_table", "make_answer_eval"]
