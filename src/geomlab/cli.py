"""The ``geomlab`` command line: list, run, show (parses and validates, then calls the runner).

Heavy modules (torch, pandas, matplotlib) and the experiment modules are imported only by the
commands that need them: ``geomlab --help`` and ``geomlab list`` import none of them (a test
checks it; the runner imports torch when a run starts).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from geomlab import experiments
from geomlab.config import ConfigError, parse_overrides
from geomlab.runner import (  # light: torch loads when a run starts
    RunError,
    RunInputError,
    Terminated,
    run_experiment,
    writer_state,
)

app = typer.Typer(
    help="Learning-geometry experiments on PyTorch models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

EXIT_GATES_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_RUN_FAILED = 3


def fail(message: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


@app.command("list")
def list_experiments() -> None:
    """List experiments, their aliases and presets."""
    table = Table(box=None, header_style="bold")
    for column in ("experiment", "aliases", "presets", "description"):
        table.add_column(column)
    for name, entry in experiments.REGISTRY.items():  # no experiment module is imported
        table.add_row(name, ", ".join(entry.aliases), ", ".join(entry.presets), entry.description)
    console.print(table)


@app.command("run")
def run(
    name: Annotated[str, typer.Argument(help="experiment name or alias (see `geomlab list`)")],
    preset: Annotated[str | None, typer.Option(help="named preset, e.g. paper or quick")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="override a config field: key=value (repeatable)"),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="run directory (default results/NAME/TIMESTAMP); reuse it to resume"),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="auto | cpu | cuda (overrides the config's device)")
    ] = None,
    allow_gate_failures: Annotated[
        bool, typer.Option(help="exit 0 even when a validation gate fails")
    ] = False,
    force: Annotated[
        bool, typer.Option(help="recompute everything, even finished pieces or a finished run")
    ] = False,
    show_config: Annotated[
        bool, typer.Option("--show-config", help="print the validated config and exit")
    ] = False,
) -> None:
    """Run one experiment and write its tables, figures and manifest."""
    try:
        experiment = experiments.get(name)
        overrides = parse_overrides(set_ or [])
        if device is not None:
            overrides["device"] = device
        chosen = preset or experiment.default_preset
        config = experiment.make_config(chosen, overrides)
    except (KeyError, ConfigError) as error:
        raise fail(str(error).strip("'\"")) from None
    if show_config:
        console.print_json(json.dumps(config.model_dump(mode="json")))
        return
    from geomlab.sweep import SWEEP_FILE, is_sweep_dir

    if out is not None and is_sweep_dir(out):
        raise fail(f"{out} is a sweep directory ({SWEEP_FILE}); a run needs its own --out")
    try:
        outcome = run_experiment(
            experiment, config, preset=chosen, out_dir=out, console=err_console, force=force
        )
    except RunInputError as error:  # bad --out, a directory another run holds, corrupt file
        raise fail(str(error)) from None
    except RunError as error:
        raise fail(str(error), EXIT_RUN_FAILED) from None
    except KeyboardInterrupt as error:  # Ctrl-C, or SIGTERM (Terminated)
        what = "terminated (SIGTERM)" if isinstance(error, Terminated) else "interrupted"
        raise fail(f"{what}; rerun with the same --out to resume", EXIT_RUN_FAILED) from None
    except Exception as error:  # the manifest and log hold the details
        raise _failure(error) from error

    if outcome.status == "already_complete":
        console.print(f"{outcome.out_dir} already holds a finished run (use --force to redo it)")
    _print_headline(outcome.manifest)
    console.print(f"results: [bold]{outcome.out_dir}[/]")
    if outcome.manifest.get("status") == "gates_failed":
        failed = [g for g in outcome.manifest.get("gates", []) if not g["passed"]]
        message = f"{len(failed)} validation gate(s) failed; see `geomlab show {outcome.out_dir}`"
        if allow_gate_failures:
            err_console.print(f"[yellow]warning:[/] {message}")
        else:
            raise fail(message, EXIT_GATES_FAILED)


def _failure(error: Exception) -> typer.Exit:
    """A run that stopped on an error: exit 2 when geomlab refused the model or input (an exact
    path cannot cover it; see docs/your-model.md), 3 when it failed while working."""
    from geomlab.geometry.refusal import Refused

    if isinstance(error, Refused):
        return fail(f"refused: {type(error).__name__}: {error}", EXIT_BAD_INPUT)
    return fail(f"run failed: {type(error).__name__}: {error}", EXIT_RUN_FAILED)


def _print_headline(manifest: dict[str, Any]) -> None:
    headline = manifest.get("headline") or {}
    if not headline:
        return
    table = Table(title="headline", box=None, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in headline.items():
        table.add_row(escape(str(key)), escape(_fmt(value)))
    console.print(table)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if value is None:
        return "—"
    return str(value)


@app.command("show")
def show(run_dir: Annotated[Path, typer.Argument(help="a run directory")]) -> None:
    """Print a run's manifest, gate results and headline numbers."""
    from geomlab import rundir

    try:
        run = rundir.read_run(run_dir)
    except rundir.RunDirError as error:
        raise fail(str(error)) from None
    manifest = run.manifest
    env = manifest.environment
    info = Table(title=str(run_dir), box=None, show_header=False)
    info.add_column(style="bold")
    info.add_column()
    status = manifest.status
    colour = {"complete": "green", "gates_failed": "red", "failed": "red"}.get(status, "yellow")
    writer = None
    if status == "running":
        alive, writer = writer_state(run_dir, manifest.model_dump(mode="json"))
        if alive is False:
            status = "running, but its writer is gone (killed?): rerun the same command to resume"
            colour = "red"
    invocations = manifest.invocations
    for key, value in [
        ("experiment", manifest.experiment),
        ("preset", manifest.preset),
        ("status", f"[{colour}]{escape(status)}[/]"),
        ("started", manifest.started),
        ("finished", manifest.finished),
        ("writer", writer),
        ("wall seconds", _fmt(manifest.wall_seconds)),
        ("invocations", len(invocations) if len(invocations) > 1 else None),
        ("device", env.device),
        ("versions", f"geomlab {env.geomlab}, torch {env.torch}, python {env.python}"),
        ("config hash", manifest.config_hash),
        ("error", manifest.error),
    ]:  # fmt: skip
        if value is not None:
            info.add_row(key, value if key == "status" else escape(str(value)))
    console.print(info)

    config = Table(title="config", box=None, header_style="bold")
    config.add_column("field")
    config.add_column("value")
    for key, value in manifest.config.items():
        config.add_row(escape(key), escape(json.dumps(value)))
    console.print(config)

    if manifest.gates:
        table = Table(title="gates", box=None, header_style="bold")
        for column in ("gate", "scope", "result", "message"):
            table.add_column(column)
        for gate in manifest.gates:
            verdict = "[green]pass[/]" if gate.passed else "[red]FAIL[/]"
            table.add_row(escape(gate.name), escape(gate.scope), verdict, escape(gate.message))
        console.print(table)
    _print_headline({"headline": manifest.headline})


