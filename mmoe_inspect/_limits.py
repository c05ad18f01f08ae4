"""Resource limits checked before any costly work, each raisable with an environment variable.

A small hostile file must not make the tool allocate, inflate or build without bound: every limit
below is checked from what the file declares (zip entry sizes, tensor shapes, a model_config's
parameter count, the first bytes of a data file) before the work starts, and an input over a limit
is one line naming the limit and the variable that raises it (exit code 2).

| limit                                        | default | variable                      |
|----------------------------------------------|---------|-------------------------------|
| bytes of one pickle inside a checkpoint      | 64 MiB  | MMOE_INSPECT_MAX_PICKLE_MB    |
| opcodes of one pickle                        | 5 M     | MMOE_INSPECT_MAX_PICKLE_OPS   |
| memory of the tensors a checkpoint declares  | 16 GiB  | MMOE_INSPECT_MAX_TENSOR_GB    |
| parameters of a model built from model_config| 1 G     | MMOE_INSPECT_MAX_PARAMS       |
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass

from .errors import MmoeInspectError


class LimitError(MmoeInspectError, ValueError):
    """A resource-limit variable (MMOE_INSPECT_MAX_*) set to something that is not a positive number."""


@dataclass(frozen=True)
class Limit:
    """One limit: its default, the environment variable that overrides it, and its unit's size."""

    default: float
    env: str
    unit: int = 1
    what: str = ""

    @property
    def value(self) -> int:
        """The limit in base units (bytes, opcodes, parameters), read from the environment now ("inf": none).

        A value that is no positive number is one line naming the variable: `inf` crashed the command
        (OverflowError) and `abc`, `0`, `-1` or `nan` silently kept the default the user meant to change."""
        raw = os.environ.get(self.env)
        if raw is None or not raw.strip():
            return int(self.default * self.unit)
        try:
            number = float(raw)
        except ValueError:
            number = math.nan
        if math.isinf(number) and number > 0:
            return sys.maxsize
        if not number > 0:
            raise LimitError(f"{self.env}={raw!r} is not a positive number ({self.what}; 'inf' for no limit)")
        return min(int(number * self.unit), sys.maxsize)

    def hint(self) -> str:
        return f"set {self.env} to raise the limit ({self.what})"


PICKLE_BYTES = Limit(64, "MMOE_INSPECT_MAX_PICKLE_MB", 1 << 20, "in MiB; default 64")
PICKLE_OPS = Limit(5_000_000, "MMOE_INSPECT_MAX_PICKLE_OPS", 1, "opcodes; default 5000000")
TENSOR_BYTES = Limit(16, "MMOE_INSPECT_MAX_TENSOR_GB", 1 << 30, "in GiB; default 16")
MAX_BATCH_ROWS = 1 << 24
"""Largest batch a pass reads at once (16,777,216 rows): far beyond what fits a forward's memory, and
below where row counts overflow the int64 arithmetic of the data readers."""

MODEL_PARAMS = Limit(1e9, "MMOE_INSPECT_MAX_PARAMS", 1, "parameters; default 1000000000")


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"
