"""Trial forwards: the input forms worth trying for a model (from `forward`'s signature), each tried on a few
rows with the model left exactly as found, and the one-line error naming the flag when none runs.

Part of `mmoe_inspect.loading.input_binding` (see its docstring for the rules).

One module (over ~450 lines) on purpose: listing the candidate input forms, running them safely and
explaining why none ran are one procedure over the shared `Candidate`/`Trial` records.
"""

from __future__ import annotations

import inspect
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from mmoe_inspect.data.call import call_model, is_two_class
from mmoe_inspect.data.inputs import (
    INPUT_MODES,
    CollateInputs,
    FrameInputs,
    GroupedInputs,
    InputColumn,
    InputMappingError,
)
from mmoe_inspect.data.outputs import TASKS_FIRST_HINT, Locator, find_predictions, names_of, select
from mmoe_inspect.data.sources import DataError
from mmoe_inspect.device import model_device, to_device
from mmoe_inspect.errors import first_line
from mmoe_inspect.recording.hooks import model_mode

_IDS_PARAM = re.compile(r"cat|sparse|(^|_)ids?($|_)|emb|discrete|index|indices|token", re.I)
_DENSE_PARAM = re.compile(r"num|dense|cont|float|real|value", re.I)
_DICT_PARAM = re.compile(r"dict|batch|sample|record|feed", re.I)

# what a forward raises when it got the wrong kind of input (a tensor for a dict, a dict for a tensor, ...)
_FORM_MISMATCH = re.compile(
    r"has no attribute '(keys|items|values|get)'|only integers, slices|must be Tensor, not|"
    r"'(dict|tuple|list)' object has no attribute|values to unpack|not subscriptable|unhashable type|"
    r"invalid data type 'str'|argument 'input' \(position 1\) must be|new\(\) received an invalid|"
    r"expected Tensor as element|too many indices|takes \d+ positional argument|missing \d+ required positional",
)
_DTYPE = re.compile(
    r"same dtype|expected (scalar type|m1 and m2 to have the same dtype)|dtype.*(Double|Half|BFloat16)"
)
_WIDTH = re.compile(r"mat1 and mat2 shapes cannot be multiplied \((\d+)x(\d+) and (\d+)x(\d+)\)")


@dataclass(frozen=True)
class Candidate:
    """One input form to try: "tensor" / "dict" / "args" / "tuple" / "collate", its row → input function, and
    the words that describe it on the terminal ("ONE float32 tensor [batch, 10] of a, b, ... in file order")."""

    form: str
    fn: FrameInputs | GroupedInputs | CollateInputs
    what: str


@dataclass
class Trial:
    """A candidate's trial forward: its output, or the error it raised, or why its output is no prediction."""

    candidate: Candidate
    out: Any = None
    error: BaseException | None = None
    problem: str | None = None  # ran, but the output has no per-row predictions
    read: set[str] | None = None  # dict keys the forward read (None: all, or not a dict)

    @property
    def ran(self) -> bool:
        return self.error is None and self.problem is None


def _is_int(frame: pd.DataFrame, name: str) -> bool:
    s = frame[name]
    if isinstance(s.dtype, pd.CategoricalDtype):
        return True
    if getattr(s.dtype, "kind", "O") in "biu":
        return True
    if s.dtype.kind == "O" and len(s):
        return np.asarray(s.iloc[0]).dtype.kind in "biu"
    return False


def forward_params(model: nn.Module) -> tuple[list[inspect.Parameter], bool]:
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


def _keyword_only(model: nn.Module) -> list[str]:
    """Required keyword-only parameters of `forward` (`forward(self, *, dense, ids)`)."""
    try:
        sig = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return []
    return [p.name for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY and p.default is p.empty]


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


def short(names: Sequence[str], n: int = 6) -> str:
    names = list(names)
    return (
        ", ".join(names)
        if len(names) <= n
        else ", ".join(names[: n - 1]) + f", ... {names[-1]} ({len(names)})"
    )


def cls_name(model: nn.Module) -> str:
    return type(model).__qualname__


