"""Runs the tests that exercise protobuf at both ends of netspec's protobuf range: the lowest release
pyproject.toml allows and the newest one below its upper bound.

    python tools/check_protobuf_range.py [--low VERSION] [--high VERSION] [--keep]

Each end gets a throwaway folder holding only that protobuf (pip install --target), put in front of the
current environment on PYTHONPATH, so everything else is the environment's own. At the lowest end the
tests that need tritonclient are left out: tritonclient's generated code needs a newer protobuf (6.33.5 for
tritonclient 2.73) than netspec's. Exits 1 when either end fails.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the tests that read, write or serve protobuf messages
TESTS = [
    "tests/test_prototxt.py",
    "tests/test_numbers.py",
    "tests/test_caffemodel.py",
    "tests/test_messages.py",
    "tests/test_serve_grpc.py",
]


def declared_range() -> tuple[str, str]:
    """The protobuf requirement's lower bound and its pip specifier, from pyproject.toml."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    found = re.search(r'"protobuf(>=([\d.]+),<[\d.]+)"', text)
    if found is None:
        sys.exit("pyproject.toml has no protobuf requirement of the form protobuf>=LOW,<HIGH")
    return found.group(2), found.group(1)


def run_at(requirement: str, folder: Path, tests: list[str], deselect: str | None) -> tuple[str, bool]:
    """The protobuf version installed for `requirement`, and whether the tests passed with it."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(folder), requirement],
        check=True,
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(ROOT)])}
    version = subprocess.run(
        [sys.executable, "-c", "import google.protobuf as p; print(p.__version__)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *tests]
    if deselect:
        command += ["-k", deselect]
    print(f"== protobuf {version}: {' '.join(command[1:])}", flush=True)
    return version, subprocess.run(command, env=env, cwd=ROOT).returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    low, specifier = declared_range()
    parser.add_argument("--low", default=low, help=f"the lowest protobuf (default: pyproject's, {low})")
    parser.add_argument("--high", help="the highest protobuf (default: the newest that pyproject allows)")
    parser.add_argument("--keep", action="store_true", help="keep the folders the versions are installed in")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="netspec-protobuf-"))
    results = []
    try:
        for name, requirement, deselect in (
            ("lowest", f"protobuf=={args.low}", "not tritonclient"),
            ("highest", f"protobuf=={args.high}" if args.high else f"protobuf{specifier}", None),
        ):
            version, ok = run_at(requirement, base / name, TESTS, deselect)
            results.append((name, version, ok))
    finally:
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    for name, version, ok in results:
        print(f"{name} protobuf {version}: {'passed' if ok else 'FAILED'}")
    if not all(ok for _, _, ok in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
