"""Chat templates: a prompt row becomes the text the model is trained to
continue.

A row's prompt is either plain text (a `prompt` column) or a conversation
(a `messages` column: [{"role": "system"|"user"|"assistant", "content": ...}]).
When the tokenizer has a chat template (tokenizer_config.json's
`chat_template`), transformers' `apply_chat_template` renders the
conversation with the generation prompt; a tokenizer without one (the
embedded character tokenizer) gets `PLAIN_TEMPLATE`:

    <system text>
    User: <user text>
    Assistant:
"""

from __future__ import annotations

from typing import Any

PLAIN_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n"
    "{% elif m['role'] == 'user' %}User: {{ m['content'] }}\n"
    "{% else %}Assistant: {{ m['content'] }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}")
ROLES = ("system", "user", "assistant")


def conversation(prompt: Any, *, system_prompt: str | None = None) -> list[dict[str, str]]:
    """The messages of a row's prompt: a string becomes one user turn; a list of
    {role, content} dicts is checked and kept. `system_prompt` goes first
    unless the conversation has a system turn of its own."""
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, (list, tuple)) and prompt:
        messages = []
        for i, m in enumerate(prompt):
            if (not isinstance(m, dict) or m.get("role") not in ROLES
                    or not isinstance(m.get("content"), str)):
                raise ValueError(f"message {i}: expected {{'role': one of {', '.join(ROLES)}, "
                                 f"'content': str}}, got {m!r}")
            messages.append({"role": m["role"], "content": m["content"]})
    else:
        raise ValueError(f"a prompt must be a string or a non-empty list of messages, "
                         f"got {type(prompt).__name__}")
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_chat(tokenizer: Any, messages: list[dict[str, str]], *,
                add_generation_prompt: bool = True) -> str:
    """The conversation as text, through the tokenizer's own template or
    PLAIN_TEMPLATE, ending with the generation prompt."""
    template = None if has_chat_template(tokenizer) else PLAIN_TEMPLATE
    if hasattr(tokenizer, "apply_chat_template"):
        return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    import jinja2  # a bare `tokenizers.Tokenizer`: render the plain template ourselves

    return jinja2.Template(PLAIN_TEMPLATE).render(messages=messages,
                                                  add_generation_prompt=add_generation_prompt)
