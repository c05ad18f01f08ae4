"""Bind data columns to a model no adapter knows: try the evident input forms, match outputs to labels.

A model from a library without an adapter (or a hand-written one) says nothing about which data
columns it reads or how. `bind_inputs(model, data)` works it out the way a person would, and says
what it chose:

1. **Columns.** Every numeric column is an input except the label columns: those named by `labels`
   or `tasks` (or the model's own `task_names`), and those named like labels (`label`, `click`,
   `like`, `is_click`, `y_*`, `*_label`, ... see `LABEL_WORDS`). Non-numeric columns (names,
   dates, string ids) are left out with a note; numeric id columns stay inputs (ids to embed).
2. **Input form**, from `forward`'s signature (`inspect.signature`: parameter names and annotations),
   each candidate tried by a forward on the first `TRIAL_ROWS` rows:
   - one parameter: ONE float32 tensor `[batch, D]` in file order ("tensor"), a dict
     `{column: tensor}` with int64 ids for integer columns and float32 for floats ("dict"), and a
     tuple `(int64 [batch, n_int], float32 [batch, n_float])` ("tuple"); a `dict`/`Mapping`
     annotation or a name such as `batch`/`*_dict` puts "dict" first, a `tuple` annotation "tuple";
   - several parameters: each bound to the column of its name when every name is a column, else
     `forward(categorical, numerical)`: integer columns to the parameter named like ids
     (`cat`, `sparse`, `id`, `emb`, ...), float columns to the other ("args").
   The candidate that runs and returns per-row predictions wins; two that run with different
   outputs are ambiguous (the error names `--input`).
3. **Outputs → labels.** Dict outputs are tasks named by their keys; a key with no column of its
   name is matched to the column of a close name (`like_pred`, `pred_like`, `like_prob`,
   `y_like`, `like_logit` → `like`; case-insensitive). Unnamed outputs (a tuple, a `[batch, T]`
   tensor) take the label-like columns in file order when there are exactly `T` of them. Two
   columns fitting one output, or two outputs one column, is an error naming `--labels`.

When nothing runs, the `InputMappingError` names the flag that fixes it (`--features`, `--input`,
`--labels`, `--collate`) and quotes the trial error. The trial forwards leave the model exactly as
found: eval mode and `torch.no_grad()` for the trial, every module's `training` flag restored,
buffers and the CPU random state put back (a noisy gate draws random numbers even in eval mode);
parameters and `.grad` are not touched.

Examples::

    >>> b = bind_inputs(model, "eval.parquet")        # forward(self, batch: dict[str, Tensor])
    >>> b.form, b.features, b.labels
    ('dict', ('user_id', 'item_id', 'price'), {'like_pred': 'like'})
    >>> result = mi.inspect(model, "eval.parquet", input_fn=b.input_fn, columns=b.features,
    ...                     tasks=b.tasks, labels=b.labels or True)
"""

from __future__ import annotations

import inspect
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from mmoe_inspect.data.call import call_model
from mmoe_inspect.data.sources import DataError, TableSource, require_columns
from mmoe_inspect.loading.inputs import (
    INPUT_MODES,
    CollateInputs,
    FrameInputs,
    GroupedInputs,
    InputColumn,
    InputMappingError,
    parse_labels,
    split_names,
)

__all__ = ["LABEL_WORDS", "TRIAL_ROWS", "Binding", "bind_inputs", "label_for_output"]

TRIAL_ROWS = 5
"""Rows fed to each trial forward (odd, so a batch dimension is not mistaken for 2 or 4 tasks/experts)."""

LABEL_WORDS = frozenset(
    {
        "label", "labels", "target", "targets", "y", "click", "clicks", "clicked", "ctr", "cvr", "ctcvr",
        "conversion", "convert", "converted", "purchase", "purchased", "buy", "bought", "pay", "paid",
        "cart", "like", "liked", "likes", "finish", "finished", "complete", "completed", "follow",
        "followed", "share", "shared", "comment", "commented", "favorite", "favourite", "fav", "collect",
        "watch", "watched", "skip", "skipped", "engage", "engaged", "churn", "churned", "retained",
        "retention", "outcome", "response", "reward",
    }
)  # fmt: skip
"""Column names taken for labels (also as `is_<word>`, `<word>_label`, `label_*`, `*_label`, `y_*`, `target_*`)."""

