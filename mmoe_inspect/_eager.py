"""The eager module behind a `torch.compile` wrapper, which hooks and function taps cannot see into."""

from __future__ import annotations

from torch import nn

__all__ = ["eager_module"]


def eager_module(model: nn.Module) -> tuple[nn.Module, str | None]:
    """The eager module inside a `torch.compile` wrapper (same parameters; hooks and the function-level
    tap see its calls, which compiled graphs do not run through), and a note; else `model` and None."""
    inner = getattr(model, "_orig_mod", None)
    if isinstance(inner, nn.Module) and type(model).__name__ == "OptimizedModule":
        return inner, f"{type(inner).__name__} was wrapped by torch.compile: inspected as the eager module"
    return model, None
