"""The input layer of a model: where each data feature becomes floats that gradients can flow through.

Integrated Gradients walks a straight path in a float space; ids are not such a space. So each
feature is attributed where it first becomes floats:

* a dense feature at its place in the model input: a dict entry (`{name: [batch] or [batch, w]}`)
  or columns `[start, stop)` of one input tensor `[batch, D]` (or of a dict entry);
* a categorical feature at the OUTPUT of the embedding module that looks its ids up (any
  `nn.Embedding` / `nn.EmbeddingBag` in the model): during the attribution forward a hook replaces
  that output with the interpolated embedding (Captum's layer attribution, done for every
  embedding call at once so one path covers dense and categorical features together).

Which embedding call reads which feature is found on one probe forward by matching each call's ids
with the integer-valued columns of the input. Shared tables (torch-rechub `shared_with`,
DeepCTR-Torch `embedding_name`), ids travelling as floats (DeepCTR-Torch) and embeddings anywhere in
a model found by discovery need no library code. The input conventions differ only in where a
feature's columns sit in the input, which `Layout` says.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from mmoe_inspect.data.inputs import InputColumn
from mmoe_inspect.errors import MmoeInspectError

InputConvention = Literal["dict", "tensor"]
EMBEDDING_TYPES: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)


class AttributionError(MmoeInspectError, ValueError):
    """The model's inputs, topology or options do not allow this attribution (the message says why)."""

    bad_input = False  # the CLI catches it where it runs attributions and skips them, saying why


@dataclass(frozen=True)
class EmbeddingCall:
    """One embedding lookup seen on the probe forward: module path, call number, ids and output (copies)."""

    module: str
    call: int
    ids: Tensor
    out: Tensor


@dataclass(frozen=True)
class DenseSlot:
    """A dense feature attributed at its place in the model input."""

    feature: str


@dataclass(frozen=True)
class EmbeddingSlot:
    """A categorical feature attributed at call `call` (per forward) of embedding module `module`."""

    feature: str
    module: str
    call: int


# ------------------------------------------------------------------------------------ input layout
@dataclass(frozen=True)
class Place:
    """Where a feature sits in the model input: dict `key` (None: the input tensor itself) and
    `span` `[start, stop)` of that tensor's columns (None: the whole tensor)."""

    key: str | None
    span: tuple[int, int] | None = None


class Layout:
    """Features → places in the model input, and back: the only code that knows the input convention.

    The input is one tensor `[batch, D]` ("tensor") or a dict of tensors ("dict"). In a dict, a
    feature named like a key owns that entry (torch-rechub, our reference models) and `key[i]` names
    column i of a `[batch, w]` entry. Otherwise features are positional: in order, `width` columns
    each, they take the columns of the tensor (DeepCTR-Torch's `feature_index` layout) or of the dict
    entries in order (`{"dense": [b, 6], "cat": [b, 3]}` blocks). Entries no feature covers are held
    at their values (`extra`).
    """

    def __init__(self, x: Any, columns: Sequence[InputColumn]) -> None:
        if isinstance(x, Tensor):
            self.name: InputConvention = "tensor"
            leaves: list[tuple[str | None, Tensor]] = [(None, x)]
        elif isinstance(x, Mapping) and all(isinstance(v, Tensor) for v in x.values()):
            self.name = "dict"
            leaves = list(x.items())
        else:
            raise AttributionError(
                f"the model input is a {type(x).__name__}; attributions support one [batch, D] tensor or a "
                "dict of tensors (write an input_fn that returns one of those)"
            )
        self.places: dict[str, Place] = {}
        entries = dict(leaves)
        for c in columns:
            place = _named_place(c.name, entries) if self.name == "dict" else None
            if place is not None:
                self.places[c.name] = place
        positional = [c for c in columns if c.name not in self.places]
        if self.name == "dict" and positional and self.places:
            raise AttributionError(
                f"feature(s) {[c.name for c in positional]} are not entries of the model input "
                f"(keys {list(entries)}); name features by key, or `key[i]` for column i of an entry"
            )
        covered = {p.key for p in self.places.values()}
        free = [(k, v) for k, v in leaves if k not in covered]
        i, col = 0, 0
        for c in positional:
            if i >= len(free):
                raise AttributionError(self._misfit(x, columns))
            key, leaf = free[i]
            total = 1 if leaf.dim() == 1 else int(leaf.shape[1]) if leaf.dim() == 2 else None
            width = c.width if c.width is not None else (total - col if total is not None else None)
            if total is None or leaf.dim() == 1:
                if col or (width is not None and total is not None and width != total):
                    raise AttributionError(self._misfit(x, columns))
                self.places[c.name], i = Place(key), i + 1
                continue
            if width is None or width < 1 or col + width > total:
                raise AttributionError(self._misfit(x, columns))
            whole = col == 0 and width == total
            self.places[c.name] = Place(key) if whole else Place(key, (col, col + width))
            col += width
            if col == total:
                i, col = i + 1, 0
        if col or (self.name == "tensor" and i < len(free)):
            raise AttributionError(self._misfit(x, columns))
        self.extra = tuple(str(k) for k, _ in free[i:])

    @staticmethod
    def _misfit(x: Any, columns: Sequence[InputColumn]) -> str:
        shapes = {k: tuple(v.shape) for k, v in x.items()} if isinstance(x, Mapping) else tuple(x.shape)
        return (
            f"the features {[c.name for c in columns]} (widths {[c.width for c in columns]}) do not fit the "
            f"model input {shapes}; pass the model's own feature names in input order"
        )

    def _leaf(self, x: Any, key: str | None) -> Tensor:
        return x if key is None else x[key]

    def column(self, x: Any, feature: str) -> Tensor:
        """The feature's values `[batch, ...]` (a view of the input)."""
        place = self.places[feature]
        leaf = self._leaf(x, place.key)
        return leaf if place.span is None else leaf[:, place.span[0] : place.span[1]]

    def assemble(self, base: Any, values: Mapping[str, Tensor]) -> Any:
        """`base` with the features in `values` replaced (new tensors; `base` is not modified)."""
        new: dict[str | None, Tensor] = {}
        spans: dict[str | None, list[tuple[tuple[int, int], Tensor]]] = {}
        for feature, value in values.items():
            place = self.places[feature]
            if place.span is None:
                new[place.key] = value
            else:
                spans.setdefault(place.key, []).append((place.span, value))
        for key, items in spans.items():
            leaf = new.get(key, self._leaf(base, key))
            index = torch.cat([torch.arange(a, b, device=leaf.device) for (a, b), _ in items])
            source = torch.cat([v.reshape(v.shape[0], -1).to(leaf.dtype) for _, v in items], dim=1)
            new[key] = leaf.index_copy(1, index, source)
        if self.name == "tensor":
            return new.get(None, base)
        return {k: new.get(k, v) for k, v in base.items()}