def candidates(
    model: nn.Module, frame: pd.DataFrame, cols: Sequence[str], input: str | None
) -> list[Candidate]:
    """The input forms worth a trial, most likely first (from `forward`'s signature)."""
    columns = tuple(InputColumn(c) for c in cols)
    ints = tuple(c for c in columns if _is_int(frame, c.name))
    floats = tuple(c for c in columns if not _is_int(frame, c.name))
    tensor = Candidate(
        "tensor",
        FrameInputs(columns, "tensor"),
        f"ONE float32 tensor [batch, {len(columns)}] of {short(cols)} in file order",
    )
    dict_ = Candidate(
        "dict",
        FrameInputs(columns, "dict"),
        f"a dict {{column: tensor}} of {len(columns)} columns ("
        + "; ".join(
            [f"int64 ids: {short([c.name for c in ints])}"] * bool(ints)
            + [f"float32: {short([c.name for c in floats])}"] * bool(floats)
        )
        + ")",
    )
    if input == "tensor":
        return [tensor]
    if input == "dict":
        return [dict_]

    params, star = forward_params(model)
    names = [p.name for p in params]
    if len(params) >= 2:
        out: list[Candidate] = []
        if all(n in cols for n in names):  # forward(user_id, item_id, price): each by name
            groups = tuple((InputColumn(n),) for n in names)
            what = ", ".join(f"{n}={'int64' if _is_int(frame, n) else 'float32'} [batch]" for n in names)
            out.append(
                Candidate("args", GroupedInputs(groups, "args", (True,) * len(groups)), f"forward({what})")
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
) -> list[Candidate]:
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
            f"{'int64' if g is ints else 'float32'} [batch, {len(g)}] of {short([c.name for c in g], 4)}"
            for g in groups
        ]
        if packing == "args":
            what = f"positional arguments forward({a}={parts[0]}; {b}={parts[1]})"
        else:
            what = f"one tuple ({parts[0]}; {parts[1]})"
        out.append(Candidate(packing, GroupedInputs(groups, packing), what))  # type: ignore[arg-type]
    return out


