"""The README's shell and Python examples, run in order as a reader would run them, so that the two cannot
drift.

Extracted from README.md itself: every line of a fenced ```bash block (a trailing backslash joins lines)
is a command that must exit 0; in a plain ``` block that starts with `$ `, each `$ ` line is a command and
the lines after it are its output, which must match line for line (`...` stands for any text). An output
that begins with a location (`path:line:col:`) or `error:` shows a mistake: exit status 1. A ```python
block runs whole, in this interpreter, in the same folder and at its place among the shell examples; one
that talks to `netspec serve` at 127.0.0.1:8000 gets a server of the `digits.onnx` the shell examples
exported, on a free port put in place of 8000.

They run in a temporary folder holding a copy of models/ and examples/, with `netspec` meaning this tree's CLI.
Skipped, by these rules only (SKIPPED):
- installing (`python3 -m venv`, `pip install`): CI installs; the quick start's lines do nothing else;
- the main job, `netspec train models/digits_cnn.yaml` (tests/test_train.py trains it in full); the run
  folder it leaves, which later examples read, is stood in for by one epoch of the same spec, its last
  snapshot saved under the full run's name;
- `netspec sweep` and what reads its folder (a dozen training runs; tests/test_sweep.py);
- `netspec serve`, which runs until stopped, and the clients that talk to it (tests/test_serve.py).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import MODELS, ROOT

README = ROOT / "README.md"
MAIN_JOB = "netspec train models/digits_cnn.yaml"
MAIN_JOB_SNAPSHOT = "runs/digits_cnn/digits_cnn_iter_899.pt"  # the name tests/test_train.py checks
SKIPPED = {
    r"python3? -m venv|\bpip install\b": "installs",
    r"^netspec train models/digits_cnn\.yaml$": "the main job",
    r"\bnetspec sweep\b|runs/digits_sweep": "a dozen training runs",
    r"^netspec serve\b|^curl\b": "a server that runs until stopped",
}
LOCATION = re.compile(r"^(error:|\S+:\d+:\d+: )")
SERVER = "127.0.0.1:8000"  # where the README's clients find `netspec serve digits.onnx`


@dataclass
class Example:
    command: str  # a ```python block's code when `python`
    output: list[str] | None  # None: only the exit status is checked
    python: bool = False


def examples(text: str) -> list[Example]:
    found = []
    for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", text, re.M | re.S):
        lines = body.replace("\\\n", " ").splitlines()
        if lang == "python":
            found.append(Example(body, None, python=True))
        elif lang == "bash":
            found += [Example(line.strip(), None) for line in lines if line.strip() and not line.startswith("#")]
        elif lang == "" and lines and lines[0].startswith("$ "):
            for line in lines:
                if line.startswith("$ "):
                    found.append(Example(line[2:].strip(), []))
                else:
                    found[-1].output.append(line.rstrip())  # type: ignore[union-attr]
    return found


def skipped(command: str) -> bool:
    bare = command.split(" #")[0].strip()
    return any(re.search(rule, bare) for rule in SKIPPED)


def matches(expected: str, actual: str) -> bool:
    return re.fullmatch(".*".join(map(re.escape, expected.split("..."))), actual) is not None


def test_the_readme_has_examples_of_every_kind() -> None:
    found = examples(README.read_text())
    commands = [e.command for e in found]
    assert any(c.startswith("python3 -m venv") and c.endswith(MAIN_JOB) for c in commands)  # the quick start
    assert any("pip install" in c and "python -m pytest" in c for c in commands)  # the tests
    assert sum(e.output is not None for e in found) >= 2 and len(found) >= 10
    python = [e.command for e in found if e.python]
    assert any("netspec.compile(" in c for c in python) and any(SERVER in c for c in python)
    assert MAIN_JOB_SNAPSHOT.split("/")[-1] in (ROOT / "tests" / "test_train.py").read_text()


def test_the_specs_shown_in_the_readme_are_the_files_shipped() -> None:
    text = README.read_text()
    assert (MODELS / "iris_mlp.yaml").read_text() in text


def test_the_readme_files_are_what_the_tool_writes() -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import make_readme_files
    finally:
        sys.path.remove(str(ROOT / "tools"))
    assert (ROOT / "examples" / "digit.png").read_bytes() == make_readme_files.digit_png()
    assert (ROOT / "examples" / "digits_labels.txt").read_text() == make_readme_files.labels_text()


def stand_in_for_the_main_job(cwd: Path, env: dict[str, str]) -> None:
    run = cwd / Path(MAIN_JOB_SNAPSHOT).parent
    subprocess.run(
        ["netspec", "train", "models/digits_cnn.yaml", "--set", "solver.max_epoch=1", "--out", str(run), "--quiet"],
        cwd=cwd,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    (last,) = run.glob("*_iter_*.pt")
    last.rename(cwd / MAIN_JOB_SNAPSHOT)


def run_python(code: str, cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A README Python block, executed as a script in `cwd`; a client of `netspec serve` is given one."""
    monkeypatch.chdir(cwd)
    if SERVER not in code:
        exec(compile(code, "README.md (python block)", "exec"), {"__name__": "__main__"})
        return
    server = subprocess.Popen(
        [sys.executable, "-m", "netspec", "serve", "digits.onnx", "--port", "0", "--workers", "1"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None
        line = server.stderr.readline()
        found = re.search(r"on http://(127\.0\.0\.1:\d+) ", line)
        assert found, line
        run_python(code.replace(SERVER, found.group(1)), cwd, monkeypatch)
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)


def test_every_example_in_the_readme_runs_as_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(MODELS, tmp_path / "models")
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    bin_dir = tmp_path / ".bin"
    bin_dir.mkdir()
    (bin_dir / "netspec").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m netspec "$@"\n')
    (bin_dir / "netspec").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "COLUMNS": "100",
    }
    ran = 0
    for example in examples(README.read_text()):
        if example.python:
            run_python(example.command, tmp_path, monkeypatch)
            ran += 1
            continue
        if skipped(example.command):
            if MAIN_JOB in example.command and not (tmp_path / MAIN_JOB_SNAPSHOT).exists():
                stand_in_for_the_main_job(tmp_path, env)
            continue
        result = subprocess.run(
            ["bash", "-c", example.command],
            cwd=tmp_path,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=300,
        )
        shown = example.output
        expected_code = 1 if shown and LOCATION.match(shown[0]) else 0
        assert result.returncode == expected_code, f"$ {example.command}\n{result.stdout}"
        if shown is not None:
            actual = result.stdout.rstrip("\n").splitlines()
            assert len(actual) == len(shown) and all(map(matches, shown, actual)), (
                f"$ {example.command}\nREADME shows:\n" + "\n".join(shown) + "\nit prints:\n" + result.stdout
            )
        ran += 1
    assert ran >= 10


@pytest.mark.parametrize(
    ("command", "skip"),
    [
        (
            "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && netspec train models/digits_cnn.yaml",
            True,
        ),
        ("netspec train models/digits_cnn.yaml", True),
        ("netspec train models/digits_cnn.yaml --set solver.max_epoch=1", False),
        ("netspec serve digits.onnx                 # http://127.0.0.1:8000", True),
        ("netspec export models/digits_cnn.yaml --onnx d.onnx", False),
    ],
)
def test_the_skip_rules_name_only_what_they_mean(command: str, skip: bool) -> None:
    assert skipped(command) == skip
