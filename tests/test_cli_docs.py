"""docs/cli.md names every command and every option the code has (and no option it lacks)."""

import pathlib
import re

import typer

from keras_dyart_apps.main import app

PAGE = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "cli.md").read_text()


def test_every_command_and_option_is_documented():
    command = typer.main.get_command(app)
    documented = set(re.findall(r"`(--[a-z0-9-]+)`", PAGE))
    have = set()
    for name, sub in command.commands.items():
        assert f"## `keras-dyart {name}`" in PAGE, name
        for param in sub.params:
            have.update(o for o in param.opts + param.secondary_opts if o.startswith("--"))
    assert have - documented == set(), "options missing from docs/cli.md"
    assert documented - have - {"--help"} == set(), "docs/cli.md names options the code lacks"
