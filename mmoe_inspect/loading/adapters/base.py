"""The adapter interface (`Adapter`) and the registry (`register`, `adapter_for`); see the package docstring."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mmoe_inspect.data.inputs import (
    INPUT_MODES,
    CollateInputs,
    FrameInputs,
    InputColumn,
    InputMappingError,
    InputMode,
    with_names,
)
from mmoe_inspect.loading._code import resolve_callable, user_code

__all__ = ["ADAPTERS", "Adapter", "adapter_for", "register"]


def _nothing(_model: nn.Module) -> Any:
    return None


@dataclass(frozen=True)
class Adapter:
    """What one library's models need: input columns and convention, task names/kinds, quirks.

    `columns(model)` lists the data columns in input order; `input` is "dict" or "tensor" (or a
    function of the model); `task_names(model)` / `task_kinds(model)` / `n_tasks(model)` return None
    when the model does not say; `device_attribute` marks models whose forward builds tensors on a
    stored `model.device` string (DeepCTR-Torch). `models` lists the supported classes (docs only).
    """

    name: str
    module: str
    columns: Callable[[nn.Module], Sequence[InputColumn]]
    input: InputMode | Callable[[nn.Module], InputMode] = "dict"
    task_names: Callable[[nn.Module], Sequence[str] | None] = _nothing
    task_kinds: Callable[[nn.Module], Sequence[str] | None] = _nothing
    n_tasks: Callable[[nn.Module], int | None] = _nothing
    device_attribute: bool = False
    models: tuple[str, ...] = field(default_factory=tuple)

    def matches(self, model: nn.Module) -> bool:
        """Whether the model's class (or a base class) is defined under `module`."""
        return bool(self.module) and any(
            c.__module__ == self.module or c.__module__.startswith(self.module + ".")
            for c in type(model).__mro__
        )

    def input_mode(self, model: nn.Module) -> InputMode:
        return self.input(model) if callable(self.input) else self.input

    def input_fn(
        self,
        model: nn.Module,
        *,
        input: InputMode | None = None,
        features: Sequence[str] | None = None,
        collate: str | Callable[[Any], Any] | None = None,
    ) -> FrameInputs | CollateInputs:
        """The row → input function for `model`: the adapter's columns and convention, or the overrides.

        `input` "dict"/"tensor" replaces the convention, `features` the column names and order,
        `collate` ("module:function" or a callable taking the pandas chunk) the whole conversion.
        """
        if input is not None and input not in INPUT_MODES:
            raise InputMappingError(f"--input must be one of {', '.join(INPUT_MODES)}, not {input!r}")
        known = list(self.columns(model))
        columns = with_names(known, features)
        if collate is not None:
            fn = collate
            if isinstance(collate, str):
                with user_code():
                    fn = resolve_callable(collate, "--collate")
            names = tuple(c.name for c in columns) if columns else None
            return CollateInputs(fn, names)  # type: ignore[arg-type]
        if not columns:
            cls = type(model)
            raise InputMappingError(
                f"no adapter knows how {cls.__module__}.{cls.__qualname__} reads its inputs; pass "
                "--features a,b,c (and --input dict|tensor) or --collate module:function"
            )
        return FrameInputs(columns, input or self.input_mode(model))

    @contextmanager
    def session(self, model: nn.Module) -> Iterator[nn.Module]:
        """Sync stale `device` attributes to the parameters' device for the duration, then restore them."""
        if not self.device_attribute:
            yield model
            return
        real = _param_device(model)
        saved = []
        for m in model.modules():
            value = m.__dict__.get("device")
            if isinstance(value, str | torch.device) and str(value) != str(real):
                saved.append((m, value))
                m.device = str(real)
        try:
            yield model
        finally:
            for m, value in saved:
                m.device = value


GENERIC = Adapter(name="generic", module="", columns=lambda _m: (), input="tensor")
"""No library matched: columns come from `--features` (one float tensor unless `--input dict`)."""

ADAPTERS: list[Adapter] = []


def register(adapter: Adapter) -> Adapter:
    """Add `adapter` to the registry (later registrations win over earlier ones)."""
    ADAPTERS.insert(0, adapter)
    return adapter


def adapter_for(model: nn.Module) -> Adapter:
    """The registered adapter whose module holds the model's class, else `GENERIC`."""
    return next((a for a in ADAPTERS if a.matches(model)), GENERIC)


def stale_device_attributes(model: nn.Module) -> list[tuple[str, str]]:
    """`(module path, value)` of `device` attributes that differ from the parameters' device."""
    real = str(_param_device(model))
    return [
        (path or "model", str(m.__dict__["device"]))
        for path, m in model.named_modules()
        if isinstance(m.__dict__.get("device"), str | torch.device) and str(m.__dict__["device"]) != real
    ]


def _param_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
