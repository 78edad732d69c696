"""YAML we did not write (the card of a pulled dataset, a Hub README): no aliases, bounded size.

A YAML alias (`*name`) repeats an anchored node without repeating its text, so a few hundred bytes of nested
aliases expand to gigabytes ("billion laughs"). Cards never need aliases; refusing them, and capping the text
read, bounds the memory a hostile card can take.

>>> load_untrusted_yaml("a: 1\\nb: [x, y]\\n", "card.md")
{'a': 1, 'b': ['x', 'y']}
>>> load_untrusted_yaml("a: &x [1]\\nb: *x\\n", "card.md")
Traceback (most recent call last):
...
axdata.safe_yaml.UntrustedYAMLError: card.md: YAML aliases (*name) are not accepted in cards (line 2); write the values out.

Every YAML a user writes (a run config, a `--set` value) is read by `load_yaml`: the safe loader, with nesting capped
at `MAX_DEPTH`, because PyYAML composes nested nodes recursively and 100,000 brackets would otherwise end in
Python's `RecursionError` instead of a message.

>>> load_yaml("[" * 100 + "]" * 100, "--set x")
Traceback (most recent call last):
...
axdata.safe_yaml.YAMLInputError: --set x: YAML nested deeper than 32 levels (line 1, column 33); settings need a few.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from axdata.errors import InputError

MAX_YAML_BYTES = 1 << 20
# Configs and cards nest a handful of levels; Python's recursion limit is reached near 300.
MAX_DEPTH = 32
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)", re.DOTALL)


class YAMLInputError(InputError):
    """The YAML does not parse or nests too deep; the message names the source."""


class UntrustedYAMLError(YAMLInputError):
    """The YAML is too large, uses aliases, or does not parse; the message names the source."""


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader, refusing nesting deeper than `MAX_DEPTH` (and, for untrusted text, aliases)."""

    allow_aliases = True
    error_class: type[YAMLInputError] = YAMLInputError
    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:  # type: ignore[override]
        mark = self.peek_event().start_mark
        if not self.allow_aliases and self.check_event(yaml.AliasEvent):
            raise self.error_class(f"{self.name}: YAML aliases (*name) are not accepted in cards (line "
                                   f"{mark.line + 1}); write the values out.")
        if self.depth >= MAX_DEPTH:
            raise self.error_class(f"{self.name}: YAML nested deeper than {MAX_DEPTH} levels (line {mark.line + 1}, "
                                   f"column {mark.column + 1}); settings need a few.")
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


class _NoAliasLoader(_BoundedLoader):
    allow_aliases = False
    error_class = UntrustedYAMLError


def load_yaml(text: str, source: str, *, loader_class: type[_BoundedLoader] = _BoundedLoader) -> Any:
    """Parse `text` (read from `source`, named in errors) with the safe loader, nesting at most `MAX_DEPTH` deep."""
    try:
        loader = loader_class(text)  # reading starts here: a control character is refused already
    except yaml.YAMLError as err:
        raise loader_class.error_class(f"{source}: not valid YAML ({err}).") from None
    loader.name = source
    try:
        return loader.get_single_data()
    except yaml.YAMLError as err:
        raise loader_class.error_class(f"{source}: not valid YAML ({err}).") from None
    finally:
        loader.dispose()


def load_untrusted_yaml(text: str, source: str, max_bytes: int = MAX_YAML_BYTES) -> Any:
    """Parse `text` with the safe loader, refusing aliases, deep nesting and texts over `max_bytes`."""
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        raise UntrustedYAMLError(f"{source}: {size} bytes of YAML is more than the {max_bytes} accepted.")
    return load_yaml(text, source, loader_class=_NoAliasLoader)


def card_metadata(readme: str, source: str) -> dict[str, Any]:
    """The YAML front matter of a card (README.md) as a mapping; {} when it has none."""
    match = _FRONT_MATTER.match(readme)
    if match is None:
        return {}
    data = load_untrusted_yaml(match.group(1), source)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UntrustedYAMLError(f"{source}: the card's YAML header is a {type(data).__name__}, not a mapping.")
    return data
