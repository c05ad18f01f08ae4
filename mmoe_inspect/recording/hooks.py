"""`HookSession`: the one base of every context manager that hooks a model, and `model_mode`.

A hook session registers forward hooks (and context managers such as the function taps) on a model,
and on exit, also when a forward or a registration raises, removes every handle, exits every entered
context and puts each module's own `training` flag back: the model is left exactly as found. The
recorder, the causal interventions, the attribution session and the training monitor's hooks all
derive from it, so that guarantee is written once.

Handles are `torch.utils.hooks.RemovableHandle` objects, whose `remove()` is idempotent; they are
kept on a `contextlib.ExitStack`, which unwinds in reverse order and keeps unwinding when one step
raises. The mode snapshot is restored last, after every hook is gone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import ClassVar, TypeVar

from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = ["HookSession", "model_mode"]

_C = TypeVar("_C")
_S = TypeVar("_S", bound="HookSession")


@contextmanager
def model_mode(model: nn.Module, training: bool = False) -> Iterator[nn.Module]:
    """Put `model` in eval (or train) mode and put every module's own flag back afterwards."""
    saved = [(m, m.training) for m in model.modules()]
    model.train(training)
    try:
        yield model
    finally:
        for m, flag in saved:
            m.training = flag


class HookSession:
    """Base of a context manager that hooks `model` for the length of a `with` block.

    Subclasses implement `_register()`, calling `add_handle(module.register_forward_hook(...))` and
    `enter_context(cm)` in the order their hooks must run. `__enter__` puts every module in the mode
    `training_mode` names (False: eval; None: leave modes alone, e.g. for hooks on a model in
    training) and registers; `attach()` registers without touching modes. `close()` (called by
    `__exit__`, and by `attach()` when a registration raises) removes every hook, exits every
    entered context, then restores the modes; it is idempotent, and a closed session can be entered
    again.
    """

    training_mode: ClassVar[bool | None] = False

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._hooks = ExitStack()  # handles and entered contexts, unwound last-in first-out
        self._mode: AbstractContextManager[nn.Module] | None = None

    # ----------------------------------------------------------------- for subclasses
    def _register(self) -> None:
        """Register this session's hooks with `add_handle` / `enter_context`."""
        raise NotImplementedError

    def _closing(self) -> None:
        """Drop per-session state; runs after the hooks are removed and before modes are restored."""

    def add_handle(self, handle: RemovableHandle) -> RemovableHandle:
        """Keep `handle` to be removed on `close()`; returns it."""
        self._hooks.callback(handle.remove)
        return handle

    def enter_context(self, cm: AbstractContextManager[_C]) -> _C:
        """Enter `cm` now and exit it on `close()` (with the hooks, before the modes are restored)."""
        return self._hooks.enter_context(cm)

    # ---------------------------------------------------------------------- lifecycle
    def __enter__(self: _S) -> _S:
        if self.training_mode is not None:
            mode = model_mode(self.model, training=self.training_mode)
            mode.__enter__()
            self._mode = mode
        self.attach()
        return self

    def attach(self) -> None:
        """Register every hook without touching modes; `close()` undoes it (also on a failed registration)."""
        try:
            self._register()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove every hook, exit every entered context, then restore modes; idempotent."""
        hooks, self._hooks = self._hooks, ExitStack()
        mode, self._mode = self._mode, None
        try:
            hooks.close()
        finally:
            try:
                self._closing()
            finally:
                if mode is not None:
                    mode.__exit__(None, None, None)
