"""The `netspec` command line. Each command is a thin shell around one library call; a NetspecError
is printed as one located message with exit status 1 (`--debug` shows the traceback instead)."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from netspec.errors import NetspecError

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Turns a NetspecError into its message on stderr and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NetspecError as e:
            ctx = click.get_current_context()
            if ctx.find_root().params.get("debug"):
                raise
            if ctx.params.get("as_json"):  # a program reading stdout gets the error in the form it asked for
                click.echo(json.dumps({"error": _error_fields(e)}, indent=1))
            click.echo(f"error: {e}" if e.loc is None and e.layer is None else str(e), err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]  # functools.wraps keeps fn's signature


UNTRAINED = (
    "warning: no --weights: the spec's weights are its fillers' (untrained); give a snapshot or a "
    ".caffemodel for a trained model"
)


def _error_fields(e: NetspecError) -> dict[str, Any]:
    return {
        "message": e.msg,
        "file": e.loc.file if e.loc else None,
        "line": e.loc.line if e.loc else None,
        "column": e.loc.col if e.loc else None,
        "layer": e.layer,
        "type": e.layer_type,
        "field": e.field,
        "hint": e.hint,
        "text": str(e),
    }


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show a traceback for errors in specs and data.")
@click.version_option(package_name="netspec")
def main(debug: bool) -> None:
    """netspec: Caffe-style network specs, checked before they run, trained with PyTorch."""


_phase_option = click.option(
    "--phase",
    type=click.Choice(["TRAIN", "TEST"], case_sensitive=False),
    help="Instantiate the net for this phase (default: the spec's state, else TEST).",
)
_stage_option = click.option(
    "--stage", multiple=True, help="A NetState stage for include/exclude rules (repeat, or comma-separate)."
)


def _stages(stage: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(s for item in stage for s in item.split(",") if s)


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@_phase_option
@_stage_option
@click.option("--level", type=int, default=None, help="The NetState level.")
@click.option(
    "--shape",
    "shapes",
    multiple=True,
    metavar="BLOB=D0,D1,...",
    help="The shape of a data layer's top, instead of reading its source (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
@user_errors
def check(
    spec: str, phase: str | None, stage: tuple[str, ...], level: int | None, shapes: tuple[str, ...], as_json: bool
) -> None:
    """Check a net and show every layer's shapes, parameters and MACs.

    Without --phase, layers that only the other phase includes are checked too."""
    from netspec.net import build_net, has_phase_rules
    from netspec.netfile import read_net
    from netspec.report import summary, table

    spec_file = read_net(spec)
    fed = _parse_shapes(shapes)
    net = build_net(spec_file, phase, _stages(stage), level, fed)
    warnings = list(net.warnings)
    if phase is None and has_phase_rules(spec_file.message):
        other = "TRAIN" if net.phase == "TEST" else "TEST"
        try:
            warnings += build_net(spec_file, other, _stages(stage), level, fed).warnings
        except NetspecError as e:
            e.msg += f" (in the {other} phase)"
            raise
    if as_json:
        click.echo(json.dumps(summary(net), indent=1))
        return
    click.echo(table(net))
    for w in warnings:
        click.echo(str(w), err=True)


def _parse_shapes(items: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    out = {}
    for item in items:
        blob, sep, dims = item.partition("=")
        try:
            shape = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
        except ValueError:
            shape = ()
        if not sep or not blob or not shape or min(shape) < 0:
            raise NetspecError(f"--shape takes BLOB=D0,D1,... (like data=64,1,28,28), got '{item}'")
        out[blob] = shape
    return out


def _given_files(*flags: tuple[str, str | None]) -> None:
    """Refuses an input named on the command line that is not a regular file, by its flag, before any
    work starts (the library checks again, naming the file's role)."""
    from netspec.files import checked

    for flag, path in flags:
        if path is not None:
            checked(path, flag)


@main.command()
@click.argument("source", type=click.Path(dir_okay=False))
@click.argument("target", type=click.Path(dir_okay=False))
@click.option(
    "--upgrade",
    is_flag=True,
    help="Write the current form: V1 layers, input: declarations and "
    "ceil_mode become what Caffe's upgrade_net_proto_text would write.",
)
@user_errors
def convert(source: str, target: str, upgrade: bool) -> None:
    """Convert a net between prototxt and YAML (by the file names) without loss."""
    from netspec.netfile import read_net, to_yaml
    from netspec.spec.emit import to_prototxt
    from netspec.spec.load import YAML, spec_format
    from netspec.spec.upgrade import upgrade_net

    spec = read_net(source)
    fmt = spec_format(target)
    net = spec.message
    if upgrade:
        upgraded, _ = upgrade_net(net, spec.smap)
        if net.HasField("solver"):
            upgraded.solver.CopyFrom(net.solver)
        net = upgraded
    text = to_yaml(net) if fmt == YAML else to_prototxt(net)
    if fmt == YAML:
        from netspec.editor_schema import installed_schema, modeline

        text = modeline(os.path.relpath(installed_schema(), Path(target).resolve().parent)) + text
    try:
        Path(target).write_text(text, encoding="utf-8")
    except OSError as e:
        raise NetspecError(f"cannot write '{target}': {e.strerror}") from None
    click.echo(f"wrote {target} ({len(net.layer) + len(net.layers)} layers)")


@main.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the schema here (default: print it).")
@user_errors
def schema(output: str | None) -> None:
    """Print the JSON Schema of YAML specs, for editor completion and checking."""
    from netspec.editor_schema import schema_text

    text = schema_text()
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        Path(output).write_text(text, encoding="utf-8")
    except OSError as e:
        raise NetspecError(f"cannot write '{output}': {e.strerror}") from None
    click.echo(f"wrote {output}")


@main.command()
@click.argument("type_name", required=False)
@user_errors
def layers(type_name: str | None) -> None:
    """List the layer types, or describe one with its parameters and defaults."""
    from netspec.layers import all_types, get
    from netspec.layers.docs import describe, listing

    click.echo(describe(get(type_name)) if type_name else listing(all_types()))


_device_option = click.option(
    "--device", default=None, help="cpu, cuda or cuda:N (default: CUDA if present, else CPU)."
)


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--solver", "solver_file", type=click.Path(dir_okay=False), help="Solver settings from this file.")
@click.option(
    "--weights",
    type=click.Path(dir_okay=False),
    help="Initialise from these weights, a snapshot (.pt) or a .caffemodel (fine-tuning).",
)
@click.option("--resume", type=click.Path(dir_okay=False), help="Continue from this snapshot.")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a solver field (solver.base_lr=0.01) or a layer field (conv1.convolution_param."
    "num_output=32); repeatable.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Where snapshots, metrics, the log and HDF5Output files go (default: runs/<spec name>).",
)
@_device_option
@click.option("--amp", type=click.Choice(["bf16", "fp16"]), help="Mixed precision for the forward pass.")
@click.option("--compile", "use_compile", is_flag=True, help="Run the forward pass through torch.compile.")
@click.option(
    "--overfit",
    type=int,
    metavar="N",
    help="Train on the first N examples and report whether the net fits them (100% training accuracy).",
)
@click.option("--allow-missing", is_flag=True, help="With --weights, start mismatched layers from their fillers.")
@click.option("--quiet", is_flag=True, help="Print only the summary.")
@user_errors
def train(
    spec: str,
    solver_file: str | None,
    weights: str | None,
    resume: str | None,
    overrides: tuple[str, ...],
    out: str | None,
    device: str | None,
    amp: str | None,
    use_compile: bool,
    overfit: int | None,
    allow_missing: bool,
    quiet: bool,
) -> None:
    """Train a net: a YAML spec with a solver section, or a Caffe solver prototxt."""
    from netspec.train import commands

    _given_files(("--solver", solver_file), ("--weights", weights), ("--resume", resume))
    summary = commands.train(
        spec,
        solver_file=solver_file,
        weights=weights,
        resume=resume,
        overrides=overrides,
        out=out,
        device=device,
        amp=amp,
        compile=use_compile,
        overfit=overfit,
        allow_missing=allow_missing,
        quiet=quiet,
    )
    if summary.get("weights"):
        click.echo(f"weights: {summary['weights']}")
    if "overfit" in summary:
        result = summary["overfit"]
        ok = result["accuracy"] >= 1.0
        why = {
            "fitted": "stopped as soon as they were fitted",
            "max_iter": "stopped at max_iter",
            "passes": f"stopped after the limit of {commands.OVERFIT_PASSES} passes",
            "interrupted": "stopped by Ctrl-C",
        }
        click.echo(
            f"overfit check: {100 * result['accuracy']:.1f}% training accuracy on {result['examples']} examples "
            f"after {result['iterations']} iterations ({result['passes']:.3g} passes; "
            f"{why[result['stopped']]}) "
            + (
                "- the net can fit them"
                if ok
                else "- a net that cannot fit a handful of examples usually has a bug (labels, loss, learning rate, "
                "or too few iterations)"
            )
        )
        if not ok:
            sys.exit(130 if result["stopped"] == "interrupted" else 1)
        return
    if summary["stopped"] == "interrupted":
        click.echo(f"stopped at iteration {summary['iterations']}")
    if summary["best_iteration"] is not None:
        when = f" (the best weights, from iteration {summary['best_iteration']})"
    elif summary["tested_at"] is not None and summary["tested_at"] != summary["iterations"]:
        when = f" (the last one, at iteration {summary['tested_at']})"
    else:
        when = ""
    if summary["stopped"] == "interrupted" and not summary["test"]:
        click.echo("test: none was run")
    for i, outputs in enumerate(summary["test"]):
        label = "test" if len(summary["test"]) == 1 else f"test #{i}"
        click.echo(f"{label}{when}: " + ", ".join(f"{k} = {v:.4f}" for k, v in outputs.items()))
    if summary["snapshot"]:
        click.echo(f"snapshot: {summary['snapshot']}")
    if summary["best"]:
        click.echo(f"best:     {summary['best']}")
    if summary["metrics"]:
        click.echo(f"metrics:  {summary['metrics']}  (netspec plot {summary['metrics']} -o curves.png)")
    if summary["stopped"] == "interrupted":
        sys.exit(130)  # as a shell reports a run that Ctrl-C stopped


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option(
    "--sweep",
    "sweep_file",
    type=click.Path(dir_okay=False),
    help="The sweep settings in a file of their own (YAML or prototxt), e.g. for a Caffe prototxt net.",
)
@click.option(
    "--solver",
    "solver_file",
    type=click.Path(dir_okay=False),
    help="Train the net with the settings of this Caffe solver file.",
)
@click.option("--trials", type=int, help="How many trials to finish (default: the sweep's `trials`).")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="The sweep's folder: a folder per trial, trials.csv, best.yaml (default: runs/<spec name>-sweep).",
)
@click.option("--resume", is_flag=True, help="Continue the sweep in --out, running only the trials not finished.")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Set a field in every trial, as `netspec train --set` does; repeatable.",
)
@_device_option
@user_errors
def sweep(
    spec: str,
    sweep_file: str | None,
    solver_file: str | None,
    trials: int | None,
    out: str | None,
    resume: bool,
    overrides: tuple[str, ...],
    device: str | None,
) -> None:
    """Search hyperparameters: train a trial per sampled setting and keep the best (needs Optuna)."""
    from netspec.train.sweep import sweep as run_sweep

    try:
        summary = run_sweep(
            spec,
            out=out,
            trials=trials,
            resume=resume,
            solver_file=solver_file,
            sweep_file=sweep_file,
            overrides=overrides,
            device=device,
            echo=click.echo,
        )
    except KeyboardInterrupt:
        click.echo("sweep interrupted; `netspec sweep ... --resume` continues it", err=True)
        sys.exit(130)
    best = summary["best"]
    click.echo(
        f"{summary['trials']} trial(s) finished, {summary['complete']} complete; trials: {summary['out']}/trials.csv"
    )
    if best is None:
        click.echo("no trial completed: see each trial's error.txt and train.log")
        sys.exit(1)
    settings = ", ".join(f"{k}={v}" for k, v in best["params"].items())
    click.echo(f"best: trial {best['trial']}, {best['metric']} = {best['value']:.5g} ({settings})")
    click.echo(f"spec: {best['spec']}  (netspec train {best['spec']})")