@app.command("sweep")
def sweep(
    name: Annotated[str, typer.Argument(help="experiment name or alias (see `geomlab list`)")],
    grid: Annotated[
        list[str] | None,
        typer.Option(help="config key and its values: key=v1,v2,... (repeatable)"),
    ] = None,
    seeds: Annotated[
        str | None, typer.Option(help="one run per seed: 0-9, 0,3,7 or 0-4,10-12")
    ] = None,
    preset: Annotated[str | None, typer.Option(help="named preset, e.g. paper or quick")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="fixed override for every run: key=value (repeatable)"),
    ] = None,
    executor: Annotated[str, typer.Option(help="local (process pool) or dask")] = "local",
    workers: Annotated[
        int | None, typer.Option(help="parallel runs (default: cores, GPUs or cluster threads)")
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="Dask scheduler, e.g. tcp://host:8786 (else LocalCluster)")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="torch threads per run (default: cores // workers)")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="sweep directory (default results/NAME/sweep-HASH); rerun to resume"),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="auto | cpu | cuda (overrides the config's device)")
    ] = None,
    allow_gate_failures: Annotated[
        bool, typer.Option(help="exit 0 even when a run fails a validation gate")
    ] = False,
) -> None:
    """Run an experiment over a grid of config values and seeds; resumable."""
    from geomlab import sweep as sweeps

    try:
        overrides = parse_overrides(set_ or [])
        if device is not None:
            overrides["device"] = device
        experiment = experiments.get(name)
        spec = sweeps.SweepSpec(
            experiment=experiment.name,
            preset=preset or experiment.default_preset,
            overrides=overrides,
            grid=sweeps.parse_grid(grid or []),
            seeds=sweeps.parse_seeds(seeds) if seeds is not None else None,
        )
        outcome = sweeps.run_sweep(
            spec, out_dir=out, executor=executor, workers=workers, address=address,
            threads=threads, console=err_console,
        )  # fmt: skip
    except (KeyError, ConfigError, sweeps.SweepError) as error:
        raise fail(str(error).strip("'\"")) from None
    except KeyboardInterrupt:
        raise fail("interrupted; rerun the same command to resume", EXIT_RUN_FAILED) from None
    except Exception as error:  # the driver itself failed; sweep.log has what it got to
        raise fail(f"sweep failed: {type(error).__name__}: {error}", EXIT_RUN_FAILED) from error

    counts = outcome.counts
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    console.print(f"{len(outcome.runs)} runs ({summary}); {outcome.skipped} were already done")
    console.print(f"sweep: [bold]{outcome.out_dir}[/] (table: {outcome.out_dir / sweeps.RUNS_CSV})")
    if counts.get("failed") or counts.get("interrupted"):
        bad = counts.get("failed", 0) + counts.get("interrupted", 0)
        raise fail(f"{bad} run(s) did not finish; see runs.csv and sweep.log", EXIT_RUN_FAILED)
    if counts.get("gates_failed"):
        message = f"{counts['gates_failed']} run(s) failed a validation gate"
        if allow_gate_failures:
            err_console.print(f"[yellow]warning:[/] {message}")
        else:
            raise fail(message, EXIT_GATES_FAILED)


