"""Where the per-task predictions sit in a model's output, however it is nested, and how to read one back.

Models return their predictions in many shapes: `{task: [batch]}`, a tuple or list of `[batch]` /
`[batch, 1]` tensors, one `[batch, T]` tensor, and, in MoE code that trains with a load-balancing loss,
any of these next to that loss: `((p_click, p_buy), aux)`, `(torch.cat(preds, 1), aux)`,
`{"preds": {...}, "aux": aux}`. One walk (`find_predictions`) reads them all the same way:

- a tensor with no batch axis (a 0-d loss, a `[E]` load vector, a Python number, None) is never a task:
  it is left out and named in `ignored`;
- a container whose batch-axis content is all in one entry is looked through (`((p1, p2), aux)` is read
  as `(p1, p2)`, `(cat, aux)` as the `[batch, T]` tensor `cat`); a lone `[batch]` / `[batch, 1]` /
  two-class entry keeps its key as the task name;
- entries that are containers of the same keys, each holding only per-row tensors
  (`{"click": {"logit", "prob"}, "buy": {...}}`), are one task each: the first reading in [0, 1] (else
  the first) is its prediction, said in `notes`;
- otherwise each entry is a task (`[batch]`, `[batch, 1]`, or `[batch, 2]` two-class: column 1) named by
  its dict key or namedtuple field, a nested container is walked the same way, and a batch-axis tensor
  of another shape (gate weights `[batch, E]`) is named in `skipped`, not a task;
- a tasks-first `[T, batch]` (or `[T, batch, 1]`) tensor, `torch.stack(preds)` on dim 0, is T tasks (row t
  is task t, `Prediction.rows_second`) when it is the only per-row content (alone, or next to an aux
  loss); beside other predictions it may be anything (experts first) and is `skipped` with the fix. Its
  orientation is decided on the batch discovery sees (61 rows, never T) and carried by the task's
  `TaskSpec.rows_second`, never re-guessed on a later batch (a last chunk of T rows is `[T, T]`).

A task's locator is what `TaskSpec.output` holds: None (the output is one `[batch]` tensor), a key or
index (a dict key, a list position, a column of a `[batch, T]` tensor), or, for a nested output, the
tuple of those steps from the outside in (`("preds", "click")`, `(0, 1)`). `select(out, loc)` reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from mmoe_inspect.data.call import is_two_class, plain_output

Step = str | int
Locator = Step | tuple[Step, ...] | None


@dataclass
class Prediction:
    """One per-row prediction found in an output: its name (a dict key, or None), locator, value `[batch]`
    (column 1 of a two-class entry) and the column of its entry that holds it."""

    name: str | None
    loc: Locator
    tensor: torch.Tensor
    column: int = 0
    entry: torch.Tensor | None = None  # the tensor the prediction was read from (before column / reshape)
    rows_second: bool = False  # `entry` is `[T, batch]` (tasks first): the prediction is its row `column`


@dataclass
class Predictions:
    """What `find_predictions` found: the predictions in output order, and the notes on what was not a task."""

    found: list[Prediction] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # entries with no batch axis (an aux loss)
    skipped: list[str] = field(default_factory=list)  # batch-axis entries that are not one value per row
    two_class: int = 0
    notes: list[str] = field(default_factory=list)  # choices made (one reading of several per task)
    tasks_first: list[tuple[tuple[Step, ...], torch.Tensor]] = field(default_factory=list)
    """`[T, batch]` entries met on the walk (path, tensor): read as T tasks only when nothing else is a prediction."""


def _per_row(t: Any, batch: int) -> bool:
    """A prediction per row: `[batch]` or `[batch, 1]`."""
    return isinstance(t, torch.Tensor) and t.ndim in (1, 2) and t.shape[0] == batch and t.numel() == batch


def _named_tuple(out: Any) -> bool:
    return isinstance(out, tuple) and isinstance(getattr(type(out), "_fields", None), tuple)


def _items(out: Any) -> list[tuple[Step, Any]] | None:
    """(key, entry) of a container: a dict's keys, a namedtuple's field names, a list's or tuple's positions."""
    if isinstance(out, Mapping):
        return list(out.items())
    if _named_tuple(out):
        return list(zip(type(out)._fields, out, strict=True))
    if isinstance(out, (list, tuple)):
        return list(enumerate(out))
    return None


def _has_rows(v: Any, batch: int, depth: int = 0) -> bool:
    """Whether `v` holds a tensor with the batch axis first (anywhere inside, for a container)."""
    v = plain_output(v)
    if isinstance(v, torch.Tensor):
        return v.ndim >= 1 and v.shape[0] == batch
    items = _items(v)
    return depth < 8 and items is not None and any(_has_rows(x, batch, depth + 1) for _, x in items)


def tasks_first(v: Any, batch: int) -> bool:
    """A tensor with the tasks first and the rows second, `[T, batch]` or `[T, batch, 1]`: what
    `torch.stack(preds)` (dim 0) makes of per-task predictions."""
    return (
        isinstance(v, torch.Tensor)
        and v.ndim in (2, 3)
        and v.shape[0] != batch
        and v.shape[1] == batch
        and (v.ndim == 2 or v.shape[2] == 1)
    )


TASKS_FIRST_HINT = (
    "the tasks first and the rows second: stack the predictions on dim 1 (`torch.stack(preds, dim=1)`)"
)
"""What to do about a `tasks_first` output (said by discovery and the binding trials)."""


def _where(path: tuple[Step, ...]) -> str:
    if not path:
        return "the output"
    return "output " + "".join(f"[{k!r}]" for k in path)


def _what(v: Any) -> str:
    if isinstance(v, torch.Tensor):
        return f"shape {list(v.shape)}"
    return type(v).__name__


def _loc(path: tuple[Step, ...]) -> Locator:
    if not path:
        return None
    return path[0] if len(path) == 1 else path


def find_predictions(out: Any, batch: int) -> Predictions:
    """The per-row predictions in `out` (see the module docstring), for a batch of `batch` rows."""
    res = Predictions()
    path: tuple[Step, ...] = ()
    out = plain_output(out)
    # look through containers whose batch-axis content is all in one entry (a prediction next to an aux loss)
    while (items := _items(out)) is not None:
        rows = [(k, v) for k, v in items if _has_rows(v, batch)]
        if len(rows) != 1:
            break
        key, v = rows[0]
        v = plain_output(v)
        if isinstance(v, torch.Tensor) and (_per_row(v, batch) or is_two_class(v, batch)):
            break  # a single named prediction: keep its key
        res.ignored += [f"{_where((*path, k))} ({_what(x)})" for k, x in items if k != key]
        path, out = (*path, key), v
    if isinstance(out, torch.Tensor):
        if out.ndim == 1 and out.shape[0] == batch:
            res.found.append(Prediction(None, _loc(path), out, 0, out))
        elif out.ndim == 2 and out.shape[0] == batch:
            for j in range(out.shape[1]):
                res.found.append(Prediction(None, (*path, j) if path else j, out[:, j], 0, out))
        elif tasks_first(out, batch):
            res.tasks_first.append((path, out))
        else:
            res.skipped.append(f"{_where(path)} ({_what(out)})")
    else:
        _walk(out, path, batch, res, 0)
    _tasks_first(res)
    return res


def _tasks_first(res: Predictions) -> None:
    """The `[T, batch]` entries of `res`: each row a task (`rows_second`) when they are the only per-row content
    (`torch.stack(preds)` alone or next to an aux loss); next to other predictions, not tasks (`skipped`, with
    the fix). Their orientation is decided here, once, on a batch whose size differs from T, and carried by
    each task's `rows_second`: a later batch of T rows reads the same way (a `[2, 2]` is not re-guessed)."""
    if res.found or len(res.tasks_first) != 1:
        res.skipped += [f"{_where(p)} ({_what(v)}: {TASKS_FIRST_HINT})" for p, v in res.tasks_first]
        return
    path, v = res.tasks_first[0]
    for j in range(v.shape[0]):
        res.found.append(Prediction(None, _loc(path), v[j].reshape(-1), j, v, rows_second=True))
    res.notes.append(
        f"{_where(path)} ({_what(v)}) holds the tasks first and the rows second: row t is task t's prediction"
    )


