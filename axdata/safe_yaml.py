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
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from axdata.errors import InputError

MAX_YAML_BYTES = 1 << 20
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)", re.DOTALL)


class UntrustedYAMLError(InputError):
    """The YAML is too large, uses aliases, or does not parse; the message names the source."""


class _NoAliasLoader(yaml.SafeLoader):
    def compose_node(self, parent: Any, index: Any) -> Any:  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise UntrustedYAMLError(f"{self.name}: YAML aliases (*name) are not accepted in cards (line "
                                     f"{mark.line + 1}); write the values out.")
        return super().compose_node(parent, index)


def load_untrusted_yaml(text: str, source: str, max_bytes: int = MAX_YAML_BYTES) -> Any:
    """Parse `text` with the safe loader, refusing aliases and texts over `max_bytes`."""
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        raise UntrustedYAMLError(f"{source}: {size} bytes of YAML is more than the {max_bytes} accepted.")
    loader = _NoAliasLoader(text)
    loader.name = source
    try:
        return loader.get_single_data()
    except yaml.YAMLError as err:
        raise UntrustedYAMLError(f"{source}: not valid YAML ({err}).") from None
    finally:
        loader.dispose()


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
