"""Library adapters: how a model from a given library reads data rows, names its tasks and kinds.

An adapter is one declarative `Adapter` entry, chosen from the module of the model's class (or of a
base class, so subclasses of a library model match too). Adding a library is a short file that
builds an `Adapter` and calls `register(...)`; see `rechub.py` and `deepctr.py`.

Examples::

    >>> adapter = adapter_for(model)                  # torch-rechub MMOE -> the "torch-rechub" adapter
    >>> fn = adapter.input_fn(model)                  # FrameInputs: pandas chunk -> {name: tensor}
    >>> with adapter.session(model):                  # DeepCTR-Torch: model.device synced, then restored
    ...     result = inspect(model, "eval.parquet", input_fn=fn, columns=fn.names,
    ...                      tasks=adapter.task_names(model), task_kinds=adapter.task_kinds(model))
"""

from mmoe_inspect.loading.adapters import deepctr, rechub, reference  # noqa: F401  (registers them)
from mmoe_inspect.loading.adapters.base import (
    ADAPTERS,
    GENERIC,
    Adapter,
    adapter_for,
    register,
    stale_device_attributes,
)

__all__ = ["ADAPTERS", "GENERIC", "Adapter", "adapter_for", "register", "stale_device_attributes"]
