"""The `keras-dyart` command line (Typer). Each sub-command lives in its own module of this
package and registers itself with `register(app)`."""

import importlib
import importlib.util
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up logs quiet

import typer

app = typer.Typer(
    name="keras-dyart",
    help="Robust training by margins for Keras 3: DyART, baselines, boundary dynamics and "
         "attack-based evaluation. The backend is chosen with KERAS_BACKEND "
         "(tensorflow, jax or torch). Every option: docs/cli.md.",
    no_args_is_help=True,
    # Plain help: paragraphs wrapped to the terminal, one line per option, no type column.
    rich_markup_mode=None,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _root():
    """Robust training by margins for Keras 3 (backend from KERAS_BACKEND)."""


# Sub-command modules, in the order `--help` lists them.
COMMANDS = ("train", "evaluate", "dynamics", "presets")

for _name in COMMANDS:
    if importlib.util.find_spec(f"keras_dyart_apps.{_name}") is not None:
        importlib.import_module(f"keras_dyart_apps.{_name}").register(app)


def main() -> None:
    """Run the `keras-dyart` command line."""
    app()


if __name__ == "__main__":
    main()
