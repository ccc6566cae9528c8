"""`keras-dyart presets`: list the published recipes and their settings."""

import json
from typing import Optional

import typer


def _per255(value):
    """16/255 for 0.0627..., else the number."""
    scaled = value * 255
    return f"{round(scaled):g}/255" if abs(scaled - round(scaled)) < 1e-9 else f"{value:g}"


def presets(
    name: Optional[str] = typer.Argument(None, metavar="NAME", hidden=True),
    as_json: bool = typer.Option(False, "--json", help="Print the settings as JSON."),
):
    """List the presets (the published DyART recipes) with their settings.

    NAME: show every setting of that preset (default: a summary of all).
    """
    from rich.console import Console
    from rich.table import Table

    from keras_dyart import presets as kp

    console = Console()
    if name is not None:
        try:
            preset = kp.get(name)
        except ValueError as err:
            raise typer.BadParameter(str(err), param_hint="NAME") from None
        if as_json:
            typer.echo(json.dumps(preset, indent=2))
            return
        table = Table(title=f"preset {name}: {preset['description']}")
        table.add_column("setting")
        table.add_column("value")
        for key, value in kp.flatten(preset).items():
            if key != "description":
                if key.endswith(("r0", "eps_fab")):
                    value = _per255(value)
                table.add_row(key, json.dumps(value) if not isinstance(value, str) else value)
        console.print(table)
        return
    if as_json:
        typer.echo(json.dumps({n: kp.get(n) for n in kp.names()}, indent=2))
        return
    table = Table(title="presets (keras-dyart presets NAME shows all settings)")
    table.add_column("name", no_wrap=True)
    table.add_column("settings")
    for n in kp.names():
        p = kp.get(n)
        d, extra, clip = p["dyart"], p["extra_data"], p["global_clipnorm"]
        settings = [
            f"{p['dataset']} · {p['model']} ({p['model_kwargs'].get('norm', 'batch')}norm, "
            f"{p['model_kwargs'].get('activation', 'relu')})",
            f"{p['burn_in_epochs']} clean + {p['epochs']} DyART epochs, batch "
            f"{p['batch_size']}, {p['schedule']['name']} schedule, clip "
            f"{'none' if clip is None else format(clip, 'g')}",
            f"λ {d['lam']:g} · α {d['alpha']:g} · r0 {_per255(d['r0'])} · β {d['beta']:g}"
            f" · {d['n_iter']} FAB steps",
        ]
        if extra is not None:
            settings.append(f"extra data {extra['path']} at {extra['fraction']:g}")
        table.add_row(n, "\n".join(settings))
    console.print(table)


def register(app):
    """Add the ``presets`` command to the `keras-dyart` Typer app."""
    app.command("presets")(presets)
