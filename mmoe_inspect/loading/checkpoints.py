"""Checkpoint forms, detected from the file's bytes, each loaded the safest way it allows.

| form                       | how it is recognized                                | how it loads                      |
|----------------------------|-----------------------------------------------------|-----------------------------------|
| mmoe-inspect checkpoint    | `torch.save` zip whose pickle names our format       | `load_checkpoint` (weights_only)  |
| state_dict / training dict | `weights_only=True` load gives a dict of tensors     | `builder` (or our `model_config`) |
| pickled `nn.Module`        | the pickle imports classes (`torch.save(model)`)     | only with `trust=True`            |
| TorchScript / torch.export | zip layout (`code/`, `constants.pkl` / `archive_format`) | refused: hooks cannot see inside |

Before anything is unpickled, `sniff` lists the globals the pickle would import by walking its
opcodes; a refusal names them. `weights_only=True` never runs code from the file; `trust=True`
(`--trust-checkpoint`) is the user's explicit opt-in to full unpickling.
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmoe_inspect._eager import eager_module
from mmoe_inspect._move import move_module
from mmoe_inspect.checkpoint import (
    FORMAT,
    CheckpointError,
    NotOurFormatError,
    _one_line,
    is_weights_only_refusal,
    load_checkpoint,
)
from mmoe_inspect.loading._code import ModelCodeError, call_builder, resolve_callable, user_code
from mmoe_inspect.loading._sniff import Sniffed, is_dangerous, is_plain, sniff
from mmoe_inspect.loading.adapters import adapter_for, stale_device_attributes
from mmoe_inspect.loading.loaded import LoadedModel

STATE_DICT_KEYS = (
    "model_state_dict",
    "state_dict",
    "model_state",
    "model",
    "net",
    "network",
    "module",
    "weights",
    "params",
)
"""Keys of a training dict that may hold the model's state_dict (or, pickled, the model itself)."""

CONFIG_KEYS = ("config", "model_config", "hparams", "hyper_parameters", "model_args", "model_kwargs", "args")
"""Keys of a training dict whose value is passed to a `builder` that takes an argument."""

_PREFIXES = ("module.", "_orig_mod.", "model.", "net.")  # DDP, torch.compile, Lightning-style wrappers
_SAVE_INSTEAD = (
    "save the eager model instead: torch.save(model.state_dict(), 'model.pt') and pass --builder "
    "package.module:function, or torch.save(model, 'model.pt') and pass --trust-checkpoint"
)


class CheckpointFileError(CheckpointError):
    """The checkpoint path is missing, empty, truncated, or not a PyTorch checkpoint at all."""


