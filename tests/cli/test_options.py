"""Option groups (vla_export/cli/options.py): declared once, expanded into a command's options in place, handed back as one object."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from vla_export.cli.options import InputOptions, ReportOptions, ToleranceOptions, with_loading_options, with_option_groups
from vla_export.models.resolve import LoadOptions


def _app(command) -> typer.Typer:
    app = typer.Typer()
    app.command()(command)
    app.callback()(lambda: None)  # keep the command as a subcommand
    return app


def test_groups_expand_in_place_and_come_back_built():
    seen = {}

    @with_loading_options
    @with_option_groups
    def cmd(
        artifact: Path = typer.Argument(...),
        inputs: InputOptions = InputOptions(),
        strict: bool = typer.Option(False, "--strict"),
        tol: ToleranceOptions = ToleranceOptions(),
        reports: ReportOptions = ReportOptions(),
        load: LoadOptions = LoadOptions(),
    ) -> None:
        seen.update(inputs=inputs, strict=strict, tol=tol, reports=reports, load=load)

    names = list(inspect.signature(cmd).parameters)
    assert names[:6] == ["artifact", "samples", "data", "seed", "batch", "strict"]  # the group's place, in field order
    assert names[6:13] == ["atol", "rtol", "min_cosine", "min_sign_agreement", "max_rel_error", "json_path", "junit"]
    r = CliRunner().invoke(_app(cmd), ["cmd", "a.onnx", "--samples", "3", "--atol", "0.1", "--atol", "actions:0.05",
                                       "--min-cosine", "0.99", "--junit", "j.xml", "--strict"])
    assert r.exit_code == 0, r.output
    assert seen["inputs"] == InputOptions(samples=3, data=None, seed=None, batch=None)
    assert seen["tol"] == ToleranceOptions(atol=["0.1", "actions:0.05"], min_cosine=0.99)
    assert seen["reports"] == ReportOptions(json_path=None, junit=Path("j.xml"))
    assert seen["strict"] is True and seen["load"] == LoadOptions()


def test_group_help_is_the_declared_one():
    @with_option_groups
    def cmd(tol: ToleranceOptions = ToleranceOptions()) -> None:
        pass

    out = CliRunner().invoke(_app(cmd), ["cmd", "--help"], env={"COLUMNS": "300", "NO_COLOR": "1"}).output
    for flag in ("--atol", "--rtol", "--min-cosine", "--min-sign-agreement", "--max-rel-error"):
        assert flag in out
    assert "[OUTPUT:]VALUE" in out and "Polygraphy's spelling" in out


def test_a_field_that_shadows_a_parameter_is_refused():
    with pytest.raises(TypeError, match="shadows a parameter.*samples"):
        @with_option_groups
        def cmd(samples: int = typer.Option(1, "--n"), inputs: InputOptions = InputOptions()) -> None:
            pass


def test_every_group_is_a_frozen_dataclass_of_options():
    for group in (InputOptions, ToleranceOptions, ReportOptions):
        assert dataclasses.is_dataclass(group) and group.__dataclass_params__.frozen
        with pytest.raises(dataclasses.FrozenInstanceError):
            group().__setattr__(dataclasses.fields(group)[0].name, 1)
