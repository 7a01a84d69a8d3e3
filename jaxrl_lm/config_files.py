"""YAML files and `--section.field VALUE` overrides, before they become a Config.

    parse_yaml(text, where)        yaml.safe_load, refusing a repeated key
    read_yaml(path)                the same for a file: a clear error when it cannot
                                   be read, is not UTF-8 or is not YAML
    override_items(args, depth)    [(key, parts, value)] of `--a.b value` arguments
    parse_overrides(args, depth)   the same as a nested dict

`jaxrl_lm.config.load_config` joins a preset and its overrides; every error
here is a `ConfigError` naming the key or the file.
"""

from __future__ import annotations

import math
from typing import Any

import yaml

from jaxrl_lm.config_sections import ConfigError


def parse_overrides(args: list[str], depth: int = 2) -> dict:
    """`["--algo.beta", "0.04", "--train.steps=5"]` -> {"algo": {"beta": 0.04}, ...}.

    Keys have 2 parts (`section.field`), or 2 to `depth` (the paprika
    pipeline's `sft.train.steps`). Values are parsed as YAML scalars (so `none`/`null`, `true`, `1e-3` work) and
    then coerced to the field's declared type when the config is built.
    """
    out: dict = {}
    for key, parts, value in override_items(args, depth):
        _set(out, key, parts, value)
    return out


def override_items(args: list[str], depth: int = 2) -> list[tuple[str, list[str], Any]]:
    """[(key, its dotted parts, parsed value)] of `--a.b value` / `--a.b=value` args."""
    out = []
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"override {arg!r}: expected --section.field VALUE")
        key, eq, raw = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args):
                raise ConfigError(f"override --{key}: missing a value")
            raw, i = args[i + 1], i + 1
        i += 1
        parts = key.split(".")
        if not 2 <= len(parts) <= depth or not all(parts):
            form = "section.field" + {2: "", 3: "[.field]"}.get(depth, "[.key ...]")
            raise ConfigError(f"override --{key}: expected the form --{form}")
        try:
            value = parse_yaml(raw, f"override --{key}")
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and _looks_numeric(value):
            value = float(value)  # YAML 1.1 reads "1e-3" as a string
        elif isinstance(value, str) and value.lower() == "none":
            value = None
        out.append((key, parts, value))
    return out


def _set(node: dict, key: str, parts: list[str], value: Any) -> None:
    """node[parts[0]]...[parts[-1]] = value, making the mappings on the way."""
    for j, part in enumerate(parts[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override --{key}: {'.'.join(parts[:j + 1])} is not a "
                              f"section")
    node[parts[-1]] = value


def _looks_numeric(s: str) -> bool:
    try:
        return math.isfinite(float(s))
    except ValueError:
        return False


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "options":
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _refuse_duplicates(node: yaml.Node, path: tuple[str, ...], where: str,
                       visited: set[int] | None = None) -> None:
    """Walk a composed YAML node tree; a mapping that holds one key twice is an
    error naming the key's path and both lines (PyYAML keeps the last silently)."""
    visited = set() if visited is None else visited
    if id(node) in visited:  # an alias of a node already walked (maybe recursive)
        return
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is not None and key != "<<":
                name = ".".join((*path, key))
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise ConfigError(f"{where}: duplicate key {name} (line {line}; first "
                                      f"given on line {seen[key]}); give each key once")
                seen[key] = line
            _refuse_duplicates(value_node, (*path, str(key)), where, visited)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicates(item, (*path, str(i)), where, visited)


def parse_yaml(text: str, where: str) -> Any:
    """yaml.safe_load(text), but a mapping with a duplicate key raises ConfigError
    naming it (`where` says whose text it is). A YAMLError passes through."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_duplicates(node, (), where)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml(path: str, what: str = "config") -> Any:
    """The data of a YAML file: ConfigError (naming the file and the problem) for
    a file that cannot be read, is not UTF-8, is not YAML, or repeats a key."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path!r}: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError(f"{what} {path!r} is not UTF-8 text (byte 0x{raw[e.start]:02x} on "
                          f"line {line}); save it as UTF-8") from None
    try:
        return parse_yaml(text, f"{what} {path!r}")
    except yaml.YAMLError as e:
        msg = " ".join(str(e).split())  # one line: PyYAML's message spans several
        raise ConfigError(f"{what} {path!r} is not valid YAML: {msg}") from None