class UntrustedCheckpointError(CheckpointError):
    """Loading needs full unpickling, which can run code: refused without `trust=True`.

    `.globals` lists what the pickle would import (`module.name`, in order of first use).
    """

    def __init__(self, message: str, globals_: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.globals = tuple(globals_)


class UnsupportedCheckpointError(CheckpointError):
    """A TorchScript or `torch.export` archive: compiled graphs that forward hooks cannot observe."""


class StateDictMismatchError(CheckpointError):
    """A state_dict whose keys or shapes do not fit the model the builder made."""


def load_model(
    path: str | Path,
    *,
    trust: bool = False,
    builder: str | None = None,
    imports: Sequence[str] = (),
    model_code: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """Load any supported checkpoint form as a `LoadedModel` (model in eval mode on `device`).

    Args:
        path: the checkpoint file.
        trust: allow full unpickling (`torch.save(model)` files); refused otherwise, naming the
            classes the pickle would import (`UntrustedCheckpointError`).
        builder: "package.module:function" making the model for a state_dict (no arguments, or the
            training dict's config entry).
        imports: modules to import first (where the pickled classes live).
        model_code: a .py file to load first; its classes are also visible as `__main__.X`.
        device: where to put the model ("cpu", "cuda:0", ...).

    Raises:
        CheckpointError: (subclasses say which) the file cannot be loaded as given; one-line message.
    """
    path = Path(path)
    dev = _device(device)
    if not path.exists():
        raise CheckpointFileError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointFileError(f"checkpoint {path} is a folder; pass the checkpoint file")
    if not path.is_file():  # a FIFO or a device: it was called "empty (0 bytes)" (/dev/urandom too)
        raise CheckpointFileError(
            f"checkpoint {path} is not a regular file (a FIFO, socket or device); pass the file"
        )
    sniffed = sniff(path)
    _refuse_unusable(path, sniffed)
    if FORMAT in sniffed.strings:  # a hint only: any file may hold the string; the payload decides
        try:
            loaded = _ours(path, dev)
        except NotOurFormatError:
            pass  # weights-only loading refused it, or no format entry: judged like any other file
        else:
            unused = _unused_code(
                imports, model_code, "an mmoe-inspect checkpoint rebuilds its model from its config"
            )
            return replace(loaded, notes=(*unused, *loaded.notes)) if unused else loaded
    # the user's code (--import/--model-code) runs only where it can matter: a full unpickle the user
    # trusted, or a --builder; never before a refusal it cannot change, never for a weights-only load
    obj: Any = None
    full = False
    try:
        with warnings.catch_warnings():  # pickle protocol > 2 is fine for us; torch's warning is noise
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location=dev, weights_only=True)
    except pickle.UnpicklingError as exc:
        if not is_weights_only_refusal(exc):
            raise CheckpointFileError(f"{path} is a damaged checkpoint ({_one_line(exc)})") from None
        if not trust:
            raise _refusal(path, sniffed, exc) from None
        if sniffed.unsure:
            raise UntrustedCheckpointError(
                f"refusing to unpickle {path.name} even with --trust-checkpoint: its imports cannot be "
                f"listed in advance ({sniffed.unsure}); torch.save and pickle.dump never write that, "
                "so do not load this file",
                sniffed.globals,
            ) from None
        full = True
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointFileError(f"{path} is a damaged checkpoint ({_one_line(exc)})") from None
    if not full and builder is None:
        model, what, notes = _model_from(obj, path, builder)
        notes = [
            *_unused_code(imports, model_code, "the file holds only weights and no --builder was given"),
            *notes,
        ]
        return _finish(model, path, what, notes, dev)
    with user_code(imports, model_code):
        if full:
            obj = _full_load(path, dev, sniffed)
        model, what, notes = _model_from(obj, path, builder)
    return _finish(model, path, what, notes, dev)


def _unused_code(imports: Sequence[str], model_code: str | Path | None, why: str) -> list[str]:
    """Notes saying which of the user's code was not run (and why), so nothing is silently ignored."""
    notes = []
    if model_code is not None:
        notes.append(f"--model-code {Path(model_code).name} was not run: {why}")
    if imports:
        notes.append(f"--import {', '.join(imports)} not imported: {why}")
    return notes


def _ours(path: Path, device: torch.device) -> LoadedModel:
    loaded = load_checkpoint(path, map_location=device)
    adapter = adapter_for(loaded.model)
    return LoadedModel(
        model=loaded.model,
        adapter=adapter,
        form="mmoe-inspect checkpoint",
        path=path,
        eval_frame=loaded.eval_frame,
        checkpoint=loaded,
    )


def _finish(model: nn.Module, path: Path, form: str, notes: list[str], device: torch.device) -> LoadedModel:
    model, note = eager_module(model)
    if note is not None:
        notes.append(note)
    move_module(model, device)  # a torch.func base module stays on the meta device
    model.eval()
    adapter = adapter_for(model)
    if adapter.device_attribute:
        for where, value in stale_device_attributes(model):
            notes.append(
                f"{where}.device was {value!r}; set to {str(device)!r} (its forward builds tensors on it)"
            )
            target = model if where == "model" else model.get_submodule(where)
            target.device = str(device)
    return LoadedModel(model=model, adapter=adapter, form=form, path=path, notes=tuple(notes))


def _refuse_unusable(path: Path, s: Sniffed) -> None:
    """One-line errors for files that are not loadable checkpoints at all."""
    if s.kind == "empty":
        raise CheckpointFileError(f"checkpoint {path} is empty (0 bytes)")
    if s.too_big is not None:
        raise CheckpointFileError(f"{path.name} is refused before loading: {s.too_big}")
    if s.kind == "truncated":
        raise CheckpointFileError(
            f"checkpoint {path} is truncated or damaged ({s.problem}); copy or save it again"
        )
    if s.kind == "torchscript":
        raise UnsupportedCheckpointError(
            f"{path} is a TorchScript archive (torch.jit.save/torch.jit.script): its modules are compiled "
            f"graphs, so forward hooks cannot observe the gates; {_SAVE_INSTEAD}"
        )
    if s.kind == "torch-export":
        raise UnsupportedCheckpointError(
            f"{path} is a torch.export archive (.pt2): an exported graph has no modules to hook, so the "
            f"gates cannot be observed; {_SAVE_INSTEAD}"
        )
    if s.kind == "zip":
        raise CheckpointFileError(
            f"{path} is a zip archive but not a PyTorch checkpoint (no data.pkl inside)"
        )
    if s.kind == "json":
        raise CheckpointFileError(
            f"{path} is a JSON file, not a PyTorch checkpoint (a file written by torch.save)"
        )
    if s.kind == "parquet":
        raise CheckpointFileError(
            f"{path} is a parquet file, not a PyTorch checkpoint; pass evaluation rows with --data"
        )
    if s.kind == "text":
        raise CheckpointFileError(
            f"{path} is a text file, not a PyTorch checkpoint (a file written by torch.save)"
        )
    if s.kind == "unknown":
        raise CheckpointFileError(
            f"{path} is not a PyTorch checkpoint (its bytes are neither a torch.save zip archive nor a pickle)"
        )
    if s.problem is not None:
        raise CheckpointFileError(
            f"checkpoint {path} is truncated or damaged (its pickle stops: {s.problem})"
        )


def _refusal(path: Path, s: Sniffed, exc: BaseException) -> UntrustedCheckpointError:
    """The refusal: what the file is, a WARNING for loaders/executors (first, so a terminal's cut of a long
    line keeps it), EVERY import outside the tensor allowlist."""
    named = [g for g in s.globals if not is_plain(g)]
    danger = [g for g in named if is_dangerous(g)]
    rest = [g for g in named if g not in danger]
    module_like = "torch._utils._rebuild_parameter" in s.globals or any(
        g.startswith("torch.nn.modules.") for g in s.globals
    )
    what = "a whole pickled model (torch.save(model))" if module_like else "a pickle of Python objects"
    extra = sorted(x for x in s.strings if is_extra_state(x)) if not module_like else []
    advice = (
        "If you trust its source, pass --trust-checkpoint (with --import MODULE or --model-code FILE.py if those "
        "classes are not importable), or save model.state_dict() and pass --builder package.module:function"
    )
    if extra:  # a state_dict that weights-only loading would take, but for its modules' extra state
        what = (
            f"a state_dict whose extra state ({cut_list(extra, 3)}: what a module's get_extra_state() returned) "
            "holds Python objects that weights-only loading does not rebuild (it takes tensors and plain "
            "values: dict, list, tuple, str, int, float, bool, None)"
        )
        advice = (
            "If you trust its source, pass --trust-checkpoint (with --model-code FILE.py or --import MODULE that "
            "defines those classes); otherwise make get_extra_state() return plain values and save the "
            "state_dict again"
        )
        if not danger:  # never advise allow-listing a name that can run commands
            advice += (
                ", or, from Python, allow exactly those classes with torch.serialization.add_safe_globals([...]) "
                "before loading"
            )
    if named:
        imports = (
            f"it would import {cut_list(danger + rest, 12)} ({len(named)} name{'s' if len(named) != 1 else ''}"
            " outside the tensor allowlist)"
        )
    else:
        imports = f"torch refused it: {_one_line(exc)}"
    warning = (  # before the list of imports: the terminal cuts a long line, never this part
        f"WARNING: {cut_list(danger, 12)} can load files, import modules or run commands, so do not "
        "trust this file unless you made it; "
        if danger
        else ""
    )
    unsure = (
        f"; WARNING: this list may be incomplete ({s.unsure}), so the file is refused even with "
        "--trust-checkpoint"
        if s.unsure
        else ""
    )
    return UntrustedCheckpointError(
        f"refusing to unpickle {path.name} without --trust-checkpoint: it is {what}, and unpickling can "
        f"run arbitrary code; {warning}{imports}{unsure}. {advice}",
        s.globals,
    )


def cut_list(items: Sequence[str], n: int) -> str:
    """'a, b, c and 7 more': the first `n` items and a count of the rest."""
    shown = ", ".join(items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def _full_load(path: Path, device: torch.device, s: Sniffed) -> Any:
    """Full unpickling (the user opted in); missing classes become a hint about --import/--model-code."""
    try:
        try:
            return torch.load(path, map_location=device, weights_only=False)
        except RuntimeError as exc:
            if s.kind != "torch-legacy" or "magic number" not in str(exc):
                raise
            with path.open("rb") as fh:  # a plain pickle.dump(model): no torch header
                return pickle.load(fh)  # the user opted in with trust=True
    except ModuleNotFoundError as exc:
        raise ModelCodeError(
            f"{path.name} needs module {exc.name!r}, which is not importable here: install it, run from the "
            "folder that holds it, or pass --import MODULE / --model-code FILE.py"
        ) from None
    except AttributeError as exc:
        m = re.search(r"Can't get attribute '([^']+)' on <module '([^']+)'", str(exc))
        if m is None:
            raise CheckpointError(f"{path} cannot be unpickled: {_one_line(exc)}") from None
        attr = m.group(1)
        name = next((g for g in s.globals if g.endswith("." + attr)), f"{m.group(2)}.{attr}")
        module = name[: -len(attr) - 1]
        hint = (
            "it was saved from a script: pass --model-code FILE.py (the script that defines it)"
            if module == "__main__"
            else f"pass --import {module} or --model-code FILE.py with a matching version of it"
        )
        raise ModelCodeError(f"{path.name} needs {name}, which is not defined here; {hint}") from None
    except Exception as exc:
        raise CheckpointError(f"{path} cannot be unpickled: {type(exc).__name__}: {_one_line(exc)}") from None


def _model_from(obj: Any, path: Path, builder: str | None) -> tuple[nn.Module, str, list[str]]:
    """The model in a loaded object: a module, or a state_dict plus a builder; returns (model, form, notes)."""
    notes: list[str] = []
    if isinstance(obj, torch.jit.ScriptModule):
        raise UnsupportedCheckpointError(f"{path} holds a TorchScript module; {_SAVE_INSTEAD}")
    if isinstance(obj, nn.Module):
        if builder:
            notes.append("--builder ignored: the file holds the whole model")
        return obj, "pickled nn.Module", notes
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a model, state_dict or training dict"
        )
    key, content = _find_model_entry(obj)
    if isinstance(content, nn.Module):
        return content, f"training dict with a pickled nn.Module under {key!r}", notes
    if content is None:
        keys = ", ".join(map(repr, list(obj)[:8])) + (" ..." if len(obj) > 8 else "")
        raise CheckpointError(
            f"{path} holds a dict ({keys}) with no state_dict in it (looked for a dict of tensors, or one "
            f"under {', '.join(STATE_DICT_KEYS[:4])}, ...)"
        )
    form = "state_dict" if key is None else f"training dict (state_dict under {key!r})"
    config = next((obj[k] for k in CONFIG_KEYS if k in obj), None) if key is not None else None
    if builder:
        model = call_builder(resolve_callable(builder, "--builder"), builder, config)
        form += " + --builder"
    elif isinstance(obj.get("model_config"), Mapping) and "architecture" in obj["model_config"]:
        model = _reference_model(obj["model_config"], path)
        form += " + model_config"
    else:
        found = f" (with {', '.join(k for k in obj if k != key)})" if key is not None and len(obj) > 1 else ""
        raise CheckpointError(
            f"{path} is a {form}{found}: weights without the model's code; pass --builder "
            "package.module:function that builds the model (and --model-code FILE.py if it lives in a script)"
        )
    _load_state(model, content, path, builder or "model_config", notes)
    return model, form, notes


EXTRA_STATE = "_extra_state"
"""The state_dict key suffix of a module's `get_extra_state()` value (any picklable object, not a tensor)."""


def is_extra_state(key: Any) -> bool:
    """Whether state_dict key `key` holds a module's extra state (`body._extra_state`, `_extra_state`)."""
    return isinstance(key, str) and (key == EXTRA_STATE or key.endswith("." + EXTRA_STATE))


def _is_state_dict(obj: Any) -> bool:
    """A non-empty mapping of tensors, where `*._extra_state` entries (`nn.Module.get_extra_state`) may hold
    any value and at least one entry is a tensor."""
    if not isinstance(obj, Mapping) or not obj:
        return False
    tensors = [isinstance(v, torch.Tensor) for k, v in obj.items() if not is_extra_state(k)]
    return bool(tensors) and all(tensors)


def _find_model_entry(obj: Mapping[str, Any]) -> tuple[str | None, Any]:
    """(key, state_dict or module) of a training dict; (None, obj) when `obj` itself is a state_dict."""
    if _is_state_dict(obj):
        return None, obj
    for key in STATE_DICT_KEYS:
        v = obj.get(key)
        if isinstance(v, nn.Module) or _is_state_dict(v):
            return key, v
    return None, None


def _reference_model(config: Mapping[str, Any], path: Path) -> nn.Module:
    from mmoe_inspect.loading._payload import check_model_counts, check_model_size
    from mmoe_inspect.models.build import build_model
    from mmoe_inspect.models.config import ModelConfig

    try:
        parsed = ModelConfig.from_dict(dict(config))
        check_model_counts(parsed.params, len(parsed.tasks), f"{path}: its model_config")
        check_model_size(lambda: build_model(parsed), f"{path}: its model_config")
        return build_model(parsed)
    except CheckpointError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError) as exc:
        raise CheckpointError(f"{path}: its model_config does not build a model: {_one_line(exc)}") from None


