"""What a run plays: the env `env.name` names, or a prompt dataset (`data.path`).

    env, text = make_task(cfg, tokenizer)                  # training
    env, text = make_task(cfg, tokenizer, held_out=True)   # evaluation

For an env, `text` is its `TextInterface`; for a dataset both are one
`PromptTask` (jaxrl_lm.data.task): the prompts tokenized once through the
chat template, graded by the verifier `data.marker` / `data.match` name. The
held-out rows are `data.eval_path`, else a seeded `data.eval_fraction` of
`data.path`. Any problem with the data is a ValueError naming it, raised here,
before anything compiles.
"""

from __future__ import annotations

import functools
from typing import Any

from jaxrl_lm.config import Config
from jaxrl_lm.models.tokenizer import pad_id


def is_dataset(cfg: Config) -> bool:
    return cfg.data.path is not None


def max_turns(cfg: Config) -> int:
    """Turns per episode: env.max_turns, or 1 for a prompt dataset (single-turn)."""
    return 1 if is_dataset(cfg) else cfg.env.max_turns


def grader(cfg: Config):
    """(name, host function or None): what decides a held-out completion is
    right in evaluation (data.grader); None = the task's jitted verifier."""
    from jaxrl_lm import reward_functions

    name = cfg.data.grader
    if name == "verifier":
        return name, None
    try:
        return name, reward_functions.resolve(name)
    except ValueError as e:
        raise ValueError(f"data.grader: {e}") from None


def make_task(cfg: Config, tokenizer: Any, *, held_out: bool = False, options: dict | None = None):
    """(env, text) for training or, with held_out, for evaluation; `options`
    replace env.options (an eval variant)."""
    if is_dataset(cfg):
        task = _prompt_tasks(cfg.data, cfg.env.max_prompt_len, tokenizer)[1 if held_out else 0]
        if task is None:
            raise ValueError("data: no held-out rows (data.eval_fraction is 0 and no "
                             "data.eval_path)")
        return task, task
    from jaxrl_lm import envs
    from jaxrl_lm.envs.text import TextInterface

    env = envs.make(cfg.env.name, **(cfg.env.options if options is None else options))
    return env, TextInterface(env, tokenizer, max_prompt_len=cfg.env.max_prompt_len,
                              pad_id=pad_id(tokenizer))


@functools.lru_cache(maxsize=4)
def _prompt_tasks(data, max_prompt_len: int, tokenizer: Any):
    """(train task, held-out task or None), built once per (data section, limit, tokenizer)."""
    from jaxrl_lm.data import build_prompts, train_eval_rows
    from jaxrl_lm.data.task import PromptTask
    from jaxrl_lm.verifiers import Verifier, reference_table

    train_rows, eval_rows = train_eval_rows(data)
    verifier = Verifier(tokenizer, marker=data.marker, mode=data.match, width=data.answer_width)

    def task(part: list[dict], name: str):
        if not part:
            return None
        try:
            # the answer column (checked present) and every other column all rows share,
            # passed on to the host reward functions and the warm-up's demonstrations
            shared = set.intersection(*(set(r) for r in part))
            others = sorted(shared - {data.prompt_column, data.answer_column})
            prompts = build_prompts(part, tokenizer, max_prompt_len=max_prompt_len,
                                    prompt_column=data.prompt_column,
                                    columns=(data.answer_column, *others),
                                    system_prompt=data.system_prompt, chat=data.chat,
                                    on_overlong=data.on_overlong)
            answers = reference_answers(verifier, tokenizer,
                                        [str(a) for a in prompts.columns[data.answer_column]])
            refs, ref_len = reference_table(answers, mode=data.match, width=data.answer_width)
        except ValueError as e:
            msg = f"data ({name} rows): {e}".replace("max_prompt_len=", "env.max_prompt_len=")
            raise ValueError(msg.replace("(on_overlong:", "(data.on_overlong:")) from None
        return PromptTask(prompts, refs, ref_len, verifier, pad_id(tokenizer))

    return task(train_rows, "train"), task(eval_rows, "held-out")


MARKER_TEXT = {"####": "####", "boxed": "\\boxed{", "answer_tag": "<answer>"}


def reference_answers(verifier: Any, tokenizer: Any, answers: list[str]) -> list[str]:
    """Each row's reference answer as the verifier reads completions: an answer
    column that holds the marker (GSM8K's "... #### 72") gives what follows it,
    extracted by the same jitted code; a bare answer ("72") is kept."""
    import jax
    import numpy as np

    from jaxrl_lm.models.tokenizer import encode

    marked = [i for i, a in enumerate(answers) if MARKER_TEXT[verifier.marker] in a]
    if not marked:
        return answers
    ids = [encode(tokenizer, answers[i]) for i in marked]
    table = np.zeros((len(ids), max(map(len, ids))), np.int32)
    for r, t in enumerate(ids):
        table[r, : len(t)] = t
    buf, n, found = jax.device_get(jax.jit(jax.vmap(verifier.extract))(
        table, np.asarray([len(t) for t in ids], np.int32)))
    out = list(answers)
    for r, i in enumerate(marked):
        if not found[r]:
            raise ValueError(f"reference answer {i} ({answers[i][-60:]!r}) holds the marker "
                             f"{verifier.marker!r} but no answer after it that fits "
                             f"data.answer_width")
        out[i] = bytes(buf[r, : n[r]]).decode("utf-8", errors="replace")
    return out