# ----------------------------------------------------------------------------- trial forwards
def same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same layout, shape and values; also for sparse tensors (a graph model's adjacency buffer), which
    `torch.equal` refuses."""
    if a.layout != b.layout or a.shape != b.shape:
        return False
    if a.layout == torch.sparse_coo:
        a, b = a.coalesce(), b.coalesce()
        return torch.equal(a._indices(), b._indices()) and torch.equal(a._values(), b._values())
    if a.layout != torch.strided:
        return torch.equal(a.to_dense(), b.to_dense())
    return torch.equal(a, b)


@contextmanager
def left_as_found(model: nn.Module) -> Iterator[None]:
    """Eval mode and no grad for a trial forward; afterwards every module's `training` flag, every buffer
    and the CPU random state are as they were (also when the forward raises)."""
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    rng = torch.get_rng_state()
    try:
        # a wrong form may make the model's code warn (a tensor indexed by a string, ...): not the user's concern
        with model_mode(model, training=False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                if not same_tensor(b, saved):
                    b.data = saved
        torch.set_rng_state(rng)


def try_all(model: nn.Module, cands: Sequence[Candidate], frame: pd.DataFrame) -> list[Trial]:
    device = model_device(model)
    trials = []
    for cand in cands:
        t = Trial(cand)
        try:
            x = to_device(cand.fn(frame), device)
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
                skipped = find_predictions(t.out, len(frame)).skipped
                hint = next((w for w in skipped if TASKS_FIRST_HINT in w), None)
                if hint is not None:
                    t.problem += f": {hint}"
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


def per_row_outputs(out: Any, batch: int) -> list[tuple[str | None, Locator]] | None:
    """`(name, locator)` of each per-row prediction in `out`, as discovery reads them
    (`data.outputs.find_predictions`); None when there is none.

    `[batch]` → one unnamed output; `[batch, T]` → T unnamed columns; a dict → its `[batch]` /
    `[batch, 1]` entries by key; a list/tuple → its `[batch]` / `[batch, 1]` entries by position; nested
    containers are walked and entries without the batch axis (an auxiliary loss) left out.
    """
    found = find_predictions(out, batch).found
    return [(n, p.loc) for n, p in zip(names_of(found), found, strict=True)] or None


def trial_outputs(
    model: nn.Module, trial: Trial, frame: pd.DataFrame
) -> list[tuple[str | None, Locator]] | None:
    """`per_row_outputs` of the trial that ran, less the entries whose length only matched the number of trial
    rows by chance: a `[E]` load vector returned next to the predictions is `[batch]`-shaped when `E` equals
    the rows of the trial. One more forward on one row fewer tells them apart; the entries whose length does
    not follow the rows are left out. When that forward fails, the first answer stands."""
    outs = per_row_outputs(trial.out, len(frame))
    if outs is None or len(frame) < 2:
        return outs
    fewer = frame.iloc[: len(frame) - 1]
    try:
        x = to_device(trial.candidate.fn(fewer), model_device(model))
        with left_as_found(model):
            again = per_row_outputs(call_model(model, x), len(fewer))
    except Exception:  # the model's own code (a fixed batch size, say): keep the first answer
        return outs
    follow = {loc for _, loc in again or ()}
    kept = [o for o in outs if o[1] in follow]
    return kept or outs


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


def _pick_output(out: Any, loc: Locator) -> torch.Tensor:
    v = select(out, loc)
    return v[:, 1] if is_two_class(v, v.shape[0]) else v.reshape(-1)


def pick(
    model: nn.Module, trials: list[Trial], cols: Sequence[str] | None, frame: pd.DataFrame, fixed: bool
) -> Trial:
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
                    f"{cls_name(model)} runs on two input forms with different predictions ({a.form}: {a.what}; "
                    f"{b.form}: {b.what}); pick one with {flag}"
                )
        return ran[0]
    raise _failure(model, trials, cols, fixed)


def _brief(exc: BaseException, n: int = 140) -> str:
    text = f"{type(exc).__name__}: {first_line(exc, default='')}".rstrip(": ")
    return text if len(text) <= n else text[: n - 3] + "..."


def _failure(
    model: nn.Module, trials: list[Trial], cols: Sequence[str] | None, fixed: bool
) -> InputMappingError:
    """One line: what was tried, the telling trial error quoted, and the flag that fixes it."""
    cls = cls_name(model)
    keyword_only = _keyword_only(model)
    if keyword_only:  # model(x) and model(*x) are the only calls; a --collate cannot name arguments
        return InputMappingError(
            f"{cls}.forward takes keyword-only arguments ({', '.join(keyword_only)}), which mmoe-inspect cannot "
            "pass (it calls model(x) or model(*x)): wrap it in a module whose forward(batch) returns "
            "self.model(**batch) (load it with --builder), then name the columns with --features"
        )
    if not trials:
        params, _ = forward_params(model)
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
            f"{cls}'s first layer takes {wanted} input columns but got {given} ({short(names)}) "
            f"[{quote}]; name the input columns in model order with --features a,b,c "
            "(and the label columns with --labels task=column)"
        )
    dtypes = {t.dtype for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()}
    if shown.error is not None and _DTYPE.search(str(shown.error)) and dtypes and torch.float32 not in dtypes:
        wanted = ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes))
        return InputMappingError(
            f"{cls}'s parameters are {wanted} but the data's features arrive as float32 [{quote}]; save the "
            "model in float32 (model.float()) or pass --collate module:function returning tensors of its dtype"
        )
    if isinstance(shown.error, KeyError) and shown.candidate.form == "dict":
        key = str(shown.error.args[0]) if shown.error.args else "?"
        return InputMappingError(
            f"{cls} reads the input {key!r}, which is not among the columns fed to it ({short(names)}) "
            f"[{quote}]; pass --collate module:function returning the batch its forward reads (a nested dict, "
            "tensors of its own), or, if the key is one input column, name the columns with --features a,b,c "
            "(a column must be named like the key)"
        )
    ran = [t for t in trials if t.problem is not None]
    if ran and (
        telling is None or len(ran) == len(trials)
    ):  # it ran; the others were the wrong kind of input
        return InputMappingError(
            f"{cls} ran on the data ({ran[0].candidate.form}) but {ran[0].problem}; return per-task "
            "predictions (a dict, a tuple or list of [batch] tensors, or a [batch, n_tasks] tensor)"
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
        f"({short(names)}): {shown.candidate.form}: {quote}; pass {hint}"
    )
