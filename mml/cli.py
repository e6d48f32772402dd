"""The `mml` command line (typer): parse, call the library, print. No logic lives here.

Heavy libraries (torch, mlflow, decord) are imported inside the commands, so `mml --help`
answers at once.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

app = typer.Typer(
    help="Mutual Modality Learning for video action recognition: data, training, evaluation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Build and check datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="params file")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-S", help="override a param: -S train.epochs=3 (repeatable)"),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")]


def _params(path: Path, overrides: list[str] | None):
    from mml.config import load_params

    return load_params(path, overrides or [])


def _run(action: Callable[[], Any]) -> Any:
    """Run a command; user errors become one red paragraph and exit code 2."""
    from mml.errors import UserError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return action()
    except UserError as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.secho("interrupted: run the same command again to resume.", err=True)
        raise typer.Exit(130) from None


@data_app.command("synth")
def data_synth(
    params: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
    workers: Annotated[
        int | None, typer.Option(help="parallel encoder processes (default: CPU count)")
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Write the synthetic motion dataset to dataset.root.

    SSv2 format (VP9 WebM + labels.json/train.json/validation.json), or with synth.multilabel
    the Charades-like variant (several actions per video, Charades CSV).
    """

    def action() -> None:
        from mml.data import synth
        from mml.progress import progress_bar

        p = _params(params, overrides)
        if p.synth.multilabel:
            synth.check_dataset_config(p.dataset, p.source, codec=p.synth.codec)
        total = p.synth.num_classes * (p.synth.train_per_class + p.synth.val_per_class)
        with progress_bar("synth videos", total, not quiet) as advance:
            synth.generate(
                Path(p.dataset.root),
                p.synth,
                workers=workers or os.cpu_count() or 1,
                progress=lambda done, _total: advance(1),
            )
        typer.echo(f"wrote {total} videos to {p.dataset.root}")

    _run(action)


def _build_cache(
    kind: str,
    params: Path,
    overrides: list[str] | None,
    workers: int | None,
    quiet: bool,
    shard: str | None,
) -> None:
    """Shared body of `mml data flow` and `mml data diff`: both splits, one cache directory."""
    from mml.data.cache import Shard, build_cache
    from mml.data.dataset import cache_dir, load_split

    part = None if shard is None else Shard.parse(shard)
    p = _params(params, overrides)
    records = [r for split in ("train", "val") for r in load_split(p.dataset, split).records]
    out = cache_dir(p.cache.root, p.dataset.name, kind)
    fmt = "video" if kind == "diff" and p.cache.diff_from_video else p.cache.format
    report = build_cache(
        records,
        out,
        kind,
        algorithm=p.cache.flow_algorithm,
        bound=p.cache.flow_bound,
        fmt=fmt,
        quality=p.cache.jpeg_quality,
        max_error=p.cache.max_error,
        workers=workers,
        show_progress=not quiet,
        shard=part,
    )
    of = "" if part is None else f" (shard {part})"
    if fmt == "video":
        typer.echo(
            f"diff cache {out}{of}: differences are computed from the videos when read "
            f"(cache.diff_from_video); nothing stored, {report.invalidated} old files deleted"
        )
        return
    typer.echo(
        f"{kind} cache {out}{of}: {report.built} built, {report.skipped_existing} already cached, "
        f"{report.invalidated} invalidated, {len(report.broken)} broken ({report.seconds:.1f} s)"
    )
    for video_id, reason in report.broken:
        typer.echo(f"  broken {video_id}: {reason}")


WorkersOpt = Annotated[
    int | None, typer.Option(help="parallel worker processes (default: CPU count)")
]
ShardOpt = Annotated[
    str | None,
    typer.Option(
        help="K/N: build only shard K of N (from 0; e.g. $SLURM_ARRAY_TASK_ID/N or "
        "$JOB_COMPLETION_INDEX/N): N jobs build one cache together, no merge step"
    ),
]


@data_app.command("flow")
def data_flow(
    params: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
    workers: WorkersOpt = None,
    quiet: QuietOpt = False,
    shard: ShardOpt = None,
) -> None:
    """Optical-flow cache (TV-L1 or DIS per cache.flow_algorithm), uint8, one file per video."""
    _run(lambda: _build_cache("flow", params, overrides, workers, quiet, shard))


