"""The user's own code: `--import MODULE`, `--model-code FILE.py`, `--builder module:function`.

All three run code the user chose to run; none of them runs code named by a checkpoint file.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from mmoe_inspect.checkpoint import CheckpointError
from mmoe_inspect.errors import first_line

_MARK = "__mmoe_inspect_model_code__"


class ModelCodeError(CheckpointError):
    """The user's model code cannot be imported or called (`--import`, `--model-code`, `--builder`)."""


@contextmanager
def user_code(
    imports: Sequence[str] = (), model_code: str | Path | None = None
) -> Iterator[ModuleType | None]:
    """Make the user's classes importable while loading; yields the `--model-code` module (or None).

    The working directory and the model code's folder go on `sys.path`; `imports` are imported;
    the model code is loaded as a module named after the file, and its classes and functions are
    also aliased into `__main__`, so pickles saved from a script (`__main__.MyMMoE`) find them.
    `sys.path` and `__main__` are put back afterwards (loaded objects keep their classes).
    """
    added: list[str] = []
    main = sys.modules["__main__"]
    aliased: dict[str, Any] = {}
    missing = object()
    folders = [os.getcwd()]
    if model_code is not None:
        folders.append(str(Path(model_code).resolve().parent))
    for folder in folders:
        if folder not in sys.path:
            sys.path.insert(0, folder)
            added.append(folder)
    try:
        for name in imports:
            _import(name, "--import")
        module = _load_file(Path(model_code)) if model_code is not None else None
        if module is not None:
            for attr, obj in vars(module).items():
                if getattr(obj, "__module__", None) == module.__name__ and (
                    isinstance(obj, type) or inspect.isfunction(obj)
                ):
                    aliased[attr] = getattr(main, attr, missing)
                    setattr(main, attr, obj)
        yield module
    finally:
        for attr, old in aliased.items():
            if old is missing:
                delattr(main, attr)
            else:
                setattr(main, attr, old)
        for folder in added:
            if folder in sys.path:
                sys.path.remove(folder)


def _import(name: str, flag: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise ModelCodeError(
            f"{flag} {name}: no module named {exc.name!r} (install it, run from the folder that holds it, "
            "or pass --model-code FILE.py)"
        ) from None
    except SystemExit as exc:  # a script run on import (argparse, sys.exit(main())): never a silent exit 0
        raise ModelCodeError(f"{flag} {name}: importing it {_exited(exc)}") from None
    except Exception as exc:
        raise ModelCodeError(
            f"{flag} {name}: importing it failed: {type(exc).__name__}: {first_line(exc)}"
        ) from None


def _exited(exc: SystemExit, builder: bool = False) -> str:
    """What a SystemExit raised by the user's code says: the command would have ended there, silently."""
    if builder:
        return f"called sys.exit({exc.code!r}); a builder must return the model"
    return (
        f"called sys.exit({exc.code!r}) (a script that runs when imported? guard it with "
        '`if __name__ == "__main__":`, or move the model into a module of its own)'
    )


def _load_file(path: Path) -> ModuleType:
    """Execute `path` as a module named after its stem (registered in `sys.modules`)."""
    if not path.is_file():
        raise ModelCodeError(f"--model-code {path} does not exist")
    if path.suffix != ".py":
        raise ModelCodeError(f"--model-code {path} must be a Python file (.py)")
    name = re.sub(r"\W", "_", path.stem)
    stamp = (str(path.resolve()), path.stat().st_mtime_ns)
    existing = sys.modules.get(name)
    if existing is not None:
        if getattr(existing, _MARK, None) == stamp:
            return existing  # the same file, unchanged: keep its classes (objects made from them stay valid)
        if not getattr(existing, _MARK, None):
            raise ModelCodeError(
                f"--model-code {path}: its name {name!r} is already an imported module; rename the file"
            )
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelCodeError(f"--model-code {path} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    setattr(module, _MARK, stamp)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SystemExit as exc:
        del sys.modules[name]
        raise ModelCodeError(f"--model-code {path} {_exited(exc)}") from None
    except Exception as exc:
        del sys.modules[name]
        where = f" (line {exc.lineno})" if isinstance(exc, SyntaxError) else ""
        raise ModelCodeError(
            f"--model-code {path} failed to load{where}: {type(exc).__name__}: {first_line(exc)}"
        ) from None
    return module


def resolve_callable(spec: str, flag: str) -> Callable[..., Any]:
    """The function named `package.module:function` (attribute paths like `mod:Class.create` work)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ModelCodeError(f"{flag} {spec!r} must look like package.module:function")
    obj: Any = _import(module_name, flag)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelCodeError(f"{flag} {spec}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelCodeError(f"{flag} {spec} is a {type(obj).__name__}, not a function")
    return obj


def call_builder(builder: Callable[..., Any], spec: str, config: Any | None) -> nn.Module:
    """Call a model factory with no arguments or with the checkpoint's config; it must return a module."""
    try:
        params = [
            p
            for p in inspect.signature(builder).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        params = []
    required = [p for p in params if p.default is p.empty]
    if required and config is None:
        raise ModelCodeError(
            f"--builder {spec} takes an argument ({required[0].name}) but the checkpoint stores no config "
            "to pass it; give a factory that takes no arguments"
        )
    args = (config,) if params and config is not None else ()
    try:
        model = builder(*args)
    except SystemExit as exc:
        raise ModelCodeError(f"--builder {spec} {_exited(exc, builder=True)}") from None
    except Exception as exc:
        raise ModelCodeError(f"--builder {spec} failed: {type(exc).__name__}: {first_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise ModelCodeError(f"--builder {spec} returned a {type(model).__name__}, not a torch nn.Module")
    return model
