"""The one settings parser: every config dataclass (run sections, method settings, TrainingArguments) is built here.

Values come from YAML files, `--set key=value` on any command, or Python. One grammar for all of them: a text
value is read as YAML (`false` is a boolean, `[2, 4]` a list, `1e-3` a number), so a setting means the same
wherever it is written. Unknown keys, values of the wrong type and out-of-range numbers are refused with a
message that names where the value was set and lists the valid keys. A setting that was renamed (the class's
`RENAMED_SETTINGS`, old name → new name) is still accepted under its old name for one release, with one logged
line naming the new one.

>>> from dataclasses import dataclass
>>> @dataclass
... class Demo:
...     epochs: int = 3
...     factors: list[float] | None = None
>>> build_settings(Demo, {"epochs": "5", "factors": "[2, 4e-1]"})
Demo(epochs=5, factors=[2.0, 0.4])
>>> build_settings(Demo, {"epoch": 1}, where="methods.settings.demo")
Traceback (most recent call last):
...
axdata.settings.SettingsError: methods.settings.demo has no field(s) ['epoch']; valid: epochs, factors.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from axdata.errors import InputError
from axdata.safe_yaml import YAMLInputError, load_yaml
from axdata.validation import check_numbers, number_problem

T = TypeVar("T")

logger = logging.getLogger(__name__)
_RENAME_NOTED: set[tuple[str, str]] = set()  # (class, old name) already logged in this process


class SettingsError(InputError):
    """A setting is unknown, of the wrong type, or out of range; the message names it and the fix."""


# A number as YAML 1.2, JSON and Python write it: PyYAML reads YAML 1.1, where `1e30` (no dot) is the text '1e30' and
# `nan` / `inf` are texts too. Read as numbers where a number is expected, the range checks then say what is wrong.
_NUMBER = re.compile(r"[-+]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|\.?(?:inf|infinity|nan))", re.IGNORECASE)


def parse_value(text: str) -> Any:
    """A `--set` value: YAML (`false`, `0.5`, `[2, 4]`, `{a: 1}`); an empty value is None."""
    if not text.strip():
        return None
    try:
        return load_yaml(text, _short_repr(text))
    except YAMLInputError as err:
        raise SettingsError(f"{err} A text value with YAML's characters can be quoted, e.g. name='my run'.") from None


def parse_assignments(items: Sequence[str], example: str = "learning_rate=0.01") -> dict[str, Any]:
    """`["key=value", ...]` (the `--set` grammar) → {key: YAML value}; dashes in keys become underscores."""
    values: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"--set {item!r} is not key=value; write e.g. --set {example}.")
        try:
            values[key.strip().replace("-", "_")] = parse_value(value)
        except SettingsError as err:
            raise SettingsError(f"--set {key.strip()}: {err}") from None
    return values


def build_settings(config_class: type[T], values: Mapping[str, Any] | None = None, *, where: str | None = None,
                   **fixed: Any) -> T:
    """An instance of dataclass `config_class` from `values` (texts read as YAML), then `fixed` on top.

    Only the values given are range-checked (`axdata.validation`): TrainingArguments keeps sentinels such as
    `max_steps=-1` among its defaults.
    """
    where = where or config_class.__name__
    typed = check_settings(config_class, values or {}, where)
    try:
        instance = config_class(**typed, **fixed)
    except (ValueError, TypeError) as err:
        message = str(err)
        raise SettingsError(message if message.startswith(where) else f"{where}: {message}") from None
    return instance


def build_from_flags(config_class: type[T], command: str, flags: Mapping[str, tuple[str, Any]], **fixed: Any) -> T:
    """`config_class` from a command's flags (`{"--batch-size": ("steering_batch_size", 32)}`: flag → (field,
    value)), with the checks of the config file and `--set`; a refusal also names the flag."""
    try:
        return build_settings(config_class, dict(flags.values()), where=command, **fixed)
    except SettingsError as err:
        message = str(err)
        named = [flag for flag, (key, _) in flags.items() if re.search(rf"\b{key}\b", message)]
        raise SettingsError(f"{message.rstrip('.')} (flag {', '.join(named)})." if named else message) from None


def check_flags(command: str, flags: Mapping[str, tuple[str, Any]]) -> None:
    """The range checks of settings (`axdata.validation`) on flags that no config class holds: flag → (the
    setting name whose rule applies, value)."""
    for flag, (key, value) in flags.items():
        problem = number_problem(key, value)
        if problem is not None:
            raise SettingsError(f"{command} {flag} {_short_repr(value)}: {problem}.")


def renamed_settings(config_class: type, values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """`values` with each old setting name of `config_class` (its `RENAMED_SETTINGS`: old → new) replaced by the new
    one, saying so once per process; both names at once is an error."""
    renamed = getattr(config_class, "RENAMED_SETTINGS", {})
    values = dict(values)
    for old, new in renamed.items():
        if old not in values:
            continue
        if new in values:
            raise SettingsError(f"{where} sets both {old!r} and {new!r}; {old!r} is the old name of {new!r}: "
                                f"keep {new!r}.")
        values[new] = values.pop(old)
        if (config_class.__name__, old) not in _RENAME_NOTED:
            _RENAME_NOTED.add((config_class.__name__, old))
            logger.warning("%s: %r is now %r (the old name goes in the next release)", where, old, new)
    return values


def check_settings(config_class: type, values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """`values` typed for `config_class`'s fields (texts read as YAML) and range-checked, without building it."""
    values = renamed_settings(config_class, values, where)
    fields = {f.name for f in dataclasses.fields(config_class) if f.init}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise SettingsError(f"{where} has no field(s) {unknown}; valid: {', '.join(sorted(fields))}.")
    hints = typing.get_type_hints(config_class)
    typed = {key: _coerce(value, hints.get(key, Any), f"{where}.{key}") for key, value in values.items()}
    try:
        check_numbers(typed, where)
    except ValueError as err:
        raise SettingsError(str(err)) from None
    return typed