@app.command("report")
def report(
    dirs: Annotated[list[Path], typer.Argument(help="run and/or sweep directories")],
    out: Annotated[
        Path | None,
        typer.Option(help="HTML file (default: DIR/report.html for one DIR, else report.html)"),
    ] = None,
) -> None:
    """Write one self-contained HTML page (tables, gates, figures) for runs and sweeps."""
    from geomlab import report as reports

    target = out or (dirs[0] / "report.html" if len(dirs) == 1 else Path("report.html"))
    try:
        path = reports.write_report(dirs, target)
    except reports.ReportError as error:  # a bad or unsafe directory, an unwritable --out
        raise fail(str(error)) from None
    console.print(f"report: [bold]{path}[/]")


# --- λ control and data (lambda-control experiment) ------------------------------------------

data_app = typer.Typer(help="Datasets: opt-in downloads.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("download")
def data_download(
    dataset: Annotated[str, typer.Argument(help="dataset name: mnist")],
    data_dir: Annotated[
        Path | None, typer.Option(help="target root (default $GEOMLAB_DATA or ~/.cache/geomlab)")
    ] = None,
    mirror: Annotated[
        list[str] | None, typer.Option(help="mirror base URL, tried in order (repeatable)")
    ] = None,
    deadline: Annotated[
        float, typer.Option(min=1, help="give up after this many seconds in all")
    ] = 900.0,
) -> None:
    """Download a dataset's files from public mirrors, verifying checksums."""
    from geomlab.data import mnist

    if dataset.lower() != "mnist":
        raise fail(f"unknown dataset {dataset!r}; known: mnist")
    from geomlab.runner import sigterm_as_interrupt

    try:
        with sigterm_as_interrupt():  # SIGTERM unwinds too: no partial file stays behind
            paths = mnist.download_mnist(
                data_dir, mirrors=mirror or mnist.DEFAULT_MIRRORS, deadline=deadline,
                log=err_console.print,
            )  # fmt: skip
    except mnist.MNISTDataError as error:
        raise fail(str(error), EXIT_RUN_FAILED) from None
    except KeyboardInterrupt as error:
        what = "terminated (SIGTERM)" if isinstance(error, Terminated) else "interrupted"
        raise fail(f"{what}; nothing partial was kept", EXIT_RUN_FAILED) from None
    console.print(f"MNIST ready in [bold]{paths[0].parent}[/]")


@app.command("measure-lambda")
def measure_lambda(
    run_dir: Annotated[Path, typer.Argument(help="a finished lambda-control run directory")],
    more_pairs: Annotated[
        list[str] | None,
        typer.Argument(help="further class pairs, e.g. 3,8 5v6", show_default=False),
    ] = None,
    pairs: Annotated[
        list[str] | None,
        typer.Option(help="class pairs, e.g. --pairs 4,9 3,8 (default: the run's)"),
    ] = None,
    prob_range: Annotated[
        str | None, typer.Option(help="boundary range low,high, e.g. 0.3,0.7")
    ] = None,
    boundary: Annotated[
        str | None, typer.Option(help="boundary points: notebook | pairwise (default: the run's)")
    ] = None,
    max_order: Annotated[int | None, typer.Option(help="n_max of the fit")] = None,
    directions: Annotated[int | None, typer.Option(help="random directions per point")] = None,
    max_points: Annotated[int | None, typer.Option()] = None,
    min_points: Annotated[int | None, typer.Option()] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    data_dir: Annotated[Path | None, typer.Option(help="folder with MNIST IDX files")] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="run directory of the measurement (default RUN_DIR/measure-lambda/HASH)"),
    ] = None,
    trust_model: Annotated[
        bool,
        typer.Option(
            "--trust-model",
            help="import and call the model factory (package.module:function) that RUN_DIR's "
            "manifest names; without it such a run is refused",
        ),
    ] = False,
    model: Annotated[
        str | None,
        typer.Option(help="build the models with this factory (package.module:function)"),
    ] = None,
) -> None:
    """Re-measure λ from a run's saved models (other pairs, ranges, K) without retraining."""
    from pydantic import ValidationError

    from geomlab.remeasure import measure_lambda_from_run

    chosen = [*(pairs or []), *(more_pairs or [])]
    try:
        low_high = tuple(float(v) for v in prob_range.split(",")) if prob_range else None
        table = measure_lambda_from_run(
            run_dir,
            pairs=" ".join(chosen) if chosen else None,
            prob_range=low_high,
            boundary=boundary,
            max_order=max_order,
            num_directions=directions,
            max_points=max_points,
            min_points=min_points,
            device=device,
            data_dir=str(data_dir) if data_dir else None,
            out_dir=out,
            model=model,
            trust_model=trust_model,
        )
    except (FileNotFoundError, ValueError, ValidationError, RunInputError) as error:
        raise fail(str(error)) from None  # a bad run directory, setting or checkpoint
    except RunError as error:  # e.g. --device cuda without CUDA
        raise fail(str(error), EXIT_RUN_FAILED) from None
    except KeyboardInterrupt:
        raise fail("interrupted; rerun the same command to resume", EXIT_RUN_FAILED) from None
    except Exception as error:  # the measurement's manifest and run.log hold the details
        raise fail(
            f"measure-lambda failed: {type(error).__name__}: {error}", EXIT_RUN_FAILED
        ) from error
    result = Table(box=None, header_style="bold")
    for column in ("condition", "seed", "pair", "lambda", "num_points"):
        result.add_column(column, justify="right" if column != "condition" else "left")
    for row in table.to_dict("records"):
        result.add_row(
            row["condition"], str(row["seed"]), row["pair"], _fmt(row["lambda"]),
            str(row["num_points"]),
        )  # fmt: skip
    console.print(result)
    console.print(f"written: {Path(table.attrs['out_dir']) / 'lambda_remeasured.csv'}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