def _views(items: list[tuple[Step, Any]], batch: int) -> list[Step] | None:
    """The inner keys when every entry is a container of the same keys, each holding only per-row tensors
    (at least two): `{"click": {"logit", "prob"}, "buy": {"logit", "prob"}}`, several readings of ONE
    prediction per task, not several tasks each."""
    keys: list[Step] | None = None
    for _, v in items:
        inner = _items(plain_output(v))
        if inner is None or len(inner) < 2 or not all(_per_row(plain_output(x), batch) for _, x in inner):
            return None
        ks = [k for k, _ in inner]
        if keys is not None and ks != keys:
            return None
        keys = ks
    return keys if len(items) >= 2 else None


def _probability(v: torch.Tensor) -> bool:
    with torch.no_grad():
        x = v.detach()
        return bool(x.is_floating_point() and torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1)


def _walk(out: Any, path: tuple[Step, ...], batch: int, res: Predictions, depth: int) -> None:
    items = _items(out) or []
    views = _views(items, batch)
    if views is not None:  # one task per entry: its probability reading (else its first)
        picks: dict[Step, None] = {}
        for key, v in items:
            inner = dict(_items(plain_output(v)) or [])
            pick = next((k for k in views if _probability(plain_output(inner[k]))), views[0])
            picks[pick] = None
            t = plain_output(inner[pick])
            name = str(key) if isinstance(out, Mapping) or isinstance(key, str) else None
            res.found.append(Prediction(name, _loc((*path, key, pick)), t.reshape(-1), 0, t))
        keys = ", ".join(repr(k) for k in views)
        res.notes.append(
            f"each task's output holds {len(views)} readings ({keys}) of one prediction: took "
            f"{' or '.join(repr(k) for k in picks)} (the first with values in [0, 1], else the first)"
        )
        return
    for key, v in items:
        v = plain_output(v)
        here = (*path, key)
        name = str(key) if isinstance(out, Mapping) or isinstance(key, str) else None
        if _per_row(v, batch):
            res.found.append(Prediction(name, _loc(here), v.reshape(-1), 0, v))
        elif is_two_class(v, batch):
            res.found.append(Prediction(name, _loc(here), v[:, 1], 1, v))
            res.two_class += 1
        elif tasks_first(v, batch):
            res.tasks_first.append((here, v))
        elif not _has_rows(v, batch):
            res.ignored.append(f"{_where(here)} ({_what(v)})")
        elif _items(v) is not None and depth < 8:
            _walk(v, here, batch, res, depth + 1)
        else:
            res.skipped.append(f"{_where(here)} ({_what(v)})")


