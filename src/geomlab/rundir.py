"""The one reader of run and sweep directories, including ones someone else wrote.

Every command that reads a run or a sweep (``show``, ``report``, ``measure-lambda``, the sweep
driver, a rerun into an existing ``--out``) goes through this module:

- ``manifest.json`` is validated against :class:`Manifest`, the model the runner validates
  every manifest with before it writes one; ``sweep.json`` against :class:`SweepRecord`, and
  ``runs.csv`` for its columns and run names. A mismatch raises :class:`RunDirError` naming the
  file and the field.
- Every path read from a received directory must resolve inside it (:func:`contained`): no
  absolute paths, no ``..``, no symlink that leads out. A sweep's runs resolve inside the sweep.
- Nothing here imports or calls code named in a directory: a received run is data.

Importing this module is light (pydantic; pandas loads when ``runs.csv`` is read).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictInt,
    ValidationError,
)

from geomlab import io

if TYPE_CHECKING:
    import pandas as pd

MANIFEST = "manifest.json"
SWEEP_FILE = "sweep.json"
RUNS_CSV = "runs.csv"
RUNS_DIR = "runs"

STATUSES = ("running", "complete", "gates_failed", "failed", "interrupted")
RUNS_CSV_COLUMNS = ("run", "label", "status")


class RunDirError(ValueError):
    """A run or sweep directory cannot be read as one: a missing, corrupt or wrongly shaped
    file, or a path that leads outside the directory. The message names the file (and the
    field); the CLI exits 2."""

    def __init__(self, path: Path, message: str) -> None:
        self.path = Path(path)
        super().__init__(message)


# --------------------------------------------------------------------------- the schemas


def _headline_value(value: Any) -> Any:
    if value is None or isinstance(value, int | float | str):
        return value
    raise ValueError(f"must be a number, a text or null, not a JSON {type(value).__name__}")


Number = Annotated[Any, PlainValidator(_headline_value)]
"""A headline value: JSON numbers (a non-finite one is written as null), or a short text."""


class _Open(BaseModel):
    """Known fields are typed; fields a later geomlab adds are kept, not refused."""

    model_config = ConfigDict(extra="allow")


class Gate(_Open):
    name: str
    passed: StrictBool
    scope: str = ""
    message: str = ""


class Environment(_Open):
    geomlab: str | None = None
    torch: str | None = None
    numpy: str | None = None
    pandas: str | None = None
    python: str | None = None
    platform: str | None = None
    hostname: str | None = None
    torch_threads: StrictInt | None = None
    device: str | None = None
    git_commit: str | None = None


class Writer(_Open):
    pid: StrictInt | None = None
    host: str | None = None
    since: str | None = None


class Invocation(_Open):
    started: str | None = None
    finished: str | None = None
    status: str | None = None
    wall_seconds: float | None = None


class Manifest(_Open):
    """``manifest.json`` of a run: what :mod:`geomlab.runner` writes (it validates each
    manifest with this model before writing it) and what every reader checks."""

    experiment: str
    preset: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    config_hash: str | None = None
    status: Literal["running", "complete", "gates_failed", "failed", "interrupted"]
    started: str | None = None
    finished: str | None = None
    resumed: StrictBool = False
    forced: StrictBool = False
    command: list[str] = Field(default_factory=list)
    environment: Environment = Field(default_factory=Environment)
    writer: Writer | None = None
    invocations: list[Invocation] = Field(default_factory=list)
    wall_seconds: float | None = None
    error: str | None = None
    gates: list[Gate] = Field(default_factory=list)
    headline: dict[str, Number] = Field(default_factory=dict)
    artifacts: list[str] = Field(default_factory=list)


class SweepRun(_Open):
    config_hash: str
    name: str | None = None
    label: str | None = None
    point: dict[str, Any] = Field(default_factory=dict)
    seed: StrictInt | None = None


class SweepRecord(_Open):
    """``sweep.json``: what :mod:`geomlab.sweep.driver` writes."""

    experiment: str
    preset: str | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    seeds: list[StrictInt] | None = None
    seed_field: str | None = None
    sweep_hash: str | None = None
    created: str | None = None
    updated: str | None = None
    runs: list[SweepRun] = Field(default_factory=list)


def _describe(error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(top level)"
        given = item.get("input")
        shown = repr(given)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        problems.append(f"field '{field}': {item['msg']} (got {shown})")
    return "; ".join(problems[:5]) + (
        f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
    )


def check_manifest(data: Any, path: Path | str = MANIFEST) -> Manifest:
    """``data`` as a :class:`Manifest`; :class:`RunDirError` naming ``path`` and the field."""
    if not isinstance(data, dict):
        raise RunDirError(
            Path(path), f"{path} is not a geomlab manifest (a JSON {type(data).__name__}, "
            "not an object)"
        )  # fmt: skip
    try:
        return Manifest.model_validate(data)
    except ValidationError as error:
        raise RunDirError(
            Path(path), f"{path} is not a geomlab manifest: {_describe(error)}"
        ) from None


# --------------------------------------------------------------------------- containment


def contained(root: Path, relative: Any, *, source: Path | str, what: str = "path") -> Path:
    """``root / relative``, refused (:class:`RunDirError` naming ``source``) unless it stays
    inside ``root``: a relative path without ``..`` whose resolved location, symlinks
    followed, is inside ``root`` resolved."""
    if not isinstance(relative, str) or not relative.strip() or "\x00" in relative:
        raise RunDirError(Path(source), f"{source}: {what} {relative!r} is not a file name")
    posix, windows = PurePosixPath(relative), PureWindowsPath(relative)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or relative.startswith("~"):
        raise RunDirError(
            Path(source), f"{source}: {what} {relative!r} is an absolute path; refused"
        )
    if ".." in posix.parts or ".." in windows.parts:
        raise RunDirError(
            Path(source), f"{source}: {what} {relative!r} leads outside {root} ('..'); refused"
        )
    path = Path(root) / relative
    base = Path(root).resolve()
    target = path.resolve()
    if target != base and not target.is_relative_to(base):
        raise RunDirError(
            Path(source),
            f"{source}: {what} {relative!r} resolves to {target}, outside {root} (a symlink "
            "out of the directory); refused",
        )
    return path


def read_contained_json(root: Path, relative: str) -> Any:
    """The JSON in ``root/relative`` (which must stay inside ``root``)."""
    path = contained(root, relative, source=Path(root) / relative, what="file")
    try:
        return io.read_json(path)
    except io.CorruptFileError as error:
        raise RunDirError(path, str(error)) from None
    except IsADirectoryError:
        raise RunDirError(path, f"{path} is a directory, not a file") from None
    except OSError as error:
        raise RunDirError(path, f"cannot read {path}: {error.strerror or error}") from None


# --------------------------------------------------------------------------- runs


def is_run_dir(path: Path) -> bool:
    return (Path(path) / MANIFEST).exists() or (Path(path) / MANIFEST).is_symlink()


def is_sweep_dir(path: Path) -> bool:
    return (Path(path) / SWEEP_FILE).exists() or (Path(path) / SWEEP_FILE).is_symlink()


def read_manifest(run_dir: Path) -> Manifest | None:
    """The validated manifest of ``run_dir``; ``None`` when it has none."""
    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        return None
    return check_manifest(read_contained_json(run_dir, MANIFEST), run_dir / MANIFEST)


def read_manifest_dict(run_dir: Path) -> dict[str, Any] | None:
    """:func:`read_manifest` as the plain JSON object (validated, every field as written)."""
    manifest = read_manifest(run_dir)
    return None if manifest is None else manifest.model_dump(mode="json", exclude_unset=True)


@dataclass
class RunDir:
    """A run directory read back: its path and validated manifest."""

    path: Path
    manifest: Manifest

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def artifact(self, name: str) -> Path:
        """An artifact the manifest lists, checked to stay inside the run directory."""
        return contained(self.path, name, source=self.manifest_path, what="artifact")

    def artifacts(self, *suffixes: str) -> list[Path]:
        """The artifacts the manifest lists (with one of ``suffixes``, if given) that exist,
        in the manifest's order; each checked to stay inside the run directory."""
        found = []
        for name in self.manifest.artifacts:
            path = self.artifact(name)
            if suffixes and path.suffix.lower() not in suffixes:
                continue
            if path.is_file():
                found.append(path)
        return found

    def read_text(self, name: str) -> str | None:
        """A file of the run directory (not necessarily an artifact, e.g. ``traceback.txt``),
        ``None`` when absent; refused when it leads outside."""
        path = contained(self.path, name, source=self.path / name, what="file")
        if not path.is_file():
            return None
        return path.read_text(encoding="utf-8", errors="replace")


