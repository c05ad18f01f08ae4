"""`distributed_run`: a command as one rank of a torchrun job (see `mmoe_inspect.distributed`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING

from ._common import LoadOptions, OptionError, err, out

if TYPE_CHECKING:
    from mmoe_inspect.distributed import DistContext


@contextmanager
def distributed_run(
    wanted: bool | None, load: LoadOptions, timeout_s: float | None = None
) -> Iterator[tuple[DistContext | None, LoadOptions]]:
    """`(context, load options)` of this process: `(None, load)` for a single-process run, else this rank's.

    `wanted` None means "when launched by torchrun with several processes". A CUDA `--device`
    without an index becomes `cuda:LOCAL_RANK` (one GPU per rank). Ranks other than 0 print nothing
    (their consoles stay quiet until the process ends: rank 0 prints every rank's error). An error
    raised inside reaches every rank; the process group is destroyed on the way out.
    """
    from mmoe_inspect.distributed import (
        DistributedError,
        agreed_errors,
        init_from_env,
        launched_by_torchrun,
        shutdown,
    )

    if not (launched_by_torchrun() if wanted is None else wanted):
        yield None, load
        return
    import os

    import torch

    device = torch.device(load.device) if _is_device(load.device) else None
    if device is not None and device.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(f"--device {load.device}: CUDA is not available on this machine")
        if device.index is None:
            load = replace(load, device=f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    try:
        ctx = init_from_env(load.device if device is not None else "cpu", timeout_s)
    except DistributedError as exc:
        raise OptionError(str(exc)) from None
    if not ctx.is_main:
        out.quiet = err.quiet = True
    try:
        with agreed_errors(ctx):
            yield ctx, load
    finally:
        shutdown(ctx)


def _is_device(text: str) -> bool:
    import torch

    try:
        torch.device(text)
    except (RuntimeError, ValueError):
        return False  # the loader reports a bad --device with its own one-line error
    return True
