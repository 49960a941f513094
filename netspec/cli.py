"""The `netspec` command line. Each command is a thin shell around one library call; a NetspecError
is printed as one located message with exit status 1 (`--debug` shows the traceback instead)."""

from __future__ import annotations

import functools
import json
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
            if click.get_current_context().find_root().params.get("debug"):
                raise
            click.echo(f"error: {e}" if e.loc is None and e.layer is None else str(e), err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show a traceback for errors in specs and data.")
@click.version_option(package_name="netspec")
def main(debug: bool) -> None:
    """netspec: Caffe-style network specs, checked before they run, trained with PyTorch."""


_phase_option = click.option("--phase", type=click.Choice(["TRAIN", "TEST"], case_sensitive=False),
                             help="Instantiate the net for this phase (default: the spec's state, else TEST).")
_stage_option = click.option("--stage", multiple=True,
                             help="A NetState stage for include/exclude rules (repeat, or comma-separate).")


def _stages(stage: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(s for item in stage for s in item.split(",") if s)


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@_phase_option
@_stage_option
@click.option("--level", type=int, default=None, help="The NetState level.")
@click.option("--shape", "shapes", multiple=True, metavar="BLOB=D0,D1,...",
              help="The shape of a data layer's top, instead of reading its source (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
@user_errors
def check(spec: str, phase: str | None, stage: tuple[str, ...], level: int | None, shapes: tuple[str, ...],
          as_json: bool) -> None:
    """Check a net and show every layer's shapes, parameters and MACs.

    Without --phase, layers that only the other phase includes are checked too."""
    from netspec.net import build_net
    from netspec.report import summary, table
    from netspec.spec.load import read_net

    spec_file = read_net(spec)
    fed = _parse_shapes(shapes)
    net = build_net(spec_file, phase, _stages(stage), level, fed)
    warnings = list(net.warnings)
    if phase is None and _phase_dependent(spec_file.message):
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


def _phase_dependent(net: Any) -> bool:
    layers = list(net.layer) + list(net.layers)
    return any(layer.include or layer.exclude for layer in layers)


@main.command()
@click.argument("source", type=click.Path(dir_okay=False))
@click.argument("target", type=click.Path(dir_okay=False))
@click.option("--upgrade", is_flag=True, help="Write the current form: V1 layers, input: declarations and "
              "ceil_mode become what Caffe's upgrade_net_proto_text would write.")
@user_errors
def convert(source: str, target: str, upgrade: bool) -> None:
    """Convert a net between prototxt and YAML (by the file names) without loss."""
    from netspec.spec.emit import to_prototxt, to_yaml
    from netspec.spec.load import YAML, read_net, spec_format
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
    try:
        Path(target).write_text(text, encoding="utf-8")
    except OSError as e:
        raise NetspecError(f"cannot write '{target}': {e.strerror}") from None
    click.echo(f"wrote {target} ({len(net.layer) + len(net.layers)} layers)")


@main.command()
@click.argument("type_name", required=False)
@user_errors
def layers(type_name: str | None) -> None:
    """List the layer types, or describe one with its parameters and defaults."""
    from netspec.layers import all_types, get
    from netspec.layers.docs import describe, listing

    click.echo(describe(get(type_name)) if type_name else listing(all_types()))


if __name__ == "__main__":
    main()