@data_app.command("diff")
def data_diff(
    params: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
    workers: WorkersOpt = None,
    quiet: QuietOpt = False,
    shard: ShardOpt = None,
) -> None:
    """RGB-difference cache (next - previous frame), uint8, one file per video."""
    _run(lambda: _build_cache("diff", params, overrides, workers, quiet, shard))


@data_app.command("check")
def data_check(
    params: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Read the annotations and decode every video's frame count; list broken files."""

    def action() -> None:
        from mml.data.dataset import check_videos, load_split

        p = _params(params, overrides)
        broken_total = 0
        for split in ("train", "val"):
            ann = load_split(p.dataset, split)
            broken = check_videos(ann, show_progress=not quiet)
            broken_total += len(broken)
            typer.echo(
                f"{split}: {len(ann.records)} videos, {len(ann.classes)} classes, "
                f"{len(broken)} broken"
            )
            for video_id, reason in broken:
                typer.echo(f"  broken {video_id}: {reason}")
        if broken_total:
            raise typer.Exit(1)

    _run(action)


def forwarded_args(ctx: typer.Context, *, without: tuple[str, ...] = ()) -> list[str]:
    """The command line that gives `ctx`'s command the values it was given, from the command's
    own parameter definitions (so no option is forgotten), leaving out the `without` ones."""
    args = [ctx.info_name or ctx.command.name or ""]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name in without or value is None:
            continue
        if param.param_type_name == "argument":
            args += [str(v) for v in value] if param.multiple else [str(value)]
        elif getattr(param, "is_flag", False) and param.secondary_opts:
            args.append(param.opts[0] if value else param.secondary_opts[0])
        elif getattr(param, "is_flag", False):
            args += [param.opts[0]] if value else []
        elif param.multiple:
            args += [a for v in value for a in (param.opts[0], str(v))]
        else:
            args += [param.opts[0], str(value)]
    return args


@app.command("pretrain")
def pretrain(
    params: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Pretrain the model on synthetic stills (the default's stand-in for ImageNet weights):
    checkpoints/pretrain/0.pt, which `init: pretrain.0` starts a model from."""

    def action() -> None:
        from mml.pretrain import pretrain as run_pretrain

        result = run_pretrain(_params(params, overrides), show_progress=not quiet)
        typer.echo(
            f"pretrain: held-out top-1 {result.val_top1:.1f} (object position), "
            f"loss {result.train_loss:.3f}"
        )

    _run(action)


@app.command("train")
def train(
    ctx: typer.Context,
    stage: Annotated[str, typer.Argument(help="a stage under 'stages:' in params")],
    params: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
    restart: Annotated[bool, typer.Option(help="ignore last.pt and start over")] = False,
    restart_if_changed: Annotated[
        bool, typer.Option(help="resume if last.pt matches the params, else start over (DVC)")
    ] = False,
    tuned: Annotated[
        bool, typer.Option(help="apply the values `mml tune STAGE` wrote to tuned/STAGE.yaml")
    ] = False,
    nproc: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="processes on this machine (DDP via torchrun; 1 per GPU); default: compute.nproc",
        ),
    ] = None,
    then_evaluate: Annotated[
        bool,
        typer.Option(
            "--evaluate",
            help="then test the models as `mml evaluate STAGE` does, in this process",
        ),
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Train every model of STAGE (resumes from checkpoints/STAGE/last.pt).

    With --nproc N (or under `torchrun --nproc-per-node N -m mml train STAGE`) the models
    train with DistributedDataParallel; each process takes 1/N of every batch. With --evaluate
    the stage's models are then tested by one process (rank 0, or the launching process): one
    process start and one MLflow store opening fewer than `mml evaluate` after it.
    """
    if "WORLD_SIZE" not in os.environ:  # not under torchrun: start it if asked for processes
        nproc = nproc or _run(lambda: _params(params, overrides).compute.nproc)
        if nproc > 1:
            from mml.distributed import launch

            code = launch(nproc, forwarded_args(ctx, without=("nproc", "then_evaluate")))
            if code == 0 and then_evaluate:
                _run(
                    lambda: _evaluate_stage(
                        _stage_params(params, overrides, stage, tuned), stage, quiet
                    )
                )
            raise typer.Exit(code)

    def action() -> None:
        from mml.train import train_stage

        p = _stage_params(params, overrides, stage, tuned)
        final = train_stage(
            p,
            stage,
            restart=restart,
            restart_if_changed=restart_if_changed,
            show_progress=not quiet,
        )
        if os.environ.get("RANK", "0") != "0":
            return  # rank 0 reports
        for k, metrics in enumerate(final):
            shown = {m: round(v, 2) for m, v in metrics.items() if m.startswith("val/")}
            typer.echo(f"{stage}.{k}: {shown}")
        if then_evaluate:
            _evaluate_stage(p, stage, quiet)

    _run(action)


def _stage_params(path: Path, overrides: list[str] | None, stage: str, tuned: bool):
    p = _params(path, overrides)
    if tuned:
        from mml.tune import with_tuned

        p = with_tuned(p, stage)
    return p


def _evaluate_stage(p, stage: str, quiet: bool) -> None:
    from mml.evaluate import evaluate_stage

    report = evaluate_stage(p, stage, show_progress=not quiet)
    summary = {k: {"modality": m.modality, **m.scores} for k, m in sorted(report.models.items())}
    typer.echo(f"{stage} ({report.views}): {json.dumps(summary)}")


@app.command("evaluate")
def evaluate(
    stage: Annotated[str, typer.Argument(help="a trained stage")],
    params: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Multi-view test of STAGE's models: metrics/STAGE.json, predictions/STAGE/*.npz, plots."""

    _run(lambda: _evaluate_stage(_params(params, overrides), stage, quiet))


@app.command("ensemble")
def ensemble(
    params: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Rank ensembles of ensemble.candidates (probability averaging): metrics/ensembles.json."""

    def action() -> None:
        from mml.ensemble import run_ensembles

        report = run_ensembles(_params(params, overrides))
        best, key = report["best"], report["metric"]
        typer.echo(
            f"{len(report['ensembles'])} ensembles; best {' + '.join(best['members'])}: "
            f"{key} {best[key]:.2f}"
        )

    _run(action)


@app.command("tune")
def tune(
    stage: Annotated[str, typer.Argument(help="a stage under 'stages:' in params")],
    trials: Annotated[
        int | None, typer.Option(help="trials of the whole study (default tune.trials)")
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(help="SQLAlchemy URL or journal file (default tune.storage / optuna/)"),
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Optuna search over tune.space for STAGE; best values to tuned/STAGE.yaml.

    Start it in several shells (or hosts, with a database URL) to run trials in parallel.
    """

    def action() -> None:
        from mml.tune import tune_stage

        result = tune_stage(
            _params(params, overrides),
            stage,
            trials=trials,
            storage=storage,
            show_progress=not quiet,
        )
        states = ", ".join(f"{n.lower()} {c}" for n, c in sorted(result.trials.items()))
        typer.echo(f"study {result.study} ({result.storage}): ran {result.ran} here; {states}")
        if result.tuned_file is None:
            typer.echo("no trial completed yet; nothing written")
            return
        if result.best_value is None:
            typer.echo(f"tuning is off (tune.trials: 0); {result.tuned_file} kept")
            return
        typer.echo(f"best {result.best_value:.2f} with {result.best_params} -> {result.tuned_file}")

    _run(action)


@app.command("report")
def report(
    params: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
    out: Annotated[
        Path, typer.Option(help="directory for summary.md, summary.json, comparisons.png")
    ] = Path("reports"),
    also: Annotated[
        list[Path] | None,
        typer.Option(
            help="root of another run's workspace (DIR/metrics, DIR/predictions), or "
            "a bare metrics directory (tables only); repeatable"
        ),
    ] = None,
    exp: Annotated[
        list[str] | None,
        typer.Option(help="a DVC experiment of this repository (dvc exp list); repeatable"),
    ] = None,
    all_exps: Annotated[
        bool, typer.Option("--all-exps", help="every finished DVC experiment based on HEAD")
    ] = False,
    workspace: Annotated[
        bool, typer.Option(help="include this workspace's own run (metrics/, predictions/)")
    ] = True,
    ui: Annotated[
        str | None,
        typer.Option(
            help="address of the MLflow UI that the printed links open "
            "[default: http://127.0.0.1:5000, where `mlflow ui` serves]"
        ),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """The paper's orderings (paired differences, 95% CIs) and tables: reports/summary.md;
    figures in the report's MLflow run; links to the MLflow UI filtered to each comparison."""

    def action() -> None:
        from mml.report import write_report
        from mml.runs import all_experiments, collect_runs

        config = _params(params, overrides)
        names = list(exp or []) + (all_experiments() if all_exps else [])
        runs = collect_runs(config, list(also or []), names, workspace=workspace)
        data = write_report(config, out, runs, ui)
        rows = sum(len(s["rows"]) for s in data["sections"])
        verdicts = [c["verdict"] for c in data["comparisons"]]
        counts = ", ".join(f"{verdicts.count(v)} {v}" for v in dict.fromkeys(verdicts))
        typer.echo(
            f"wrote {out / 'summary.md'} ({len(runs)} runs, {rows} models, "
            f"{len(data['ensembles'])} ensembles; orderings: {counts})"
        )
        for link in data.get("links", []):
            typer.echo(f"{link['name']}: {link['url']}")

    _run(action)


@app.command("repro")
def repro(
    targets: Annotated[
        list[str] | None,
        typer.Argument(help="stages or foreach groups to bring up to date [default: all]"),
    ] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="stages running at once")] = 2,
) -> None:
    """`dvc repro` with independent stages side by side: one `dvc repro --single-item` per
    stage, started when the stages it depends on are done, JOBS at a time (mml.repro)."""

    def action() -> None:
        from mml.repro import run_pipeline

        runs = run_pipeline(Path.cwd(), targets or (), jobs, echo=typer.echo)
        ran = [r for r in runs if r.ran]
        typer.echo(
            f"{len(ran)} stage(s) ran, {len(runs) - len(ran)} unchanged "
            f"({sum(r.seconds for r in ran):.0f} s of stage time, {jobs} at a time)"
        )

    _run(action)


@app.command("promote")
def promote(
    force: Annotated[bool, typer.Option(help="move the alias even if not better")] = False,
    dry_run: Annotated[bool, typer.Option(help="show what would change; change nothing")] = False,
    params: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Register the best RGB model and the best ensemble; alias `champion` to the better."""

    def action() -> None:
        from mml.registry import promote
        from mml.tracking import CHAMPION

        decisions = promote(_params(params, overrides), force=force, dry_run=dry_run)
        for d in decisions:
            version = d.version or "(new)"
            if d.register:
                did = [
                    "would register a new version" if dry_run else f"registered version {version}"
                ]
            else:
                did = [f"version {version} exists"]
            if d.move_alias:
                did.append(
                    f"{'would move' if dry_run else 'moved'} {CHAMPION} to version {version}"
                )
            ms = d.timing.get("ms_per_video")
            timing = f", {ms:.0f} ms/video" if ms else ""
            typer.echo(
                f"{d.name}: {' + '.join(d.members)} ({d.metric} {d.value:.2f}{timing}): "
                f"{'; '.join(did)} — {d.reason}"
            )

    _run(action)


@app.command("predict")
def predict(
    videos: Annotated[list[Path], typer.Argument(help="video files (any format decord opens)")],
    model: Annotated[
        str | None,
        typer.Option(
            help="MLflow model URI (default in a project: models:/mml-<dataset>-rgb@champion)"
        ),
    ] = None,
    top: Annotated[int, typer.Option(help="how many classes to show", min=1)] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON lines")] = False,
    params: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Top classes of each VIDEO; a file that cannot be decoded is reported (exit code 1)."""

    def action() -> int:
        from mml.registry import load_for_predict

        if quiet:  # MLflow's progress bars while it downloads the model
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
        uri, store = _model_and_store(model, params, overrides)
        loaded = load_for_predict(uri, store)
        loaded.unwrap_python_model().for_command_line()  # the user names the files
        import pandas as pd

        table = loaded.predict(
            pd.DataFrame({"video": [str(v) for v in videos]}), params={"top_k": top}
        )
        failed = 0
        for row in table.to_dict(orient="records"):
            if isinstance(row["error"], str) and row["error"]:
                failed += 1
                typer.secho(f"error: {row['video']}: {row['error']}", fg=typer.colors.RED, err=True)
            elif as_json:
                typer.echo(
                    json.dumps(
                        {
                            "video": row["video"],
                            "top": [
                                {"label": c, "probability": round(float(s), 6)}
                                for c, s in zip(row["top_labels"], row["top_scores"], strict=True)
                            ],
                        }
                    )
                )
            else:
                _print_top(row)
        return 1 if failed else 0

    code = _run(action)
    if code:
        raise typer.Exit(code)


def _model_and_store(model: str | None, params: Path, overrides: list[str] | None):
    """(model URI, tracking store) for `predict` and `serve`: in a project its champion and
    store; outside one (no params.yaml) `--model` is needed: the model package carries every
    inference setting, and the store is $MLFLOW_TRACKING_URI, else ./mlruns."""
    from mml import tracking
    from mml.config import ConfigError

    if params == Path("params.yaml") and not params.exists() and not overrides:
        if model is None:
            raise ConfigError(
                "no params.yaml here, so no project champion to default to: pass --model, "
                "e.g. --model models:/mml-synthetic-rgb@champion, or --params PATH."
            )
        return model, tracking.store_uri(None)
    p = _params(params, overrides)
    return model or tracking.champion_uri(p), tracking.tracking_uri(p)


@app.command("serve")
def serve(
    model: Annotated[
        str | None,
        typer.Option(
            help="MLflow model URI (default in a project: models:/mml-<dataset>-rgb@champion)"
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port", min=1, max=65535)] = 5000,
    workers: Annotated[int, typer.Option(help="server worker processes", min=1)] = 1,
    max_bytes: Annotated[
        int | None,
        typer.Option(help="largest video_b64 once decoded, bytes (default 256 MiB)", min=1),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            help="seconds of work per video before its row errors (default 60)", min=0.001
        ),
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
) -> None:
    """Serve a registered model over HTTP: `mlflow models serve` with this environment.

    MLflow starts its HTTP server (uvicorn) from PATH; this command puts the Python
    environment mml runs in first on it, so the server starts without activating anything.
    Requests: POST /invocations, as `mlflow models serve` documents; rows give `video` (a path
    under MML_SERVE_ROOTS) or `video_b64` (the file's bytes, base64).
    """

    def action() -> NoReturn:
        from mml.errors import UserError
        from mml.serving import MAX_BYTES, TIMEOUT, ServeLimits

        uri, store = _model_and_store(model, params, overrides)
        bin_dir = Path(sys.executable).parent
        env = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "MLFLOW_TRACKING_URI": store,
        }
        if max_bytes is not None:
            env[MAX_BYTES] = str(max_bytes)
        if timeout is not None:
            env[TIMEOUT] = repr(float(timeout))
        try:  # a malformed MML_SERVE_* would stop every worker from loading the model
            ServeLimits.from_env(env)
        except ValueError as err:
            raise UserError(str(err)) from None
        command = [
            str(bin_dir / "mlflow"),
            *("models", "serve", "-m", uri, "--env-manager", "local"),
            *("-h", host, "-p", str(port), "-w", str(workers)),
        ]
        sys.stdout.flush()
        os.execve(command[0], command, env)  # the server is this process from here on

    _run(action)


def _print_top(row: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=str(row["video"]), title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("class")
    table.add_column("probability", justify="right")
    for i, (label, score) in enumerate(zip(row["top_labels"], row["top_scores"], strict=True)):
        table.add_row(str(i + 1), label, f"{score:.3f}")
    Console(width=100).print(table)


def main() -> NoReturn:
    """The `mml` command (the console script and `python -m mml`)."""
    try:
        app(prog_name="mml")
        code: object = 0
    except SystemExit as done:
        code = done.code
    exit_now(code)


def exit_now(code: object) -> NoReturn:
    """End the process as `sys.exit(code)` would, minus Python's teardown of its modules.

    Everything a normal exit runs still runs, in the same order: non-daemon threads are joined,
    then the atexit hooks (MLflow's flushes, logging, temporary directories), then the standard
    streams are flushed. Only the module teardown after them is skipped: with torch, MLflow and
    pyarrow loaded it takes about 2.5 s, and `dvc repro` starts 40 `mml` processes. Files are
    already closed by then (every write is atomic, mml.fsio), so there is nothing left for it to do.
    """
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message"): printed, status 1
        print(code, file=sys.stderr)
        status = 1
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # what CPython runs at exit (private, present in every 3.x)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more to say
            stream.flush()
    os._exit(status)


if __name__ == "__main__":
    main()