@main.command(name="test")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option(
    "--weights", type=click.Path(dir_okay=False), help="The weights to test: a snapshot (.pt) or a .caffemodel."
)
@click.option("--iterations", type=int, help="Batches to run (default: one pass over the test data).")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Where HDF5Output layers write their files (default: the current folder).",
)
@_device_option
@user_errors
def test_command(spec: str, weights: str | None, iterations: int | None, out: str | None, device: str | None) -> None:
    """Run a net's TEST phase over its data and print the mean of each output."""
    from netspec.train.commands import evaluate

    _given_files(("--weights", weights))
    means = evaluate(spec, weights, iterations, device, out=out)
    n = int(means.pop("(iterations)"))
    loss = means.pop("(loss)", None)
    for name, value in means.items():
        click.echo(f"{name} = {value:.6g}")
    if loss is not None:
        click.echo(f"total loss = {loss:.6g} (the weighted sum of the loss outputs)")
    click.echo(f"({n} batch{'' if n == 1 else 'es'})")


@main.command(name="time")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--iterations", type=int, default=50, show_default=True)
@click.option(
    "--phase",
    type=click.Choice(["TRAIN", "TEST"], case_sensitive=False),
    default="TRAIN",
    show_default=True,
    help="TRAIN times forward and backward; TEST only forward.",
)
@_device_option
@user_errors
def time_command(spec: str, iterations: int, phase: str, device: str | None) -> None:
    """Time every layer's forward and backward pass (milliseconds per iteration), as Caffe's `time`."""
    from netspec.train.commands import benchmark

    rows = benchmark(spec, iterations, phase.upper(), device)
    width = max(len(r[0]) for r in rows) if rows else 5
    click.echo(f"{'layer':<{width}}  {'type':<16} {'forward ms':>10} {'backward ms':>11}")
    for name, type_name, f, b in rows:
        click.echo(f"{name:<{width}}  {type_name:<16} {f:>10.3f} {b:>11.3f}")
    total_f, total_b = sum(r[2] for r in rows), sum(r[3] for r in rows)
    click.echo(
        f"{'total':<{width}}  {'':<16} {total_f:>10.3f} {total_b:>11.3f}   "
        f"forward + backward: {total_f + total_b:.3f} ms ({iterations} iterations)"
    )