# ----------------------------------------------------------------------------------- input layer
@dataclass
class InputLayer:
    """Where each feature is attributed, and how to rebuild the model input around new feature values.

    `rows` is the batch size of the input it was built on. `dense` features are attributed in the
    input itself, `embeddings` at embedding outputs;
    `unreached` are id features that no embedding call reads (not differentiable: only the ablation
    fallback can attribute them). `parts(x, calls)` gives the attribution-space tensors in slot order
    (dense slots first), `part_features` the feature of each part.
    """

    layout: Layout
    rows: int
    features: tuple[str, ...]
    dense: tuple[DenseSlot, ...]
    embeddings: tuple[EmbeddingSlot, ...]
    unreached: tuple[str, ...]
    ids: frozenset[str]
    notes: list[str] = field(default_factory=list)

    @property
    def part_features(self) -> tuple[str, ...]:
        return tuple(s.feature for s in self.dense) + tuple(s.feature for s in self.embeddings)

    @property
    def attributed(self) -> tuple[str, ...]:
        """Features Integrated Gradients reaches, in feature order."""
        reached = set(self.part_features)
        return tuple(f for f in self.features if f in reached)

    def parts(self, x: Any, calls: Sequence[EmbeddingCall]) -> tuple[Tensor, ...]:
        """Actual values in attribution space: dense columns `[batch, ...]`, embedding outputs `[batch, ..., d]`."""
        by_key = {(c.module, c.call): c.out for c in calls}
        dense = tuple(self.layout.column(x, s.feature).detach().clone().float() for s in self.dense)
        return dense + tuple(by_key[(s.module, s.call)] for s in self.embeddings)

    def raw(self, x: Any) -> tuple[Tensor, ...]:
        """Every feature's column of the input, in feature order (ids keep their dtype)."""
        return tuple(self.layout.column(x, f) for f in self.features)

    def with_dense(self, base: Any, dense: Sequence[Tensor]) -> Any:
        """`base` (already `[N, ...]` rows) with the dense features replaced by `dense` (same order as `self.dense`)."""
        values = {}
        for slot, value in zip(self.dense, dense, strict=True):
            ref = self.layout.column(base, slot.feature)
            values[slot.feature] = value.reshape(ref.shape).to(ref.dtype).clone()
        return self.layout.assemble(base, values)

    def with_raw(self, base: Any, columns: Sequence[Tensor]) -> Any:
        """`base` with every feature's column replaced by `columns` (feature order)."""
        return self.layout.assemble(base, dict(zip(self.features, columns, strict=True)))

    def reduce(self, attributions: Sequence[Tensor]) -> np.ndarray:
        """Per-part attributions → `[batch, n_features]` float64 (summed over the embedding and width dims)."""
        out = np.zeros((attributions[0].shape[0], len(self.features)))
        index = {f: i for i, f in enumerate(self.features)}
        for feature, attr in zip(self.part_features, attributions, strict=True):
            out[:, index[feature]] += attr.detach().reshape(attr.shape[0], -1).double().sum(1).cpu().numpy()
        return out


