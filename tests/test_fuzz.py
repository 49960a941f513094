"""The spec fuzzer as a test: mutated specs through `check`, `convert` (and a few through `time`) in-process,
each accepted or refused with one message line - never a traceback or a hang.

`NETSPEC_FUZZ_CASES=50000 python -m pytest tests/test_fuzz.py` is the long run for before a release;
`tools/fuzz.py` runs as many in worker processes and writes each defect's spec to a folder.

KNOWN_DEFECTS is the ledger of defects found but not yet fixed (empty when none are known): a known
signature does not fail the random run, and each regression spec in tests/data/fuzz/ whose signature is
in the ledger must still fail (strict), so a fix makes its entry fail until it is deleted. A fixed defect's
regression spec keeps its signature after the expected outcome, as the record of what it guards against.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from google.protobuf.message import Message

from netspec._proto import netspec_pb2 as pb
from netspec.errors import NetspecError
from netspec.spec.load import parse_message, parse_tree
from tests.conftest import DATA
from tests.fuzz_specs import Case, Generator, Seed, load_seeds, memory_limit, run_case, to_prototxt, to_yaml

CASES = int(os.environ.get("NETSPEC_FUZZ_CASES", "1000"))
FUZZ = DATA / "fuzz"

# signature -> owner: what; an entry is deleted when its fix lands (see the module docstring).
KNOWN_DEFECTS: dict[str, str] = {}


def _report(unknown: dict[str, tuple[Case, object]]) -> str:
    return "\n\n".join(
        f"{sig}\n  {case.how}\n{case.text[:2000]}\n{getattr(d, 'detail', '')[-3000:]}"
        for sig, (case, d) in unknown.items()
    )


def test_fuzzed_specs_are_accepted_or_refused_with_one_line(tmp_path: Path) -> None:
    gen = Generator(seed=0)
    rng = random.Random(0)
    unknown: dict[str, tuple[Case, object]] = {}
    accepted = 0
    with memory_limit(2048):
        for i in range(CASES):
            case = gen.case(i)
            outcome = run_case(case, tmp_path, timeout=20.0, time_fraction=0.02, rng=rng)
            accepted += outcome.accepted
            for d in outcome.defects:
                if not any(_same(d.signature, known) for known in KNOWN_DEFECTS):
                    unknown.setdefault(d.signature, (case, d))
    assert not unknown, _report(unknown)
    # The cases reach past the parser: a fuzzer whose specs were all refused would test little.
    assert accepted >= CASES // 10


def _seed_message(seed: Seed) -> Message | None:
    """What netspec reads from a seed (for a solver's net_param seed, that net), or None if it refuses it."""
    fmt = "prototxt" if ".prototxt" in seed.name else "yaml"
    solver = seed.desc.name == "SolverParameter" or seed.name.endswith(":net_param")
    msg = pb.SolverParameter() if solver else pb.NetParameter()
    try:
        parse_message(parse_tree(seed.text, seed.name, fmt), msg, seed.name, fmt)
    except NetspecError:
        return None
    return msg.net_param if seed.name.endswith(":net_param") else msg


@pytest.mark.parametrize(
    "seed", [s for s in load_seeds() if s.tree is not None and _seed_message(s) is not None], ids=lambda s: s.name
)
def test_the_fuzzer_writes_its_seeds_back_unchanged(seed: Seed) -> None:
    """The mutations start from the seeds as netspec reads them: the tree written back in the seed's own
    format is the same message. (Across formats it need not be: YAML fills in tops and bottoms.)"""
    fmt = "prototxt" if ".prototxt" in seed.name else "yaml"
    assert seed.tree is not None
    text = (to_prototxt if fmt == "prototxt" else to_yaml)(seed.tree)
    want = _seed_message(seed)
    assert want is not None
    got = type(want)()
    parse_message(parse_tree(text, seed.name, fmt), got, seed.name, fmt)
    assert got == want, text


def _regressions() -> list[Path]:
    return sorted(p for p in FUZZ.iterdir() if p.suffix in (".prototxt", ".yaml"))


def _expectation(path: Path) -> tuple[str, str]:
    """The first line of a regression spec: `# expect: accepted|refused|either [| signature]` (either: the
    fix may accept or refuse it, in one line), then `#` and why."""
    first = path.read_bytes().split(b"\n", 1)[0].decode("utf-8", "replace")
    assert first.startswith("# expect: "), f"{path.name} does not start with '# expect: ...'"
    outcome, _, signature = first.removeprefix("# expect: ").partition(" | ")
    return outcome.strip(), signature.strip()


@pytest.mark.parametrize("path", _regressions(), ids=lambda p: p.name)
def test_fuzz_regression(path: Path, tmp_path: Path) -> None:
    outcome, signature = _expectation(path)
    if signature in KNOWN_DEFECTS:
        pytest.xfail(KNOWN_DEFECTS[signature])  # and strict: see test_known_defects_still_fail
    case = Case(path.name, path.read_bytes().decode("utf-8", "surrogateescape"), "regression")
    with memory_limit(2048):
        result = run_case(case, tmp_path, timeout=30.0, time_fraction=1.0, rng=random.Random(0), train_fraction=1.0)
    assert result.defects == []
    if outcome != "either":
        assert result.accepted == (outcome == "accepted"), outcome


def _same(a: str, b: str) -> bool:
    """Whether two signatures are one defect: a hang and a MemoryError in one frame are (which of them
    comes first depends on the time and memory limits)."""
    unbounded = ("Hang in ", "MemoryError in ")
    return a == b or (a.startswith(unbounded) and b.startswith(unbounded) and a.split(" in ")[1] == b.split(" in ")[1])


def test_known_defects_still_fail(tmp_path: Path) -> None:
    """The ledger is strict: every entry has a regression spec that still shows it, so an entry whose
    defect is fixed fails here until it is deleted."""
    fixed = []
    for signature in KNOWN_DEFECTS:
        repros = [p for p in _regressions() if _expectation(p)[1] == signature]
        assert repros, f"no regression spec in tests/data/fuzz/ for known defect {signature!r}"
        for path in repros:
            case = Case(path.name, path.read_bytes().decode("utf-8", "surrogateescape"), "regression")
            # A known hang needs only to outlast a short limit; the rest get a long one, so that a loaded
            # machine does not pass for a hang.
            timeout = 5.0 if signature.startswith("Hang") else 30.0
            with memory_limit(2048):
                result = run_case(
                    case, tmp_path, timeout=timeout, time_fraction=1.0, rng=random.Random(0), train_fraction=1.0
                )
            if not any(_same(signature, d.signature) for d in result.defects):
                fixed.append(f"{path.name}: {signature}")
    assert not fixed, "fixed - delete these from KNOWN_DEFECTS: " + "; ".join(fixed)