def type_name(annotation: Any) -> str:
    return " or ".join(getattr(member, "__name__", str(member)) for member in _members(annotation))


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """`value` checked against the field's type: texts for non-text fields are YAML, a numeric text where a number
    is expected is that number (`1e30`), ints widen to floats; a list's items are checked against its item type."""
    if isinstance(value, str) and not _allows(annotation, str) and annotation is not Any:
        try:
            value = parse_value(value)
        except SettingsError as err:
            raise SettingsError(f"{where}: {err}") from None
        if isinstance(value, str) and (_allows(annotation, float) or _allows(annotation, int)) \
                and _NUMBER.fullmatch(value.strip()):
            value = float(re.sub(r"\.(?=[a-zA-Z])", "", value.strip()))  # YAML's .inf / .nan → Python's inf / nan
    if not _matches(value, annotation):
        raise SettingsError(f"{where}: expected {type_name(annotation)}, got {_short_repr(value)}.")
    if isinstance(value, int) and not isinstance(value, bool) and _allows(annotation, float) \
            and not _allows(annotation, int):
        return float(value)  # YAML writes 1 for 1.0; a float field holds a float
    item_type = _item_type(annotation) if isinstance(value, (list, tuple)) else None
    if item_type is not None:
        value = type(value)(_coerce(item, item_type, f"{where}[{index}]") for index, item in enumerate(value))
    return value


def _item_type(annotation: Any) -> Any:
    """The item type of a `list[X]` / `tuple[X, ...]` member of `annotation`; None when it names none."""
    for member in _members(annotation):
        if typing.get_origin(member) in (list, tuple):
            args = [arg for arg in typing.get_args(member) if arg is not Ellipsis]
            return args[0] if len(set(args)) == 1 else None
    return None


def _short_repr(value: Any, limit: int = 80) -> str:
    """`repr(value)` cut to `limit` characters: a message stays one line whatever the user wrote."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}…"


def _members(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _allows(annotation: Any, kind: type) -> bool:
    return any(member is kind for member in _members(annotation))


def _matches(value: Any, annotation: Any) -> bool:
    for member in _members(annotation):
        origin = typing.get_origin(member) or member
        if member is Any or (member is type(None) and value is None):
            return True
        if origin is typing.Literal and value in typing.get_args(member):
            return True
        if isinstance(value, bool):
            if origin is bool:
                return True
            continue
        if (origin is int and isinstance(value, int)) or (origin is float and isinstance(value, (int, float))):
            return True
        if (origin is str and isinstance(value, str)) or (origin is dict and isinstance(value, dict)):
            return True
        if origin in (list, tuple) and isinstance(value, (list, tuple)):
            return True
    return False