def read_run(run_dir: Path) -> RunDir:
    """A run directory: :class:`RunDirError` when it has no manifest or a bad one."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(run_dir, f"{run_dir} is not a directory")
    manifest = read_manifest(run_dir)
    if manifest is None:
        raise RunDirError(run_dir / MANIFEST, f"{run_dir} is not a run directory (no {MANIFEST})")
    return RunDir(run_dir, manifest)


# --------------------------------------------------------------------------- sweeps


@dataclass
class SweepDir:
    """A sweep directory read back: its validated record and checked runs table."""

    path: Path
    record: SweepRecord
    runs: pd.DataFrame

    def run_dir(self, name: str) -> Path:
        """The run directory of runs.csv's ``run`` cell ``name``, inside ``runs/``."""
        return sweep_run_dir(self.path, name)


def sweep_run_dir(sweep_dir: Path, name: Any) -> Path:
    """``<sweep>/runs/<name>``, refused (:class:`RunDirError` naming ``runs.csv``) unless
    ``name`` is a relative path without ``..`` and it resolves inside the sweep (a ``runs/``
    that is itself a symlink out is refused too)."""
    source = Path(sweep_dir) / RUNS_CSV
    contained(Path(sweep_dir) / RUNS_DIR, name, source=source, what="run")  # its own form
    return contained(Path(sweep_dir), f"{RUNS_DIR}/{name}", source=source, what="run")


