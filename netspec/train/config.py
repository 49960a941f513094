"""Solver settings and the nets they train, from a YAML spec with a `solver:` section or a Caffe solver
prototxt naming its nets; `--set key=value` overrides; every setting checked before training starts."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from netspec._proto import netspec_pb2 as pb
from netspec.errors import SolverError, SourceLoc, SpecFieldError, SpecSyntaxError, did_you_mean, shown
from netspec.netfile import net_from_tree, read_net
from netspec.spec.build import BuildOptions, SourceMap, fill_message, repeated_items, scalar_value
from netspec.spec.load import (
    PROTOTXT,
    SpecFile,
    is_solver,
    parse_message,
    read_tree,
)
from netspec.spec.tree import Node, Scalar
from netspec.spec.yamltree import parse_yaml

SOLVER_TYPES = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam", "AdamW", "Adamax", "NAdam")
LR_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid", "cosine")
_OLD_TYPES = {
    pb.SolverParameter.SGD: "SGD",
    pb.SolverParameter.NESTEROV: "Nesterov",
    pb.SolverParameter.ADAGRAD: "AdaGrad",
    pb.SolverParameter.RMSPROP: "RMSProp",
    pb.SolverParameter.ADADELTA: "AdaDelta",
    pb.SolverParameter.ADAM: "Adam",
}


@dataclass
class NetSource:
    """One net of a solver: a spec and the state (stages, level) to build it in."""

    spec: SpecFile
    stages: tuple[str, ...] = ()
    level: int | None = None


@dataclass
class SolverConfig:
    """Checked solver settings with their nets: one train net and any number of test nets."""

    path: str
    param: pb.SolverParameter
    smap: SourceMap
    train: NetSource
    tests: list[NetSource] = field(default_factory=list)
    test_iters: list[int | None] = field(default_factory=list)  # None: one pass over the test data

    def loc(self, name: str) -> SourceLoc:
        return self.smap.find((name,))


def load_config(path: str, overrides: tuple[str, ...] = ()) -> SolverConfig:
    """Reads a YAML net with a `solver:` section, or a Caffe solver prototxt, and applies overrides."""
    fmt, tree = read_tree(path)
    if fmt == PROTOTXT and is_solver(tree):
        param = pb.SolverParameter()
        smap = parse_message(tree, param, path, fmt)
        config = _from_solver_file(path, param, smap)
    else:
        spec = net_from_tree(tree, path, fmt)
        net = spec.message
        if not net.HasField("solver"):
            raise SolverError(
                f"'{path}' is a net without solver settings",
                loc=SourceLoc(path, 1),
                hint="add a `solver:` section (base_lr, lr_policy, max_iter, ...) or give --solver FILE",
            )
        param = pb.SolverParameter()
        param.CopyFrom(net.solver)
        smap = _sub_map(spec.smap, ("solver",))
        config = SolverConfig(path, param, smap, NetSource(spec, tuple(param.train_state.stage)))
        _yaml_tests(config, spec)
    apply_overrides(config, overrides)
    check_solver(config)
    return config


def with_solver_file(net_path: str, solver_path: str, overrides: tuple[str, ...] = ()) -> SolverConfig:
    """A net trained with the settings of a separate solver file (`netspec train NET --solver FILE`)."""
    config = load_config(solver_path, ())
    spec = read_net(net_path)
    config.train = NetSource(spec, tuple(config.param.train_state.stage))
    n = max(1, len(config.param.test_iter)) if config.param.test_interval or config.param.test_iter else 0
    config.tests = [NetSource(spec, tuple(_state(config.param, i).stage)) for i in range(n)]
    config.test_iters = [config.param.test_iter[i] if i < len(config.param.test_iter) else None for i in range(n)]
    apply_overrides(config, overrides)
    check_solver(config)
    return config


def _state(param: pb.SolverParameter, i: int) -> pb.NetState:
    return param.test_state[i] if i < len(param.test_state) else pb.NetState()


def _yaml_tests(config: SolverConfig, spec: SpecFile) -> None:
    """A YAML spec's own net is tested in the TEST phase, once per test_iter entry (or once, over the
    whole test data, when testing is on but test_iter is not given)."""
    p = config.param
    n = len(p.test_iter) or (1 if p.test_interval else 0)
    config.tests = [
        NetSource(spec, tuple(_state(p, i).stage), _state(p, i).level if i < len(p.test_state) else None)
        for i in range(n)
    ]
    config.test_iters = [p.test_iter[i] if i < len(p.test_iter) else None for i in range(n)]


def _net_file(name: str, solver_path: str, smap: SourceMap, field_name: str) -> SpecFile:
    """A net named by a solver: from the working directory (as Caffe), else beside the solver."""
    for candidate in (Path(name), Path(solver_path).parent / name):
        if candidate.is_file():
            return read_net(str(candidate))
    raise SolverError(
        f"{field_name} '{name}' does not exist",
        loc=smap.find((field_name,)),
        hint="paths are read from the working directory, then from the solver's folder",
    )


def _inline(param: pb.NetParameter, path: str, smap: SourceMap, prefix: tuple[str | int, ...]) -> SpecFile:
    return SpecFile(path, PROTOTXT, param, _sub_map(smap, prefix))


def _sub_map(smap: SourceMap, prefix: tuple[str | int, ...]) -> SourceMap:
    """The locations under `prefix`, keyed by their path below it (a message nested in another file's)."""
    out = SourceMap(smap.file)
    n = len(prefix)
    for p, loc in smap.locs.items():
        if p[:n] == prefix:
            out.locs[p[n:]] = loc
    return out


def _from_solver_file(path: str, p: pb.SolverParameter, smap: SourceMap) -> SolverConfig:
    """Caffe's rules: exactly one train net (train_net_param, train_net, net_param or net); test nets from
    test_net_param, then test_net, then net/net_param for the remaining test_iter entries."""
    given = [
        f
        for f in ("train_net_param", "train_net", "net_param", "net")
        if (p.HasField(f) if f.endswith("param") else bool(getattr(p, f)))
    ]
    if not given:
        raise SolverError(
            "the solver names no net: give net, net_param, train_net or train_net_param", loc=SourceLoc(path, 1)
        )
    if len(given) > 1:
        raise SolverError(
            f"the solver names its train net more than once ({', '.join(given)}); give one", loc=smap.find((given[1],))
        )
    source = given[0]
    if source.endswith("param"):
        train = _inline(getattr(p, source), path, smap, (source,))
    else:
        train = _net_file(getattr(p, source), path, smap, source)
    tests: list[SpecFile] = [_inline(n, path, smap, ("test_net_param", i)) for i, n in enumerate(p.test_net_param)]
    tests += [_net_file(name, path, smap, "test_net") for name in p.test_net]
    generic = source in ("net", "net_param")
    if generic:
        tests += [train] * max(0, len(p.test_iter) - len(tests))
    if len(p.test_iter) != len(tests):
        raise SolverError(
            f"{len(tests)} test net(s) but {len(p.test_iter)} test_iter value(s); give one test_iter per test net",
            loc=smap.find(("test_iter",)) if p.test_iter else SourceLoc(path, 1),
        )
    if p.test_state and len(p.test_state) != len(tests):
        raise SolverError(
            f"{len(p.test_state)} test_state entries for {len(tests)} test net(s)", loc=smap.find(("test_state",))
        )
    config = SolverConfig(
        path,
        p,
        smap,
        NetSource(train, tuple(p.train_state.stage), p.train_state.level if p.HasField("train_state") else None),
    )
    config.tests = [
        NetSource(spec, tuple(_state(p, i).stage), _state(p, i).level if i < len(p.test_state) else None)
        for i, spec in enumerate(tests)
    ]
    config.test_iters = list(p.test_iter)
    return config


# ---- --set key=value ---------------------------------------------------------------------------------


def apply_overrides(config: SolverConfig, overrides: tuple[str, ...]) -> None:
    """`solver.FIELD=VALUE` sets a solver field; `LAYER.FIELD.PATH=VALUE` sets a field of the named layer
    in every net of the solver. VALUE is written as in YAML (a number, a word, [a, b] for lists)."""
    for i, item in enumerate(overrides):
        key, sep, value = item.partition("=")
        loc = SourceLoc(f"--set #{i + 1}", 1)
        if not sep or "." not in key:
            raise SpecFieldError(
                f"--set takes KEY=VALUE with KEY like solver.base_lr or conv1.convolution_param."
                f"num_output; got '{item}'",
                loc=loc,
            )
        head, *path = key.split(".")
        tree = _set_value(value, loc)
        if head == "solver":
            _set_path(config.param, path, tree, loc)
            continue
        specs = {id(s.spec): s.spec for s in [config.train, *config.tests]}.values()
        found = False
        for spec in specs:
            for layer in list(spec.message.layer):
                if layer.name == head:
                    _set_path(layer, path, tree, loc)
                    found = True
        if not found:
            names = [layer.name for s in specs for layer in s.message.layer]
            raise SpecFieldError(
                f"--set names layer '{head}', which the net does not have",
                loc=loc,
                hint=did_you_mean(head, names) or "use solver.FIELD for solver settings",
            )


def _set_value(value: str, loc: SourceLoc) -> Node:
    """VALUE of `--set KEY=VALUE`, read as the value of a YAML key (with YAML's limits: plain data, no
    deeper nesting than a spec's); exactly one value, so that no line break can smuggle in more."""
    prefix = "v: "
    try:
        items = parse_yaml(prefix + value, loc.file).items
    except SpecSyntaxError as e:
        if e.loc is not None and e.loc.line == 1 and e.loc.col:  # a column of VALUE, not of the wrapper
            e.loc = SourceLoc(e.loc.file, 1, max(1, e.loc.col - len(prefix)))
        e.hint = "VALUE is written as in YAML: a number, a word, or [a, b] for a list"
        raise
    if len(items) != 1:
        raise SpecFieldError(f"--set takes one value after '=', got {shown(value)}", loc=loc)
    return items[0][2]


def _set_path(msg: Message, path: list[str], value: Node, loc: SourceLoc) -> None:
    for name in path[:-1]:
        fd = msg.DESCRIPTOR.fields_by_name.get(name)
        if fd is None or fd.type != FieldDescriptor.TYPE_MESSAGE or fd.is_repeated:
            raise SpecFieldError(
                f"'{name}' is not a message field of {msg.DESCRIPTOR.name}",
                loc=loc,
                hint=did_you_mean(name, msg.DESCRIPTOR.fields_by_name),
            )
        msg = getattr(msg, name)
    last = path[-1]
    fd = msg.DESCRIPTOR.fields_by_name.get(last)
    if fd is None:
        raise SpecFieldError(
            f"unknown field '{last}' in {msg.DESCRIPTOR.name}",
            loc=loc,
            hint=did_you_mean(last, msg.DESCRIPTOR.fields_by_name),
        )
    opts, smap = BuildOptions(quotes_mark_strings=False), SourceMap(loc.file)
    node = value if not isinstance(value, Scalar) else Scalar(value.text, value.quoted, loc)
    if fd.is_repeated:
        msg.ClearField(last)
        for item in repeated_items(fd, node):
            if fd.type == FieldDescriptor.TYPE_MESSAGE:
                fill_message(getattr(msg, last).add(), fd, item, smap, opts, ())
            else:
                getattr(msg, last).append(scalar_value(fd, item, opts))
    elif fd.type == FieldDescriptor.TYPE_MESSAGE:
        msg.ClearField(last)
        fill_message(getattr(msg, last), fd, node, smap, opts, ())
    else:
        setattr(msg, last, scalar_value(fd, node, opts))


# ---- checks ------------------------------------------------------------------------------------------


def check_solver(config: SolverConfig) -> None:
    """Caffe's rules on solver settings, as located errors, before anything is built."""
    p = config.param

    def fail(field_name: str, msg: str, hint: str | None = None) -> None:
        raise SolverError(msg, loc=config.loc(field_name), hint=hint)

    for fd, value in p.ListFields():
        if fd.type in (fd.TYPE_FLOAT, fd.TYPE_DOUBLE) and not fd.is_repeated and not math.isfinite(value):
            fail(fd.name, f"{fd.name} must be a finite number, got {value}")
    if not p.HasField("type") and p.HasField("solver_type"):
        p.type = _OLD_TYPES[p.solver_type]
    if p.type not in SOLVER_TYPES:
        fail(
            "type",
            f"unknown solver type '{p.type}'; netspec has {', '.join(SOLVER_TYPES)}",
            did_you_mean(p.type, SOLVER_TYPES),
        )
    if not p.lr_policy:
        p.lr_policy = "fixed"
    if p.lr_policy not in LR_POLICIES:
        fail(
            "lr_policy",
            f"unknown lr_policy '{p.lr_policy}'; netspec has {', '.join(LR_POLICIES)}",
            did_you_mean(p.lr_policy, LR_POLICIES),
        )
    if not p.HasField("base_lr"):
        fail("base_lr", "base_lr is not set", "e.g. base_lr: 0.01")
    if p.max_iter <= 0 and p.max_epoch <= 0:
        fail("max_iter", "give the length of training: max_iter (iterations) or max_epoch (passes over the data)")
    if p.max_iter > 0 and p.max_epoch > 0:
        fail("max_epoch", "give max_iter or max_epoch, not both")
    if p.lr_policy == "step" and p.stepsize <= 0:
        fail("stepsize", "lr_policy step needs a positive stepsize")
    if p.lr_policy == "multistep" and not p.stepvalue:
        fail("lr_policy", "lr_policy multistep needs stepvalue entries")
    if list(p.stepvalue) != sorted(p.stepvalue):
        fail("stepvalue", f"stepvalue must increase, got {list(p.stepvalue)}")
    if p.regularization_type not in ("L1", "L2"):
        fail("regularization_type", f"regularization_type must be L1 or L2, got '{p.regularization_type}'")
    if p.type in ("AdaGrad", "RMSProp") and p.momentum != 0:
        fail("momentum", f"{p.type} takes no momentum (Caffe requires momentum 0 for it)")
    if p.type == "RMSProp" and not 0 <= p.rms_decay < 1:
        fail("rms_decay", f"rms_decay must be in [0, 1), got {p.rms_decay}")
    for name in ("iter_size", "average_loss"):
        if getattr(p, name) < 1:
            fail(name, f"{name} must be at least 1, got {getattr(p, name)}")
    for name in ("test_interval", "display", "snapshot", "warmup_iter"):
        if getattr(p, name) < 0:
            fail(name, f"{name} must not be negative, got {getattr(p, name)}")
    if any(n <= 0 for n in p.test_iter):
        fail("test_iter", f"test_iter values must be positive, got {list(p.test_iter)}")
    if config.tests and p.test_interval <= 0:
        fail("test_interval", "test nets are given, so test_interval must be positive")
    if p.HasField("early_stopping"):
        es = p.early_stopping
        if not es.metric:
            config.smap.locs.setdefault(("early_stopping",), config.loc("early_stopping"))
            fail("early_stopping", "early_stopping needs a metric (a test output such as accuracy or loss)")
        if es.patience < 1:
            fail("early_stopping", "early_stopping.patience must be at least 1")
        if not config.tests:
            fail("early_stopping", "early stopping needs testing: set test_interval")