def names_of(found: list[Prediction]) -> list[str | None]:
    """Each prediction's name: its dict key, or the whole path joined by '.' where two keys are alike."""
    names = [p.name for p in found]
    seen = [n for n in names if n is not None]
    if len(set(seen)) == len(seen):
        return names
    return [".".join(map(str, p.loc)) if isinstance(p.loc, tuple) else p.name for p in found]


def select(out: Any, loc: Locator) -> Any:
    """The entry at `loc` in `out`: each step is a dict key, a list/tuple position, or a column of a 2-d tensor.

    Raises KeyError, IndexError, TypeError or ValueError when `loc` is not in `out`.
    """
    v = plain_output(out)
    if loc is None:
        return v
    for step in loc if isinstance(loc, tuple) else (loc,):
        if isinstance(v, Mapping):
            v = v[step]
        elif isinstance(v, torch.Tensor):
            if v.dim() != 2:
                raise IndexError(f"a tensor of shape {list(v.shape)} has no column {step!r}")
            v = v[:, int(step)]
        elif _named_tuple(v) and isinstance(step, str):
            v = getattr(v, step)
        elif isinstance(v, (list, tuple)):
            v = v[int(step)]
        else:
            raise TypeError(f"{type(v).__name__} cannot be indexed by {step!r}")
        v = plain_output(v)
    return v


def task_values(entry: torch.Tensor, column: int, rows_second: bool = False) -> torch.Tensor:
    """A task's `[batch]` prediction from the entry its locator reads: row `column` of a tasks-first
    `[T, batch]` / `[T, batch, 1]` entry, column `column` of a `[batch, C]` one, a `[batch]` one whole."""
    if rows_second:
        return entry.reshape(entry.shape[0], -1)[column]
    if entry.dim() != 1:
        return entry.reshape(entry.shape[0], -1)[:, column]
    return entry


def task_entry(out: Any, loc: Locator, name: str, index: int, rows_second: bool = False) -> Any:
    """Task `index` (named `name`)'s entry in `out`: `select(out, loc)`, or with no locator the entry a task
    has always been read from: the dict key `name`, column `index` of a `[batch, T]` tensor (a `[batch]`
    tensor whole), position `index` of a list/tuple; with `rows_second`, the tasks-first entry at `loc`."""
    out = plain_output(out)
    if rows_second:  # the whole `[T, batch]` entry (the output itself when `loc` is None)
        return select(out, loc)
    if loc is None:
        if isinstance(out, Mapping):
            return out[name]
        if isinstance(out, torch.Tensor):
            return out[:, index] if out.dim() == 2 else out
        loc = index
    return select(out, loc)