def _load_state(model: nn.Module, state: Mapping[str, Any], path: Path, by: str, notes: list[str]) -> None:
    """`model.load_state_dict(state)` strictly, after stripping a wrapper prefix; one-line mismatch errors."""
    from mmoe_inspect.loading._payload import check_tensors

    expected = model.state_dict()
    state = dict(state)
    check_tensors({k: v for k, v in state.items() if not is_extra_state(k)}, "state_dict", path)
    for prefix in _PREFIXES:
        if set(state) != set(expected) and state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
            notes.append(f"state_dict keys carried the prefix {prefix!r}; stripped it")
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: checkpoint {list(state[k].shape)} vs model {list(v.shape)}"
        for k, v in expected.items()
        if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(
                f"{len(missing)} missing ({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''})"
            )
        if unexpected:
            more = " ..." if len(unexpected) > 3 else ""
            parts.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])}{more})")
        if shapes:
            parts.append(f"{len(shapes)} of another shape ({'; '.join(shapes[:2])})")
        raise StateDictMismatchError(
            f"the state_dict in {path.name} does not fit the model built by {by} ({type(model).__name__}): "
            f"{', '.join(parts)}; build the model with the same code and arguments as in training"
        )
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, ValueError, NotImplementedError) as exc:
        reason = " ".join(str(exc).split())
        reason = reason.split("Error(s) in loading state_dict for", 1)[-1]
        raise StateDictMismatchError(
            f"the state_dict in {path.name} does not load into the model built by {by}: {reason[:300]}"
        ) from None


def _device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise CheckpointError(
            f"--device {device!r} is not a device (use cpu, cuda, cuda:1, mps, ...)"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError(f"--device {device}: CUDA is not available on this machine")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise CheckpointError(f"--device {device}: Apple MPS is not available on this machine (use cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise CheckpointError(
            f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0"
        )
    if dev.type == "cpu":
        if dev.index not in (None, 0):
            raise CheckpointError(f"--device {device}: the CPU has no index {dev.index}; use cpu")
        return torch.device("cpu")  # torch.load's map_location knows "cpu", not "cpu:0"
    if dev.type not in ("cpu", "cuda", "mps", "xpu", "hpu", "npu", "privateuseone"):
        raise CheckpointError(
            f"--device {device}: a {dev.type} device holds no data a model can run on; use cpu or cuda"
        )
    return dev
