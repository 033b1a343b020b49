"""The grid: parsing ``--grid`` and ``--seeds``, and expanding them into validated runs.

Every grid point's config is built and validated here, before anything runs or is written;
a run is named ``<label>-<config hash>`` so that the same command (in any flag order and
value spelling) finds the same runs again.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geomlab import experiments
from geomlab.config import ConfigError, build_config, check_keys, parse_value
from geomlab.experiments.base import Experiment
from geomlab.runner import config_hash
from geomlab.sweep.layout import SweepError

SEED_FIELDS = ("seed", "seeds")
LABEL_MAX = 60
MAX_ERRORS_SHOWN = 10


def split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets and quotes: ``[1,2],[3]`` -> ``["[1,2]", "[3]"]``."""
    parts, depth, quote, start = [], 0, "", 0
    for index, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return [part.strip() for part in parts if part.strip()]


def parse_grid(pairs: list[str]) -> dict[str, list[Any]]:
    """``["rcond=1e-8,1e-6", "epsilon_values=[1e-4],[1e-3,1e-2]"]`` -> values per key.

    Values are separated by top-level commas; each is read like a ``--set`` value (JSON first).
    """
    grid: dict[str, list[Any]] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise SweepError(f"grid {pair!r} is not of the form key=value1,value2,...")
        if key in grid:
            raise SweepError(f"grid key {key!r} is given twice; list all its values in one --grid")
        values = [parse_value(part) for part in split_top_level(text)]
        if not values:
            raise SweepError(f"grid key {key!r} has no values")
        grid[key] = values
    return grid


def parse_seeds(text: str) -> list[int]:
    """``"0-9"`` -> 0..9; ``"0,3,7"``; ``"0-4,10-12"``. Order kept, duplicates are errors."""
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not match:
            raise SweepError(f"--seeds {text!r}: {part!r} is not a seed or a range like 0-9")
        first, last = int(match[1]), int(match[2] if match[2] is not None else match[1])
        if last < first:
            raise SweepError(f"--seeds {text!r}: range {part!r} runs backwards")
        seeds.extend(range(first, last + 1))
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"--seeds {text!r} lists a seed twice")
    return seeds


def seed_overrides(experiment: Experiment, seed: int) -> dict[str, Any]:
    """How one sweep seed enters a config: ``seed=s`` if the config has a ``seed`` field,
    else ``seeds=[s]`` (one run per seed); an experiment with neither cannot take --seeds."""
    fields = experiment.config_cls.model_fields
    if "seed" in fields:
        return {"seed": seed}
    if "seeds" in fields:
        return {"seeds": [seed]}
    raise SweepError(
        f"{experiment.name} has no 'seed' or 'seeds' config field, so --seeds cannot apply; "
        "sweep over its own field with --grid instead"
    )


def format_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float | int | str):
        return str(value)
    return json.dumps(value, separators=(",", ":"))


def make_label(point: dict[str, Any], seed: int | None) -> str:
    """Readable, file-name safe: ``rcond=1e-08_seed=3`` (the hash keeps names unique)."""
    items = [f"{key}={format_value(value)}" for key, value in point.items()]
    if seed is not None:
        items.append(f"seed={seed}")
    label = re.sub(r"[^A-Za-z0-9._=+-]+", "-", "_".join(items)).strip("-_")
    return label[:LABEL_MAX].rstrip("-_") or "base"


@dataclass(frozen=True)
class RunSpec:
    """One grid point: its validated config and where it lives in the sweep directory."""

    name: str  # directory name: <label>-<config hash>
    label: str
    point: dict[str, Any]
    seed: int | None
    overrides: dict[str, Any]  # everything on top of the preset, as build_config takes it
    config: dict[str, Any]  # the validated config, JSON values
    config_hash: str


@dataclass(frozen=True)
class SweepSpec:
    """What the user asked for: experiment, preset, fixed overrides, grid and seeds."""

    experiment: str
    preset: str
    overrides: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    seeds: list[int] | None = None


def _experiment(spec: SweepSpec) -> Experiment:
    """The experiment, with the grid's keys and the seed options checked against its config."""
    try:
        experiment = experiments.get(spec.experiment)
    except KeyError as error:
        raise SweepError(str(error).strip("'\"")) from None
    try:
        check_keys(experiment.config_cls, spec.grid, owner=experiment.name, what="grid key")
    except ConfigError as error:
        raise SweepError(str(error)) from None
    if spec.seeds is not None:
        clash = sorted(key for key in spec.grid if key in SEED_FIELDS or key == "n_seeds")
        if clash:
            raise SweepError(f"--seeds and --grid {clash[0]} both set the seed; use one of them")
    return experiment


def expand(spec: SweepSpec) -> tuple[Experiment, list[RunSpec]]:
    """Every grid point (keys sorted, seeds innermost), each config validated before any run.

    Raises :class:`SweepError` naming unknown keys, and every bad point with its field and
    value; also when two points give the same config (e.g. ``1e-8`` and ``0.00000001``).
    """
    experiment = _experiment(spec)
    keys = sorted(spec.grid)
    seeds: list[int | None] = list(spec.seeds) if spec.seeds is not None else [None]
    runs: list[RunSpec] = []
    errors: list[str] = []
    by_hash: dict[str, str] = {}
    for values in itertools.product(*(spec.grid[key] for key in keys)):
        point = dict(zip(keys, values, strict=True))
        for seed in seeds:
            label = make_label(point, seed)
            overrides = {**spec.overrides, **point}
            if seed is not None:
                overrides.update(seed_overrides(experiment, seed))
            try:
                config = build_config(experiment, spec.preset, overrides)
            except ConfigError as error:
                errors.append(f"grid point {label}: {error}")
                continue
            digest = config_hash(experiment.name, config)
            if digest in by_hash:
                errors.append(f"grid points {by_hash[digest]} and {label} give the same config")
                continue
            by_hash[digest] = label
            runs.append(
                RunSpec(
                    name=f"{label}-{digest}",
                    label=label,
                    point=point,
                    seed=seed,
                    overrides=overrides,
                    config=config.model_dump(mode="json"),
                    config_hash=digest,
                )
            )
    if errors:
        shown = errors[:MAX_ERRORS_SHOWN]
        if len(errors) > MAX_ERRORS_SHOWN:
            shown.append(f"... and {len(errors) - MAX_ERRORS_SHOWN} more")
        raise SweepError("invalid sweep, nothing was run:\n  " + "\n  ".join(shown))
    return experiment, runs


def sweep_digest(experiment: Experiment, runs: list[RunSpec]) -> str:
    """Identity of a sweep: its set of run configs (spelling and flag order do not matter)."""
    text = json.dumps([experiment.name, sorted(run.config_hash for run in runs)])
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def default_sweep_dir(
    experiment: Experiment, runs: list[RunSpec], root: Path = Path("results")
) -> Path:
    """Deterministic, so that rerunning the same command resumes the same sweep."""
    return root / experiment.name / f"sweep-{sweep_digest(experiment, runs)}"