def _named_place(name: str, entries: Mapping[str | None, Tensor]) -> Place | None:
    """`key` → the whole entry; `key[i]` → column i of a `[batch, w]` entry; else None."""
    if name in entries:
        return Place(name)
    match = re.fullmatch(r"(.+)\[(\d+)\]", name)
    if match is None or match.group(1) not in entries:
        return None
    leaf, i = entries[match.group(1)], int(match.group(2))
    if leaf.dim() != 2 or i >= leaf.shape[1]:
        return None
    return Place(match.group(1), (i, i + 1))


def build_input_layer(x: Any, columns: Sequence[InputColumn], calls: Sequence[EmbeddingCall]) -> InputLayer:
    """The `InputLayer` for model input `x` (dict or `[batch, D]` tensor) and the embedding `calls` that
    `probe_embeddings` saw on a forward of `x`.

    `columns` name the features in input order (dtype "int64" marks declared ids; widths place them
    in a tensor input).
    """
    names = [c.name for c in columns]
    layout = Layout(x, columns)
    notes: list[str] = []
    if layout.extra:
        notes.append(f"input entries {list(layout.extra)} are not features: held at their values")
    n = _rows(x)
    declared = {c.name: c.dtype for c in columns}
    candidates = {}
    for f in names:
        col = layout.column(x, f)
        if _integral(col):
            candidates[f] = col.reshape(n, -1).long()
    assigned: dict[str, list[EmbeddingSlot]] = {}
    unmatched: list[str] = []
    for call in calls:
        ids = call.ids
        if ids.dim() == 0 or ids.shape[0] != n:
            unmatched.append(f"{call.module}[{call.call}]")
            continue
        flat = ids.reshape(n, -1).long()
        equal = [f for f, c in candidates.items() if c.shape == flat.shape and torch.equal(c, flat)]
        if not equal:
            unmatched.append(f"{call.module}[{call.call}]")
            continue
        parts = call.module.split(".")
        equal.sort(key=lambda f: (f not in parts, f in assigned))
        if len(equal) > 1 and equal[0] not in parts:
            notes.append(
                f"embedding {call.module} reads ids equal to features {equal} on the sampled rows; "
                f"attributed to {equal[0]!r}"
            )
        assigned.setdefault(equal[0], []).append(EmbeddingSlot(equal[0], call.module, call.call))
    if unmatched:
        notes.append(
            f"embedding call(s) {unmatched} read ids that match no input column: held at their values"
        )
    dense: list[DenseSlot] = []
    unreached: list[str] = []
    ids: set[str] = set(assigned)
    for f in names:
        if f in assigned:
            continue
        col = layout.column(x, f)
        if torch.is_floating_point(col) and declared.get(f) != "int64":
            dense.append(DenseSlot(f))
        else:
            ids.add(f)
            unreached.append(f)
    embeddings = tuple(s for f in names for s in assigned.get(f, ()))
    return InputLayer(
        layout=layout,
        rows=n,
        features=tuple(names),
        dense=tuple(dense),
        embeddings=embeddings,
        unreached=tuple(unreached),
        ids=frozenset(ids),
        notes=notes,
    )


@contextmanager
def probe_embeddings(model: nn.Module, calls: list[EmbeddingCall]) -> Iterator[None]:
    """Record every embedding lookup of the forwards run inside (ids and outputs, copied) into `calls`."""
    counts: dict[str, int] = {}
    handles: list[RemovableHandle] = []

    def reset(_module: nn.Module, _args: Any) -> None:
        counts.clear()

    def hook_for(path: str):
        def hook(_module: nn.Module, args: tuple, out: Any) -> None:
            call = counts.get(path, 0)
            counts[path] = call + 1
            if args and isinstance(args[0], Tensor) and isinstance(out, Tensor):
                calls.append(EmbeddingCall(path, call, args[0].detach().clone(), out.detach().clone()))

        return hook

    try:
        handles.append(model.register_forward_pre_hook(reset))
        for path, module in model.named_modules():
            if isinstance(module, EMBEDDING_TYPES):
                handles.append(module.register_forward_hook(hook_for(path)))
        yield
    finally:
        for h in handles:
            h.remove()


def tile(x: Any, k: int) -> Any:
    """Inputs with every tensor repeated `k` times along the batch (block-major, as Captum expands)."""
    if k == 1:
        return x
    if isinstance(x, Tensor):
        return x.repeat(k, *([1] * (x.dim() - 1))) if x.dim() else x
    if isinstance(x, Mapping):
        return {key: tile(v, k) for key, v in x.items()}
    return x


def _rows(x: Any) -> int:
    if isinstance(x, Tensor):
        return int(x.shape[0])
    return int(next(iter(x.values())).shape[0])


def _integral(col: Tensor) -> bool:
    """Whether a column can hold ids: an integer dtype, or floats that are all whole numbers."""
    if not torch.is_floating_point(col):
        return col.dtype != torch.bool
    return bool(torch.isfinite(col).all() and torch.equal(col, col.round()))