_LABEL_PATTERNS = (
    re.compile(r"^(label|target|y)([_\-]\w+|\d+)$"),
    re.compile(r"^\w+[_\-](label|target)$"),
)
_LABEL_AFFIXES = (
    ("is_", ""),
    ("has_", ""),
    ("label_", ""),
    ("target_", ""),
    ("y_", ""),
    ("", "_label"),
    ("", "_target"),
)
_OUTPUT_PREFIXES = ("pred_", "prob_", "logit_", "logits_", "score_", "y_", "p_", "out_", "output_", "yhat_")
_OUTPUT_SUFFIXES = (
    "_pred", "_preds", "_prediction", "_prob", "_probs", "_probability", "_logit", "_logits", "_score",
    "_out", "_output", "_hat", "_p", "_y",
)  # fmt: skip

_IDS_PARAM = re.compile(r"cat|sparse|id|emb|discrete|categ|index|token", re.I)
_DENSE_PARAM = re.compile(r"num|dense|cont|float|real|value", re.I)
_DICT_PARAM = re.compile(r"dict|batch|sample|record|feed", re.I)

# what a forward raises when it got the wrong kind of input (a tensor for a dict, a dict for a tensor, ...)
_FORM_MISMATCH = re.compile(
    r"has no attribute '(keys|items|values|get)'|only integers, slices|must be Tensor, not|"
    r"'(dict|tuple|list)' object has no attribute|values to unpack|not subscriptable|unhashable type|"
    r"invalid data type 'str'|argument 'input' \(position 1\) must be|new\(\) received an invalid|"
    r"expected Tensor as element|too many indices|takes \d+ positional argument|missing \d+ required positional",
)
_WIDTH = re.compile(r"mat1 and mat2 shapes cannot be multiplied \((\d+)x(\d+) and (\d+)x(\d+)\)")


