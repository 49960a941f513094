"""Every kind of mistake in a spec gives one located message and exit status 1, never a traceback.

Each file in tests/data/errors is a broken spec; the .txt beside it is exactly what `netspec check`
prints. Regenerate the expectations with NETSPEC_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from netspec.cli import main
from tests.conftest import DATA

ERRORS = DATA / "errors"
SPECS = sorted(p for p in ERRORS.iterdir() if p.suffix in (".prototxt", ".yaml"))


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.name)
def test_broken_spec_gives_the_expected_message(spec: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ERRORS)
    result = CliRunner().invoke(main, ["check", spec.name])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    golden = spec.with_suffix(spec.suffix + ".txt")
    if os.environ.get("NETSPEC_UPDATE_GOLDEN"):
        golden.write_text(result.output)
    assert result.output == golden.read_text()


READING = [p for p in SPECS if p.name.startswith(("nesting_", "number_", "string_", "yaml_"))]


@pytest.mark.parametrize("spec", READING, ids=lambda p: p.name)
def test_convert_refuses_what_reading_refuses_with_the_same_message(
    spec: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ERRORS)
    target = tmp_path / ("out.yaml" if spec.suffix == ".prototxt" else "out.prototxt")
    result = CliRunner().invoke(main, ["convert", spec.name, str(target)])
    assert (result.exit_code, result.output) == (1, spec.with_suffix(spec.suffix + ".txt").read_text())
    assert not target.exists()


def test_debug_shows_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ERRORS)
    result = CliRunner().invoke(main, ["--debug", "check", "unknown_bottom.prototxt"])
    assert result.exit_code == 1
    assert result.exception is not None and type(result.exception).__name__ == "GraphError"


def test_missing_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["check", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1
    assert result.output == f"error: spec file '{tmp_path / 'nope.yaml'}' does not exist\n"


def test_unknown_extension(tmp_path: Path) -> None:
    spec = tmp_path / "net.json"
    spec.write_text("{}")
    result = CliRunner().invoke(main, ["check", str(spec)])
    assert result.exit_code == 1
    assert result.output == (
        f"error: cannot tell the format of '{spec}' from its name\n"
        "  hint: name spec files *.prototxt (or *.pbtxt) or *.yaml (or *.yml)\n"
    )


def test_binary_file_named_like_a_spec(tmp_path: Path) -> None:
    spec = tmp_path / "weights.prototxt"
    spec.write_bytes(bytes(range(256)))
    result = CliRunner().invoke(main, ["check", str(spec)])
    assert result.exit_code == 1
    assert "is not a text file" in result.output
