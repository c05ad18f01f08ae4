"""Load real checkpoints and real evaluation data, safely.

`load_model(path, ...)` detects the checkpoint form (our format, a state_dict or training dict plus
a builder, a whole pickled `nn.Module` with explicit trust; TorchScript and `torch.export` archives
are refused with a reason) and returns a `LoadedModel` whose library adapter (torch-rechub,
DeepCTR-Torch, our reference models) turns data rows into model inputs.

Examples::

    >>> from mmoe_inspect.loading import load_model
    >>> loaded = load_model("mmoe.pt", trust=True)                  # torch.save(model) of a rechub MMOE
    >>> result = loaded.inspect("eval.parquet", tasks="ctr,cvr", labels="ctr=click,cvr=buy")
    >>> fn = loaded.input_fn()                                      # or: inspect(model, df, input_fn=fn, columns=fn.names)
    >>> loaded.bind("eval.parquet").notes                           # a model no adapter knows: how its inputs were bound
"""

from mmoe_inspect.checkpoint import CheckpointError
from mmoe_inspect.data.inputs import (
    CollateInputs,
    FrameInputs,
    GroupedInputs,
    InputColumn,
    InputMappingError,
    parse_labels,
    split_names,
)
from mmoe_inspect.data.sources import (
    DataError,
    DataFileError,
    EmptyDataError,
    IdRangeError,
    LabelValueError,
    MissingColumnError,
    NonFiniteError,
    NonNumericError,
)
from mmoe_inspect.loading._code import ModelCodeError
from mmoe_inspect.loading._sniff import sniff
from mmoe_inspect.loading.adapters import ADAPTERS, GENERIC, Adapter, adapter_for, register
from mmoe_inspect.loading.checkpoints import (
    CheckpointFileError,
    StateDictMismatchError,
    UnsupportedCheckpointError,
    UntrustedCheckpointError,
    load_model,
)
from mmoe_inspect.loading.input_binding import InputBinding, bind_inputs
from mmoe_inspect.loading.loaded import LoadedModel

__all__ = [
    "ADAPTERS",
    "GENERIC",
    "Adapter",
    "CheckpointError",
    "CheckpointFileError",
    "CollateInputs",
    "DataError",
    "DataFileError",
    "EmptyDataError",
    "FrameInputs",
    "GroupedInputs",
    "IdRangeError",
    "InputBinding",
    "InputColumn",
    "InputMappingError",
    "LabelValueError",
    "LoadedModel",
    "MissingColumnError",
    "ModelCodeError",
    "NonFiniteError",
    "NonNumericError",
    "StateDictMismatchError",
    "UnsupportedCheckpointError",
    "UntrustedCheckpointError",
    "adapter_for",
    "bind_inputs",
    "load_model",
    "parse_labels",
    "register",
    "sniff",
    "split_names",
]
