"""Every public name of the library has a docstring, and docs/api.md renders every module."""

import importlib
import inspect
import pathlib
import pkgutil

import keras_dyart

API = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text()


def public_modules():
    for info in pkgutil.walk_packages(keras_dyart.__path__, "keras_dyart."):
        if not any(part.startswith("_") for part in info.name.split(".")) \
                and not info.name.startswith("keras_dyart.backend"):
            yield info.name


def test_every_public_module_is_in_the_api_reference():
    missing = [m for m in public_modules() if f"::: {m}\n" not in API]
    assert missing == []


def test_every_public_function_and_class_has_a_docstring():
    undocumented = []
    for name in public_modules():
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if attr.startswith("_") or getattr(value, "__module__", None) != name:
                continue
            if inspect.isfunction(value) or inspect.isclass(value):
                if not inspect.getdoc(value):
                    undocumented.append(f"{name}.{attr}")
    assert undocumented == []
