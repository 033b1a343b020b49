"""Building validated experiment configs from presets and ``key=value`` overrides."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

if TYPE_CHECKING:
    from geomlab.experiments.base import Experiment, ExperimentConfig


class ConfigError(ValueError):
    """A config value or key is invalid; the message names the field and what is allowed."""


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


def format_validation_error(error: ValidationError, values: dict[str, Any]) -> str:
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "<config>"
        if item["type"] == "extra_forbidden":
            lines.append(f"unknown config key '{field}'")
            continue
        given = item.get("input")
        lines.append(f"field '{field}': {item['msg']} (got {given!r})")
    return "invalid config:\n  " + "\n  ".join(lines)


def build_config(
    experiment: Experiment, preset: str, overrides: dict[str, Any]
) -> ExperimentConfig:
    """Validate preset values plus overrides; raise :class:`ConfigError` naming every bad field."""
    if preset not in experiment.presets:
        allowed = ", ".join(sorted(experiment.presets))
        raise ConfigError(
            f"unknown preset {preset!r} for {experiment.name}; choose from: {allowed}"
        )
    fields = experiment.config_cls.model_fields
    unknown = sorted(key for key in overrides if key not in fields)
    if unknown:
        allowed = ", ".join(fields)
        raise ConfigError(
            f"unknown config key(s) {', '.join(repr(k) for k in unknown)} for {experiment.name}; "
            f"known keys: {allowed}"
        )
    values = {**experiment.presets[preset], **overrides}
    try:
        return experiment.config_cls(**values)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, values)) from None