def read_sweep_record(sweep_dir: Path) -> SweepRecord:
    sweep_dir = Path(sweep_dir)
    path = sweep_dir / SWEEP_FILE
    data = read_contained_json(sweep_dir, SWEEP_FILE)
    if not isinstance(data, dict):
        raise RunDirError(path, f"{path} does not hold a sweep record (a JSON object)")
    try:
        return SweepRecord.model_validate(data)
    except ValidationError as error:
        raise RunDirError(
            path, f"{path} is not a geomlab sweep record: {_describe(error)}"
        ) from None


def read_sweep(sweep_dir: Path) -> SweepDir:
    """``sweep.json`` and ``runs.csv`` of ``sweep_dir``, validated: the record's schema, the
    table's required columns and grid keys, and every run inside ``runs/``."""
    import pandas as pd

    sweep_dir = Path(sweep_dir)
    record = read_sweep_record(sweep_dir)
    runs_path = sweep_dir / RUNS_CSV
    if not runs_path.exists() and not runs_path.is_symlink():
        raise RunDirError(runs_path, f"{sweep_dir} has {SWEEP_FILE} but no {RUNS_CSV}")
    contained(sweep_dir, RUNS_CSV, source=runs_path, what="file")
    try:
        runs = pd.read_csv(runs_path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise RunDirError(runs_path, f"{runs_path} is not a readable CSV table: {error}") from None
    except OSError as error:
        raise RunDirError(
            runs_path, f"cannot read {runs_path}: {error.strerror or error}"
        ) from None
    missing = [c for c in RUNS_CSV_COLUMNS if c not in runs.columns]
    if missing:
        raise RunDirError(runs_path, f"{runs_path} lacks the column(s) {', '.join(missing)}")
    absent = [key for key in record.grid if key not in runs.columns]
    if absent:
        raise RunDirError(
            runs_path,
            f"{runs_path} has no column for the grid key(s) {', '.join(map(repr, absent))} "
            f"that {sweep_dir / SWEEP_FILE} names",
        )
    sweep = SweepDir(sweep_dir, record, runs)
    for index, name in enumerate(runs["run"]):
        if not isinstance(name, str):
            raise RunDirError(
                runs_path, f"{runs_path}: row {index + 1} has no run name (column 'run')"
            )
        sweep.run_dir(name)  # refused unless inside runs/
    return sweep
