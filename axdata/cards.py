"""Hub cards and the run report are rendered from the Jinja templates in `hub_cards/`, never built from fragments."""

from __future__ import annotations

from functools import cache
from typing import Any

import jinja2
import yaml


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("axdata.hub_cards", "."),
        undefined=jinja2.StrictUndefined,  # a missing value is a bug in the caller, not an empty string
        autoescape=jinja2.select_autoescape(["html"]),  # HTML templates (the report) escape what they insert
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["yaml"] = lambda value: yaml.safe_dump(value, sort_keys=False, allow_unicode=True).rstrip("\n")
    return env


def render_card(template: str, **context: Any) -> str:
    """Render `hub_cards/<template>` (e.g. "dataset_card.md", "report.html") with `context`."""
    return _environment().get_template(template).render(**context)
