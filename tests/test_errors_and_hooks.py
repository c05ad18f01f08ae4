"""The error base, the first-line helper and the hook-session base that the library shares."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
import torch
from torch import nn

import mmoe_inspect
from mmoe_inspect.errors import MmoeInspectError, first_line
from mmoe_inspect.recording.hooks import HookSession


def _error_classes() -> list[type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    names = [m.name for m in pkgutil.walk_packages(mmoe_inspect.__path__, "mmoe_inspect.")]
    for sub in ("mmoe_inspect.cli", "mmoe_inspect.reports"):  # installed from cli/ and reports/
        package = importlib.import_module(sub)
        names += [sub, *(m.name for m in pkgutil.walk_packages(package.__path__, f"{sub}."))]
    for name in names:
        if name.endswith(("lightning", "tensorboard", "__main__")):  # optional extras; entry points
            continue
        module = importlib.import_module(name)
        for obj in vars(module).values():
            if (
                isinstance(obj, type)
                and issubclass(obj, Exception)
                and obj.__module__.startswith("mmoe_inspect")
            ):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return list(found.values())


def test_every_library_error_derives_from_the_base_and_keeps_its_builtin_base() -> None:
    classes = _error_classes()
    names = {c.__name__ for c in classes}
    assert {"DataError", "CheckpointError", "TopologyError", "RecordingError", "InterventionError"} <= names
    assert {"AttributionError", "DistributedError", "ReportError", "OptionError"} <= names
    outside = [c.__name__ for c in classes if not issubclass(c, MmoeInspectError)]
    assert outside == []
    from mmoe_inspect.data.sources import DataError
    from mmoe_inspect.recording.recorder import RecordingError

    assert issubclass(DataError, ValueError) and issubclass(RecordingError, RuntimeError)


def test_bad_input_sides_match_the_cli_exit_codes() -> None:
    from mmoe_inspect.causal.interventions import InterventionError
    from mmoe_inspect.checkpoint import CheckpointError
    from mmoe_inspect.data.inputs import InputMappingError
    from mmoe_inspect.distributed import DistributedError

    assert CheckpointError.bad_input and InputMappingError.bad_input
    assert not DistributedError.bad_input and not InterventionError.bad_input


@pytest.mark.parametrize(
    ("message", "default", "expected"),
    [
        (ValueError("\n  first  \nsecond"), None, "first"),
        (ValueError(""), None, "ValueError"),
        (ValueError("   \n "), "", ""),
        ("text only\nmore", None, "text only"),
        ("", None, ""),
    ],
)
def test_first_line(message, default, expected) -> None:
    assert first_line(message, default=default) == expected


class _Failing(HookSession):
    """Registers one hook, then fails: the session must leave the model as it found it."""

    def _register(self) -> None:
        self.add_handle(self.model.register_forward_hook(lambda *_: None))
        raise RuntimeError("registration failed")


class _Counting(HookSession):
    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.calls = 0
        self.closed = 0

    def _register(self) -> None:
        def hook(*_: object) -> None:
            self.calls += 1

        self.add_handle(self.model[0].register_forward_hook(hook))

    def _closing(self) -> None:
        self.closed += 1


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hook_session_restores_modes_and_hooks_on_failure_and_on_exit() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    model.train()
    model[0].eval()  # a mixed state: each module's own flag must come back
    with pytest.raises(RuntimeError, match="registration failed"):
        _Failing(model).__enter__()
    assert _hooks(model) == 0 and model.training and not model[0].training and model[1].training

    session = _Counting(model)
    with pytest.raises(ValueError, match="boom"), session:
        assert not model.training and not model[1].training  # eval inside
        model(torch.zeros(1, 2))
        raise ValueError("boom")
    assert session.calls == 1 and session.closed == 1
    assert _hooks(model) == 0 and model.training and not model[0].training
    session.close()  # idempotent
    with session:  # a closed session can be entered again
        model(torch.zeros(1, 2))
    assert session.calls == 2 and _hooks(model) == 0


def test_training_mode_none_leaves_modes_alone() -> None:
    class Keeping(_Counting):
        training_mode = None

    model = nn.Sequential(nn.Linear(2, 2))
    model.train()
    with Keeping(model):
        assert model.training
    assert _hooks(model) == 0