@main.command()
@click.argument("metrics", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="curves.png or curves.svg")
@click.option("--log", is_flag=True, help="Draw the losses on a logarithmic axis.")
@user_errors
def plot(metrics: str, output: str, log: bool) -> None:
    """Draw the training curves of a metrics CSV, or a sweep folder's metric per trial and best so far."""
    from netspec.train.plot import plot as draw

    draw(metrics, output, log=log)
    click.echo(f"wrote {output}")


@main.command(name="draw")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="net.svg, net.png, net.dot for Graphviz, or net.html to explore in a browser; the suffix picks the format.",
)
@_phase_option
@_stage_option
@click.option(
    "--rankdir",
    type=click.Choice(["TB", "LR", "BT", "RL"], case_sensitive=False),
    default="TB",
    show_default=True,
    help="The way the data flows: top to bottom, left to right, or the reverse.",
)
@click.option(
    "--shape",
    "shapes",
    multiple=True,
    metavar="BLOB=D0,D1,...",
    help="The shape of a data layer's top, instead of reading its source (repeatable).",
)
@user_errors
def draw_command(
    spec: str, output: str, phase: str | None, stage: tuple[str, ...], rankdir: str, shapes: tuple[str, ...]
) -> None:
    """Draw a net's layer graph, each edge labelled with its blob's shape."""
    from netspec.draw import draw

    draw(spec, output, phase, _stages(stage), rankdir.upper(), _parse_shapes(shapes))
    click.echo(f"wrote {output}")


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option(
    "--weights",
    type=click.Path(dir_okay=False),
    help="Weights to export: a snapshot (.pt) or a .caffemodel (default: the fillers').",
)
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False), help="The .onnx file to write.")
@click.option(
    "--caffemodel",
    "caffemodel",
    type=click.Path(dir_okay=False),
    help="A .caffemodel to write, with its deploy prototxt beside it (NAME_deploy.prototxt).",
)
@click.option("--opset", type=int, default=18, show_default=True)
@click.option("--batch", default="dynamic", show_default=True, help="'dynamic', or a fixed batch size.")
@click.option("--labels", type=click.Path(dir_okay=False), help="Class names, one per line, recorded in the model.")
@click.option("--no-verify", is_flag=True, help="Skip the onnxruntime-against-PyTorch comparison.")
@user_errors
def export(
    spec: str,
    weights: str | None,
    onnx_path: str | None,
    caffemodel: str | None,
    opset: int,
    batch: str,
    labels: str | None,
    no_verify: bool,
) -> None:
    """Export the deploy graph (TEST phase, without losses) to ONNX, verified against PyTorch, or as a
    .caffemodel with its deploy prototxt."""
    from netspec.deploy.commands import compiled
    from netspec.deploy.commands import export as run_export

    _given_files(("--weights", weights), ("--labels", labels))
    if not onnx_path and not caffemodel:
        raise NetspecError("say what to write: --onnx FILE.onnx and/or --caffemodel FILE.caffemodel")
    if caffemodel:
        from netspec.deploy.caffe import export_caffemodel

        for line in export_caffemodel(compiled(spec, weights), caffemodel).lines():
            click.echo(line)
    if onnx_path:
        for line in run_export(spec, weights, onnx_path, opset, batch, labels, not no_verify).lines():
            click.echo(line)
    if weights is None:
        click.echo(UNTRAINED, err=True)


