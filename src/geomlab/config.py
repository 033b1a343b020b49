"""Building validated experiment configs from presets and ``key=value`` overrides.

This module knows nothing of experiments (``geomlab.experiments.base`` imports it, never the
other way round): :func:`build_config` takes anything with a ``name``, ``presets`` and a
``config_cls``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError


class ConfigError(ValueError):
    """A config value or key is invalid; the message names the field and what is allowed."""


class ConfigSource(Protocol):
    """What :func:`build_config` needs of an experiment."""

    name: str
    presets: Mapping[str, Mapping[str, Any]]
    config_cls: type[BaseModel]


def parse_value(text: str) -> Any:
    """Interpret an override value: JSON first (numbers, lists, true/false/null), then
    comma-separated lists of JSON values, else the raw string."""
    text = text.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    if "," in text:
        return [parse_value(part) for part in text.split(",") if part.strip()]
    return text


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["a=1", "b=[1,2]"]`` -> ``{"a": 1, "b": [1, 2]}``; malformed pairs are errors."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {pair!r} is not of the form key=value")
        overrides[key.replace("-", "_")] = parse_value(value)
    return overrides


def check_keys(
    config_cls: type[BaseModel], keys: Iterable[str], *, owner: str, what: str = "config key"
) -> None:
    """The one unknown-key check: raise :class:`ConfigError` naming every key that is not a
    field of ``config_cls`` (``what``: "config key", "grid key", ...) and the known ones.

    Configs also forbid extra keys themselves (pydantic ``extra="forbid"``), so a config built
    in Python refuses them too; this check runs first and lists what is allowed."""
    fields = config_cls.model_fields
    unknown = sorted({key for key in keys if key not in fields})
    if unknown:
        raise ConfigError(
            f"unknown {what}(s) {', '.join(repr(k) for k in unknown)} for {owner}; "
            f"known keys: {', '.join(fields)}"
        )


def format_validation_error(error: ValidationError, values: dict[str, Any]) -> str:
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            lines.append(f"unknown config key '{field}'")
            continue
        if not field:  # a check across fields: its message names them
            lines.append(str(item["msg"]).removeprefix("Value error, "))
            continue
        given = item.get("input")
        lines.append(f"field '{field}': {item['msg']} (got {given!r})")
    return "invalid config:\n  " + "\n  ".join(lines)


def build_config(experiment: ConfigSource, preset: str, overrides: dict[str, Any]) -> Any:
    """Validate preset values plus overrides; raise :class:`ConfigError` naming every bad field."""
    if preset not in experiment.presets:
        allowed = ", ".join(sorted(experiment.presets))
        raise ConfigError(
            f"unknown preset {preset!r} for {experiment.name}; choose from: {allowed}"
        )
    check_keys(experiment.config_cls, overrides, owner=experiment.name)
    values = {**experiment.presets[preset], **overrides}
    try:
        return experiment.config_cls(**values)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, values)) from None
