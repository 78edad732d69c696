"""JSON answers: the prompt instruction, extraction from free text, and a small JSON-schema validator.

The validator covers the keywords our generation and judge schemas use (`jsonschema` is not a
dependency). A schema with any other keyword is refused up front by `check_schema`, so a keyword can
never be ignored silently.

>>> schema = {"type": "object", "properties": {"rating": {"type": "integer", "minimum": 0, "maximum": 2}},
...           "required": ["rating"]}
>>> value = extract_json('Sure! ```json\\n{"rating": 2}\\n``` Hope that helps.')
>>> value, validate(value, schema)
({'rating': 2}, [])
>>> validate({"rating": 5}, schema)
['$.rating: 5 is greater than the maximum 2']
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}
_CHECKED = {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "const",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
}
_ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment"}


class NoJSONFoundError(ValueError):
    """The text holds no parseable JSON value."""


def prompt_instruction(schema: Mapping[str, Any]) -> str:
    """What to append to the prompt when the server cannot constrain the output to `schema`."""
    return (
        "Answer with a single JSON object that validates against this JSON schema, and nothing else:\n"
        + json.dumps(schema, indent=2, ensure_ascii=False)
    )


def extract_json(text: str) -> Any:
    """The whole text as JSON, else the first JSON object in it (code fences and prose around it allowed)."""
    stripped = text.strip()
    try:
        return json.loads(stripped)
    except json.JSONDecodeError:
        pass
    decoder = json.JSONDecoder()
    start = stripped.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(stripped, start)
            return value
        except json.JSONDecodeError:
            start = stripped.find("{", start + 1)
    raise NoJSONFoundError("no JSON object found in the answer")


def check_schema(schema: Mapping[str, Any], path: str = "$") -> None:
    """Raise ValueError if `schema` uses a keyword this validator does not check."""
    unknown = set(schema) - _CHECKED - _ANNOTATIONS
    if unknown:
        raise ValueError(
            f"JSON schema at {path} uses {', '.join(sorted(unknown))}, which axdata's validator does not "
            f"check; rewrite it with {', '.join(sorted(_CHECKED))}."
        )
    types = schema.get("type", [])
    for name in [types] if isinstance(types, str) else types:
        if name not in _TYPES:
            raise ValueError(
                f"JSON schema at {path} has unknown type {name!r}; use one of {', '.join(_TYPES)}."
            )
    for key, sub in schema.get("properties", {}).items():
        check_schema(sub, f"{path}.{key}")
    if isinstance(schema.get("additionalProperties"), Mapping):
        check_schema(schema["additionalProperties"], f"{path}.*")
    if isinstance(schema.get("items"), Mapping):
        check_schema(schema["items"], f"{path}[]")


def _is_type(value: Any, name: str) -> bool:
    # bool is an int subclass in Python but not a JSON number.
    if name in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, _TYPES[name])


def validate(value: Any, schema: Mapping[str, Any], path: str = "$") -> list[str]:
    """The list of violations of `schema` by `value` (empty when it validates)."""
    if "type" in schema:
        names = [schema["type"]] if isinstance(schema["type"], str) else list(schema["type"])
        if not any(_is_type(value, name) for name in names):
            return [f"{path}: expected {' or '.join(names)}, got {type(value).__name__} {value!r}"]
    errors: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']!r}")
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: {value!r} is not {schema['const']!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: {value!r} is less than the minimum {schema['minimum']!r}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: {value!r} is greater than the maximum {schema['maximum']!r}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            errors.append(f"{path}: {value!r} is not greater than {schema['exclusiveMinimum']!r}")
        if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
            errors.append(f"{path}: {value!r} is not less than {schema['exclusiveMaximum']!r}")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{path}: string shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{path}: string longer than {schema['maxLength']}")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(f"{path}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{path}: more than {schema['maxItems']} items")
        if isinstance(schema.get("items"), Mapping):
            for index, item in enumerate(value):
                errors.extend(validate(item, schema["items"], f"{path}[{index}]"))
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{path}: missing required property {key!r}")
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in properties:
                errors.extend(validate(item, properties[key], f"{path}.{key}"))
            elif extra is False:
                errors.append(f"{path}: unexpected property {key!r}")
            elif isinstance(extra, Mapping):
                errors.extend(validate(item, extra, f"{path}.{key}"))
    return errors