@main.command("import")
@click.argument("prototxt", type=click.Path(dir_okay=False))
@click.argument("caffemodel", type=click.Path(dir_okay=False))
@click.option(
    "-o",
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="The folder to write NAME.yaml, NAME.pt and NAME.onnx to.",
)
@_phase_option
@click.option(
    "--shape",
    "shapes",
    multiple=True,
    metavar="BLOB=D0,D1,...",
    help="The shape of a data layer's top, instead of reading its source (repeatable).",
)
@click.option("--no-verify", is_flag=True, help="Skip the onnxruntime-against-PyTorch comparison.")
@user_errors
def import_command(
    prototxt: str, caffemodel: str, out_dir: str, phase: str | None, shapes: tuple[str, ...], no_verify: bool
) -> None:
    """Turn a Caffe model (prototxt + .caffemodel) into a netspec spec (YAML), weights and a verified ONNX file."""
    from netspec.deploy.caffe import import_caffe

    for line in import_caffe(
        prototxt, caffemodel, out_dir, (phase or "TEST").upper(), _parse_shapes(shapes), not no_verify
    ):
        click.echo(line)


@main.command()
@click.argument("model", type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to listen on.")
@click.option("--port", type=int, default=8000, show_default=True, help="0 picks a free port.")
@click.option("--threads", type=int, help="onnxruntime threads per run (default: a worker's cores / instances).")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Server processes on the port (default: one per physical core this process may use).",
)
@click.option(
    "--instances",
    type=click.IntRange(min=1),
    help="onnxruntime runs at once per worker (default: its share of the cores, at least 2).",
)
@click.option(
    "--name", help="The model's name in the URLs (default: the file name without .onnx; not for a repository)."
)
@click.option("--max-body-mb", type=int, default=64, show_default=True, help="The largest request accepted.")
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    help="Open connections per worker at most (default: 1000, fewer if the open-file limit is lower).",
)
@click.option(
    "--max-batch-size",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Rows per merged run (1: no dynamic batching).",
)
@click.option(
    "--max-queue-delay-us",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="How long a request may wait for others to batch with (0: never wait on purpose).",
)
@click.option(
    "--max-queue-size",
    type=click.IntRange(min=1),
    default=1024,
    show_default=True,
    help="Requests waiting at most per model version; beyond, 503.",
)
@click.option(
    "--queue-timeout-ms",
    type=click.IntRange(min=1),
    help="How long a request may wait in the queue, from its arrival; beyond, 503 (default: no limit).",
)
@click.option(
    "--grpc-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Also serve the protocol over gRPC on this port (Triton's is 8001; 0: a free one). Off unless given.",
)
@user_errors
def serve(
    model: str,
    host: str,
    port: int,
    threads: int | None,
    workers: int | None,
    instances: int | None,
    name: str | None,
    max_body_mb: int,
    max_connections: int | None,
    max_batch_size: int,
    max_queue_delay_us: int,
    max_queue_size: int,
    queue_timeout_ms: int | None,
    grpc_port: int | None,
) -> None:
    """Serve an ONNX model, or every model of a repository folder (Triton's layout: NAME/VERSION/model.onnx
    or NAME.onnx), over HTTP, and gRPC with --grpc-port, with the Open Inference Protocol (KServe V2)."""
    from netspec.deploy.serve import serve as run_server

    def started(bound_host: str, bound_port: int, bound_grpc: int | None = None) -> None:
        grpc_text = f" and gRPC {bound_host}:{bound_grpc}" if bound_grpc is not None else ""
        if Path(model).is_dir():
            click.echo(
                f"serving the models in {model} on http://{bound_host}:{bound_port}{grpc_text} (POST "
                "/v2/models/NAME/infer; POST /v2/repository/index lists them; GET /metrics); Ctrl-C or "
                "SIGTERM stops",
                err=True,
            )
            return
        model_name = name or Path(model).stem
        click.echo(
            f"serving {model} as '{model_name}' on http://{bound_host}:{bound_port}{grpc_text} "
            f"(POST /v2/models/{model_name}/infer; GET /metrics); Ctrl-C or SIGTERM stops",
            err=True,
        )

    run_server(
        model,
        host,
        port,
        threads,
        name,
        instances,
        max_body_mb,
        started,
        max_connections,
        max_batch_size,
        max_queue_delay_us,
        max_queue_size,
        workers,
        queue_timeout_ms,
        grpc_port,
    )


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--weights", type=click.Path(dir_okay=False), help="Weights for a spec (not for .onnx models).")
@click.option(
    "--input",
    "input_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="A .npy array, an image or a .csv row.",
)
@click.option("--top-k", type=int, default=5, show_default=True)
@click.option("--labels", type=click.Path(dir_okay=False), help="Class names, one per line.")
@user_errors
def predict(model: str, weights: str | None, input_path: str, top_k: int, labels: str | None) -> None:
    """Run inputs (an image, every CSV row, a .npy batch) through a spec or an ONNX model and print the top
    classes, or the output values when they are not class scores."""
    from netspec.deploy.commands import predict as run_predict

    _given_files(("--weights", weights), ("--input", input_path), ("--labels", labels))
    result = run_predict(model, weights, input_path, top_k, labels)
    if weights is None and not model.endswith(".onnx"):
        click.echo(UNTRAINED, err=True)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    if result.values is not None:  # not class scores: the values themselves, a row per record
        click.echo(f"{result.output}:")
        for row in result.values.reshape(result.values.shape[0], -1):
            click.echo("  " + " ".join(f"{v:.6g}" for v in row))
        return
    for n, rows in enumerate(result.classes or []):
        click.echo(f"{result.output}:" if len(result.classes or []) == 1 else f"{result.output} (record {n + 1}):")
        for rank, (index, label, score) in enumerate(rows, 1):
            click.echo(f"  {rank}. {label:<20} {score:<10.4g}" + (f"  (class {index})" if label != str(index) else ""))


if __name__ == "__main__":
    main()
