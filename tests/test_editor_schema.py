"""The JSON Schema for editors: generated, current, and it flags what `netspec check` refuses."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from click.testing import CliRunner
from jsonschema.exceptions import best_match

from netspec.cli import main
from netspec.editor_schema import installed_schema, schema_text
from netspec.layers import all_types

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "schemas" / "netspec.schema.json").read_text())
VALIDATOR = jsonschema.Draft7Validator(SCHEMA)
DIGITS = (ROOT / "models" / "digits_cnn.yaml").read_text()


def test_the_committed_schema_is_the_generated_one_and_valid_draft_07() -> None:
    assert (ROOT / "schemas" / "netspec.schema.json").read_text() == schema_text()
    assert Path(installed_schema()).read_text() == schema_text()
    jsonschema.Draft7Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("spec", sorted(p.name for p in (ROOT / "models").glob("*.yaml")))
def test_every_ready_yaml_spec_is_valid(spec: str) -> None:
    errors = list(VALIDATOR.iter_errors(yaml.safe_load((ROOT / "models" / spec).read_text())))
    assert errors == []


@pytest.mark.parametrize(
    ("old", "new", "path", "message"),
    [
        (
            "kernel_size: 3, pad: 1",
            "kernel_sise: 3, pad: 1",
            ["layer", 1, "convolution_param"],
            "Additional properties are not allowed ('kernel_sise' was unexpected)",
        ),
        (
            "pool: MAX",
            "pool: MAXX",
            ["layer", 3, "pooling_param", "pool"],
            "'MAXX' is not one of ['MAX', 'AVE', 'STOCHASTIC', 0, 1, 2]",
        ),
        (
            "num_output: 128",
            "num_output: many",
            ["layer", 7, "inner_product_param", "num_output"],
            "'many' is not of type 'integer'",
        ),
        ("type: Adam", "tipe: Adam", ["solver"], "Additional properties are not allowed ('tipe' was unexpected)"),
        (
            "metric: accuracy",
            "metric: accuracy\n  trails: 3",
            ["sweep"],
            "Additional properties are not allowed ('trails' was unexpected)",
        ),
    ],
)
def test_mistakes_are_flagged_at_their_field(old: str, new: str, path: list, message: str) -> None:
    error = best_match(VALIDATOR.iter_errors(yaml.safe_load(DIGITS.replace(old, new, 1))))
    assert error is not None
    assert (list(error.absolute_path), error.message) == (path, message)


def test_the_schema_knows_every_layer_type_default_shorthand_and_comment() -> None:
    defs = SCHEMA["definitions"]
    assert defs["LayerParameter"]["properties"]["type"]["enum"] == sorted(all_types())
    assert defs["PoolingParameter"]["properties"]["round_mode"]["default"] == "CEIL"
    assert defs["ConvolutionParameter"]["properties"]["bias_term"]["default"] is True
    assert defs["SweepParameter"]["properties"]["metric"]["description"].startswith("The test output to optimise")
    assert defs["LayerParameter"]["properties"]["convolution_param"]["description"].startswith("Convolution: ")
    assert defs["LayerParameter"]["additionalProperties"] is False
    shorthand = {
        "layer": [
            {"name": "d", "type": "Input", "input_param": {"shape": [1, 2]}},  # a shape as a list
            {
                "name": "f",
                "type": "InnerProduct",
                "bottom": "d",  # one value for a list
                "inner_product_param": {"num_output": 2, "weight_filler": "xavier"},
            },
        ]
    }
    assert list(VALIDATOR.iter_errors(shorthand)) == []


def test_the_schema_command_prints_or_writes_it(tmp_path: Path) -> None:
    printed = CliRunner().invoke(main, ["schema"])
    assert printed.exit_code == 0 and printed.output == schema_text()
    written = CliRunner().invoke(main, ["schema", "-o", str(tmp_path / "s.json")])
    assert written.output == f"wrote {tmp_path / 's.json'}\n"
    assert (tmp_path / "s.json").read_text() == schema_text()


def test_convert_to_yaml_names_the_schema_in_a_modeline(tmp_path: Path) -> None:
    target = tmp_path / "lenet.yaml"
    result = CliRunner().invoke(main, ["convert", str(ROOT / "models" / "lenet.prototxt"), str(target)])
    assert result.exit_code == 0, result.output
    first = target.read_text().splitlines()[0]
    assert first.startswith("# yaml-language-server: $schema=")
    assert (tmp_path / first.split("=", 1)[1]).resolve() == Path(installed_schema()).resolve()