@dataclass(frozen=True)
class Binding:
    """How data rows become a model's input, and which output reads which label column.

    `input_fn` turns a pandas chunk into the model input (`mmoe_inspect.data.call.call_model`
    convention); `form` is "tensor", "dict", "args", "tuple", "collate" or "adapter" (a library
    adapter's convention); `tasks` names the outputs in order when they carry no names (None: leave
    it to the model / discovery); `labels` maps task → label column; `notes` say what was chosen
    and why (shown on the terminal and kept in the topology notes and `result.meta["input_binding"]`);
    `guessed` is True when the inputs were worked out by trial forwards rather than given.
    """

    input_fn: FrameInputs | GroupedInputs | CollateInputs
    form: str
    tasks: tuple[str, ...] | None = None
    labels: dict[str, str] | None = None
    notes: tuple[str, ...] = ()
    guessed: bool = False

    @property
    def features(self) -> tuple[str, ...] | None:
        """The data columns the input function reads (None: unknown, e.g. a `--collate` function)."""
        return tuple(self.input_fn.names) if self.input_fn.names else None

    def meta(self) -> dict[str, Any]:
        """JSON-ready record for `result.meta["input_binding"]`."""
        return {
            "form": self.form,
            "guessed": self.guessed,
            "features": list(self.features or ()),
            "tasks": list(self.tasks) if self.tasks is not None else None,
            "labels": dict(self.labels) if self.labels is not None else None,
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class _Candidate:
    form: str
    fn: FrameInputs | GroupedInputs
    what: str  # "ONE float32 tensor [batch, 10] of a, b, ... in file order"


@dataclass
class _Trial:
    candidate: _Candidate
    out: Any = None
    error: BaseException | None = None
    problem: str | None = None  # ran, but the output has no per-row predictions
    read: set[str] | None = None  # dict keys the forward read (None: all, or not a dict)

    @property
    def ran(self) -> bool:
        return self.error is None and self.problem is None


# ----------------------------------------------------------------------------- public entry point
def bind_inputs(
    model: nn.Module,
    data: pd.DataFrame | TableSource | Any,
    *,
    tasks: str | Sequence[str] | None = None,
    labels: str | Mapping[str, str] | None = None,
    input: str | None = None,
    features: str | Sequence[str] | None = None,
    collate: Callable[[pd.DataFrame], Any] | None = None,
    rows: int = TRIAL_ROWS,
) -> Binding:
    """Work out how `data`'s columns feed `model` and which outputs read which labels (module docstring).

    `tasks` / `labels` / `input` / `features` / `collate` are what the user said (the CLI's
    `--tasks/--labels/--input/--features/--collate`): each fixes its part and the rest is worked
    out. Raises `InputMappingError` (one line naming the flag that fixes it) when no candidate runs
    or the labels are ambiguous. The model is left exactly as found.
    """
    if input is not None and input not in INPUT_MODES:
        raise InputMappingError(f"--input must be one of {', '.join(INPUT_MODES)}, not {input!r}")
    source = TableSource.of(data)
    frame = _first_rows(source, rows)
    label_map = parse_labels(labels) or {}
    given_tasks = split_names(tasks, "--tasks")
    declared = _declared_tasks(model)
    names = given_tasks or declared
    columns = [str(c) for c in frame.columns]

    numeric, dropped = _numeric_columns(frame)
    known = [c for c in columns if c in set(label_map.values()) | set(names or ())]
    hinted = [c for c in numeric if c not in known and looks_like_label(c)]
    notes: list[str] = []
    if collate is not None:
        cands = [_Candidate("collate", collate, "the --collate function")]  # type: ignore[arg-type]
        chosen_cols: list[str] | None = None
    else:
        if features is not None:
            chosen_cols = split_names(features, "--features") or []
            require_columns(source, chosen_cols)
        else:
            chosen_cols = [c for c in numeric if c not in known and c not in hinted]
            if not chosen_cols:
                raise InputMappingError(
                    f"{source.name} has no numeric column left to feed {_cls(model)} after the label columns "
                    f"({', '.join(known + hinted) or 'none'}); name the inputs with --features a,b,c"
                )
        cands = _candidates(model, frame, chosen_cols, input)

    trials = _try_all(model, cands, frame)
    winner = _pick(model, trials, chosen_cols, frame, features is not None)
    out = winner.out
    outputs = per_row_outputs(out, len(frame))
    assert outputs is not None  # _pick only returns trials with per-row predictions

    # outputs -> labels; a matched column that was fed as an input is taken out and the form re-tried
    tasks_out, labels_out, label_notes, matched = _match_outputs(
        outputs, frame, numeric, label_map, given_tasks, declared, known + hinted,
        features=chosen_cols if features is not None else (),
    )  # fmt: skip
    # a matched label column fed as an input is taken out; a dict key the forward never reads too
    guessing = features is None and collate is None
    retake = [c for c in matched if c in (chosen_cols or ())] if guessing else []
    unread = [
        c for c in chosen_cols or () if winner.read is not None and c not in winner.read and c not in retake
    ]
    if guessing and (retake or (unread and winner.read)):
        chosen_cols = [c for c in chosen_cols or () if c not in retake and c not in unread]
        again = [c for c in _candidates(model, frame, chosen_cols, input) if c.form == winner.candidate.form]
        winner = _pick(model, _try_all(model, again, frame), chosen_cols, frame, False)
        hinted = [*hinted, *retake]
    else:
        unread = []

    if collate is None:
        head = f"input binding for {_cls(model)} (no adapter knows it; chosen by trial forwards on {len(frame)} rows)"
        notes.append(f"{head}: {winner.candidate.what}")
        not_fed = [c for c in known + hinted if c not in (chosen_cols or ())]
        if not_fed and features is None:
            notes.append(f"label column(s) not fed to the model: {_short(not_fed)}")
        if unread:
            notes.append(f"column(s) the forward never reads, left out of the inputs: {_short(unread)}")
        if dropped:
            notes.append(f"non-numeric column(s) left out of the inputs: {_short(dropped)}")
    notes.extend(label_notes)
    return Binding(
        winner.candidate.fn,
        winner.candidate.form,
        tasks=tasks_out,
        labels=labels_out,
        notes=tuple(notes),
        guessed=collate is None,
    )


# ----------------------------------------------------------------------------- columns
def looks_like_label(name: str) -> bool:
    """Whether a column name reads as a label (`click`, `is_click`, `label`, `y_like`, `ctr_label`, ...)."""
    low = name.lower()
    if low in LABEL_WORDS or any(p.match(low) for p in _LABEL_PATTERNS):
        return True
    return any(
        low.startswith(pre) and low.endswith(suf) and low[len(pre) : len(low) - len(suf)] in LABEL_WORDS
        for pre, suf in _LABEL_AFFIXES
    )


def _numeric_columns(frame: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(numeric columns incl. list cells and bools, non-numeric columns) in file order."""
    numeric, dropped = [], []
    for c in frame.columns:
        s = frame[c]
        kind = getattr(s.dtype, "kind", "O")
        lists = kind == "O" and len(s) > 0 and isinstance(s.iloc[0], list | tuple | np.ndarray)
        if isinstance(s.dtype, pd.CategoricalDtype) or kind in "biuf" or lists:
            numeric.append(str(c))
        else:
            dropped.append(str(c))
    return numeric, dropped


def _is_int(frame: pd.DataFrame, name: str) -> bool:
    s = frame[name]
    if isinstance(s.dtype, pd.CategoricalDtype):
        return True
    if getattr(s.dtype, "kind", "O") in "biu":
        return True
    if s.dtype.kind == "O" and len(s):
        return np.asarray(s.iloc[0]).dtype.kind in "biu"
    return False


def _first_rows(source: TableSource, rows: int) -> pd.DataFrame:
    for frame in source.iter_frames(rows, None, max_rows=rows):
        if len(frame):
            return frame
    raise DataError(f"{source.name} has no rows")


def _declared_tasks(model: nn.Module) -> list[str] | None:
    names = getattr(model, "task_names", None)
    if isinstance(names, list | tuple) and names and all(isinstance(n, str) for n in names):
        return list(names)
    return None


# ----------------------------------------------------------------------------- candidates
def _forward_params(model: nn.Module) -> tuple[list[inspect.Parameter], bool]:
    """Required positional parameters of `forward`, and whether it takes `*args`."""
    try:
        sig = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return [], True
    params = [
        p
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    star = any(p.kind is p.VAR_POSITIONAL for p in sig.parameters.values())
    return params, star


def _annotation_kind(p: inspect.Parameter) -> str | None:
    """ "dict" / "tuple" / "tensor" from a parameter's annotation (a class, a typing form or a string)."""
    a = p.annotation
    if a is p.empty:
        return None
    if isinstance(a, type):
        if issubclass(a, Mapping):
            return "dict"
        if issubclass(a, tuple | list):
            return "tuple"
        if issubclass(a, torch.Tensor):
            return "tensor"
        return None
    text = str(a).replace("typing.", "")
    if re.match(r"^(dict|Dict|Mapping|MutableMapping)\b", text):
        return "dict"
    if re.match(r"^(tuple|Tuple|list|List|Sequence)\b", text):
        return "tuple"
    if re.match(r"^(torch\.)?Tensor\b", text):
        return "tensor"
    return None


def _short(names: Sequence[str], n: int = 6) -> str:
    names = list(names)
    return (
        ", ".join(names)
        if len(names) <= n
        else ", ".join(names[: n - 1]) + f", ... {names[-1]} ({len(names)})"
    )


def _cls(model: nn.Module) -> str:
    return type(model).__qualname__


def _candidates(
    model: nn.Module, frame: pd.DataFrame, cols: Sequence[str], input: str | None
) -> list[_Candidate]:
    """The input forms worth a trial, most likely first (from `forward`'s signature)."""
    columns = tuple(InputColumn(c) for c in cols)
    ints = tuple(c for c in columns if _is_int(frame, c.name))
    floats = tuple(c for c in columns if not _is_int(frame, c.name))
    tensor = _Candidate(
        "tensor",
        FrameInputs(columns, "tensor"),
        f"ONE float32 tensor [batch, {len(columns)}] of {_short(cols)} in file order",
    )
    dict_ = _Candidate(
        "dict",
        FrameInputs(columns, "dict"),
        f"a dict {{column: tensor}} of {len(columns)} columns ("
        + "; ".join(
            [f"int64 ids: {_short([c.name for c in ints])}"] * bool(ints)
            + [f"float32: {_short([c.name for c in floats])}"] * bool(floats)
        )
        + ")",
    )
    if input == "tensor":
        return [tensor]
    if input == "dict":
        return [dict_]

    params, star = _forward_params(model)
    names = [p.name for p in params]
    if len(params) >= 2:
        out: list[_Candidate] = []
        if all(n in cols for n in names):  # forward(user_id, item_id, price): each by name
            groups = tuple((InputColumn(n),) for n in names)
            what = ", ".join(f"{n}={'int64' if _is_int(frame, n) else 'float32'} [batch]" for n in names)
            out.append(
                _Candidate("args", GroupedInputs(groups, "args", (True,) * len(groups)), f"forward({what})")
            )
        if len(params) == 2 and ints and floats:
            out.extend(_pairs(names, ints, floats, "args"))
        return out
    if not params and not star:
        return []
    first = params[0] if params else None
    kind = _annotation_kind(first) if first is not None else None
    pairs = _pairs(["inputs", "inputs"], ints, floats, "tuple") if ints and floats else []
    if kind == "dict" or (first is not None and _DICT_PARAM.search(first.name)):
        return [dict_, tensor, *pairs]
    if kind == "tuple":
        return [*pairs, tensor, dict_]
    if star and not params and ints and floats:
        return [tensor, dict_, *_pairs(["args", "args"], ints, floats, "args"), *pairs]
    return [tensor, dict_, *pairs]


def _pairs(
    names: Sequence[str], ints: tuple[InputColumn, ...], floats: tuple[InputColumn, ...], packing: str
) -> list[_Candidate]:
    """(int64 ids, float32 values) in the order the parameter names suggest; both orders when they don't."""
    a, b = names[0], names[1]
    ids_first = bool(_IDS_PARAM.search(a)) or bool(_DENSE_PARAM.search(b))
    dense_first = bool(_DENSE_PARAM.search(a)) or bool(_IDS_PARAM.search(b))
    orders = (
        [True]
        if ids_first and not dense_first
        else [False]
        if dense_first and not ids_first
        else [True, False]
    )
    out = []
    for ids in orders:
        groups = (ints, floats) if ids else (floats, ints)
        parts = [
            f"{'int64' if g is ints else 'float32'} [batch, {len(g)}] of {_short([c.name for c in g], 4)}"
            for g in groups
        ]
        if packing == "args":
            what = f"positional arguments forward({a}={parts[0]}; {b}={parts[1]})"
        else:
            what = f"one tuple ({parts[0]}; {parts[1]})"
        out.append(_Candidate(packing, GroupedInputs(groups, packing), what))  # type: ignore[arg-type]
    return out


# ----------------------------------------------------------------------------- trial forwards
@contextmanager
def left_as_found(model: nn.Module) -> Iterator[None]:
    """Eval mode and no grad for a trial forward; afterwards every module's `training` flag, every buffer
    and the CPU random state are as they were (also when the forward raises)."""
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    rng = torch.get_rng_state()
    try:
        model.eval()
        # a wrong form may make the model's code warn (a tensor indexed by a string, ...): not the user's concern
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for m, mode in modes:
            m.training = mode
        with torch.no_grad():
            for b, saved in buffers:
                if b.shape != saved.shape or not torch.equal(b, saved):
                    b.data = saved
        torch.set_rng_state(rng)


def _device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, Mapping):
        return {k: _to(v, device) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return type(x)(_to(v, device) for v in x)
    return x


def _try_all(model: nn.Module, cands: Sequence[_Candidate], frame: pd.DataFrame) -> list[_Trial]:
    device = _device(model)
    trials = []
    for cand in cands:
        t = _Trial(cand)
        try:
            x = _to(cand.fn(frame), device)
        except DataError:
            raise  # the data itself is bad (NaN, ids out of range, lists of different lengths): say so
        except Exception as exc:  # e.g. a --collate function that fails
            t.error = exc
            trials.append(t)
            continue
        if isinstance(x, dict):
            x = _ReadKeys(x)
        try:
            with left_as_found(model):
                t.out = call_model(model, x)
            t.read = x.read if isinstance(x, _ReadKeys) else None
        except Exception as exc:  # the model's own code: any error means "not this form"
            t.error = exc
        else:
            if per_row_outputs(t.out, len(frame)) is None:
                t.problem = f"its output ({_describe_out(t.out)}) holds no per-row prediction"
        trials.append(t)
    return trials


class _ReadKeys(dict):
    """A dict input that notes the keys the forward reads; `read` becomes None once it iterates (reads all)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.read: set[str] | None = set()

    def __getitem__(self, key: Any) -> Any:
        if self.read is not None:
            self.read.add(key)
        return super().__getitem__(key)

    def get(self, key: Any, default: Any = None) -> Any:
        if self.read is not None and key in self:
            self.read.add(key)
        return super().get(key, default)

    def _all(self) -> None:
        self.read = None

    def __iter__(self) -> Iterator[Any]:
        self._all()
        return super().__iter__()

    def keys(self) -> Any:
        self._all()
        return super().keys()

    def values(self) -> Any:
        self._all()
        return super().values()

    def items(self) -> Any:
        self._all()
        return super().items()


def per_row_outputs(out: Any, batch: int) -> list[tuple[str | None, str | int | None]] | None:
    """`(name, locator)` of each per-row prediction in `out`, as discovery reads them; None when there is none.

    `[batch]` → one unnamed output; `[batch, T]` → T unnamed columns; a dict → its `[batch]` /
    `[batch, 1]` entries by key; a list/tuple → its `[batch]` / `[batch, 1]` entries by position.
    """

    def per_row(v: Any) -> bool:
        return isinstance(v, torch.Tensor) and v.ndim in (1, 2) and v.shape[0] == batch and v.numel() == batch

    found: list[tuple[str | None, str | int | None]] = []
    if isinstance(out, torch.Tensor):
        if out.ndim == 1 and out.shape[0] == batch:
            found.append((None, None))
        elif out.ndim == 2 and out.shape[0] == batch:
            found.extend((None, j) for j in range(out.shape[1]))
    elif isinstance(out, Mapping):
        found.extend((str(k), k) for k, v in out.items() if per_row(v))
    elif isinstance(out, list | tuple):
        found.extend((None, j) for j, v in enumerate(out) if per_row(v))
    return found or None


def _describe_out(out: Any) -> str:
    if isinstance(out, torch.Tensor):
        return f"a tensor {list(out.shape)}"
    if isinstance(out, Mapping):
        return "a dict of " + ", ".join(
            f"{k}: {list(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}"
            for k, v in list(out.items())[:4]
        )
    if isinstance(out, list | tuple):
        return f"a {type(out).__name__} of {len(out)}"
    return type(out).__name__


def _same(a: Any, b: Any, batch: int) -> bool:
    """Whether two trial outputs hold the same per-row predictions."""
    pa, pb = per_row_outputs(a, batch), per_row_outputs(b, batch)
    if pa is None or pb is None or len(pa) != len(pb):
        return False
    for (_, la), (_, lb) in zip(pa, pb, strict=True):
        va, vb = _pick_output(a, la), _pick_output(b, lb)
        if va.shape != vb.shape or not torch.allclose(
            va.float(), vb.float(), rtol=1e-5, atol=1e-6, equal_nan=True
        ):
            return False
    return True


def _pick_output(out: Any, loc: str | int | None) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out if loc is None else out[:, int(loc)]
    return out[loc].reshape(-1)


def _pick(
    model: nn.Module, trials: list[_Trial], cols: Sequence[str] | None, frame: pd.DataFrame, fixed: bool
) -> _Trial:
    """The first trial that ran with per-row predictions; an error naming the flag when none or several disagree."""
    ran = [t for t in trials if t.ran]
    if ran:
        for other in ran[1:]:
            if not _same(ran[0].out, other.out, len(frame)):
                a, b = ran[0].candidate, other.candidate
                flag = (
                    f"--input {a.form}"
                    if {a.form, b.form} <= set(INPUT_MODES)
                    else "--collate module:function"
                )
                raise InputMappingError(
                    f"{_cls(model)} runs on two input forms with different predictions ({a.form}: {a.what}; "
                    f"{b.form}: {b.what}); pick one with {flag}"
                )
        return ran[0]
    raise _failure(model, trials, cols, fixed)


def _brief(exc: BaseException, n: int = 140) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= n else text[: n - 3] + "..."


def _failure(
    model: nn.Module, trials: list[_Trial], cols: Sequence[str] | None, fixed: bool
) -> InputMappingError:
    """One line: what was tried, the telling trial error quoted, and the flag that fixes it."""
    cls = _cls(model)
    if not trials:
        params, _ = _forward_params(model)
        sig = ", ".join(p.name for p in params)
        return InputMappingError(
            f"{cls}.forward({sig}) takes {len(params)} tensors that the data's columns cannot be split into "
            "by name or by dtype (integer ids / floats); pass --collate module:function returning the arguments"
        )
    # the telling error: the first one that is not about the kind of input (tensor vs dict vs tuple)
    errs = [t for t in trials if t.error is not None]
    telling = next((t for t in errs if not _FORM_MISMATCH.search(str(t.error))), None)
    shown = telling or (errs[0] if errs else trials[0])
    quote = _brief(shown.error) if shown.error is not None else (shown.problem or "")
    tried = ", ".join(dict.fromkeys(t.candidate.form for t in trials))
    names = list(cols or ())
    width = _WIDTH.search(str(shown.error)) if shown.error is not None else None
    if width and shown.candidate.form in ("tensor", "tuple", "args"):
        given, wanted = int(width.group(2)), int(width.group(3))
        return InputMappingError(
            f"{cls}'s first layer takes {wanted} input columns but got {given} ({_short(names)}) "
            f"[{quote}]; name the input columns in model order with --features a,b,c "
            "(and the label columns with --labels task=column)"
        )
    if isinstance(shown.error, KeyError) and shown.candidate.form == "dict":
        key = str(shown.error.args[0]) if shown.error.args else "?"
        return InputMappingError(
            f"{cls} reads the input {key!r}, which is not among the columns fed to it ({_short(names)}) "
            f"[{quote}]; name its input columns with --features a,b,c (a column must be named like the key) "
            "or pass --collate module:function"
        )
    if all(t.problem is not None for t in trials):
        return InputMappingError(
            f"{cls} ran on the data ({tried}) but {trials[0].problem}; name the outputs with a --collate "
            "module:function wrapper or write a spec (topology --write)"
        )
    forms = list(dict.fromkeys(t.candidate.form for t in trials))
    if (
        telling is None and len(forms) == 1 and forms[0] in INPUT_MODES
    ):  # the user's --input is the wrong kind
        other = next(m for m in INPUT_MODES if m != forms[0])
        return InputMappingError(
            f"{cls} does not take its input as a {forms[0]} ({quote}); pass --input {other} or leave --input out, "
            "or pass --collate module:function"
        )
    if telling is None:
        return InputMappingError(
            f"could not tell how {cls} reads its inputs (tried {tried}; {quote}); pass --input dict|tensor "
            "with --features a,b,c, or --collate module:function"
        )
    hint = (
        "--features a,b,c (the model's input columns, in order) or --collate module:function"
        if not fixed
        else "--collate module:function, or check --features"
    )
    return InputMappingError(
        f"{cls}'s forward failed on every input form tried ({tried}) with the data's columns "
        f"({_short(names)}): {shown.candidate.form}: {quote}; pass {hint}"
    )


# ----------------------------------------------------------------------------- outputs -> labels
def _stem(name: str, prefixes: Sequence[str], suffixes: Sequence[str]) -> str:
    low = name.lower()
    for p in prefixes:
        if low.startswith(p) and len(low) > len(p):
            low = low[len(p) :]
            break
    for s in suffixes:
        if low.endswith(s) and len(low) > len(s):
            low = low[: -len(s)]
            break
    return low


def label_for_output(output: str, columns: Sequence[str]) -> list[str]:
    """The columns an output named `output` reads its label from, best match level first, several = ambiguous.

    Levels: the same name (case-insensitive); the output's stem (`like_pred`, `pred_like`,
    `like_prob`, `y_like`, `like_logit` → `like`) equal to a column; the stem equal to a column's
    own stem (`is_like`, `like_label` → `like`). An empty list: no column fits.
    """
    low = output.lower()
    same = [c for c in columns if c.lower() == low]
    if same:
        return same
    stem = _stem(output, _OUTPUT_PREFIXES, _OUTPUT_SUFFIXES)
    hits = [c for c in columns if c.lower() == stem]
    if hits:
        return hits
    label_stems = {
        c: _stem(c, [p for p, _ in _LABEL_AFFIXES if p], [s for _, s in _LABEL_AFFIXES if s]) for c in columns
    }
    return [c for c in columns if label_stems[c] == stem and label_stems[c] != c.lower()]


def _match_outputs(
    outputs: list[tuple[str | None, str | int | None]],
    frame: pd.DataFrame,
    numeric: Sequence[str],
    label_map: dict[str, str],
    given_tasks: list[str] | None,
    declared: list[str] | None,
    label_like: Sequence[str],
    *,
    features: Sequence[str] = (),
) -> tuple[tuple[str, ...] | None, dict[str, str] | None, list[str], list[str]]:
    """(task names to pass or None, task → label column or None, notes, columns matched as labels)."""
    notes: list[str] = []
    n = len(outputs)
    tasks: tuple[str, ...] | None = None
    if given_tasks is not None:
        names: list[str] | None = list(given_tasks)
    elif all(k is not None for k, _ in outputs):
        names = [str(k) for k, _ in outputs]
    elif declared is not None and len(declared) == n:
        names = list(declared)
    else:
        names = None
    labels = dict(label_map)
    matched: list[str] = []
    if names is None:  # unnamed outputs: the label-like columns in file order, when they are as many
        cols = [c for c in label_like if c in numeric]
        if len(cols) == n:
            tasks = tuple(cols)
            pairs = ", ".join(f"{j} -> {c}" for j, c in enumerate(cols))
            notes.append(
                f"the model's {n} output(s) carry no names: taken in task order as the label-like columns "
                f"in file order ({pairs}); name them otherwise with --tasks a,b or --labels task=column"
            )
            matched = cols
        else:
            notes.append(
                f"the model's {n} output(s) carry no names and the data has {len(cols)} label-like column(s)"
                + (f" ({_short(cols)})" if cols else "")
                + ": no labels, so label-conditioned routing and the causal analyses are skipped; name them "
                "with --tasks a,b (labels = columns of those names) or --labels task=column"
            )
        return tasks, (labels or None), notes, matched
    given = {col: task for task, col in labels.items()}
    used: dict[str, str] = dict(given)
    close: list[str] = []
    pool = [c for c in numeric if c not in set(features)]  # columns the user named as inputs are no labels
    for task in names:
        if task in labels:
            continue
        if task in frame.columns:
            used.setdefault(task, task)
            matched.append(task)
            continue
        hits = label_for_output(task, pool)
        if not hits:
            continue
        if len(hits) > 1:
            raise InputMappingError(
                f"output {task!r} could read its label from {' or '.join(repr(h) for h in hits)}; "
                f"name it with --labels {task}={hits[0]}"
            )
        col = hits[0]
        if col in given:
            notes.append(
                f"output {task!r} reads like {col!r}, which --labels gives to {given[col]!r}: no label"
            )
            continue
        if col in used:
            raise InputMappingError(
                f"outputs {used[col]!r} and {task!r} both match the label column {col!r}; "
                f"name the one that predicts it with --labels {used[col]}={col}"
            )
        used[col] = task
        labels[task] = col
        matched.append(col)
        close.append(f"{task} -> {col}")
    if close:
        notes.append(
            f"outputs matched to label columns by close names: {', '.join(close)} (else --labels task=column)"
        )
    if (
        given_tasks is None
        and declared is not None
        and len(declared) == n
        and any(k is None for k, _ in outputs)
    ):
        tasks = None  # discovery takes the model's own `task_names`
    return tasks, (labels or None), notes, matched
