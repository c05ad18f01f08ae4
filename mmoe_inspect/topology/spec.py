"""The explicit description of a multi-task MoE model: tasks, experts, gates.

A `Topology` says which module is which gate (and over which experts, for which task), which modules
are experts, and where each task's prediction sits in the model output. Reference models declare
theirs; unknown models get one from discovery; users can write or edit one as a TOML spec file.

One module (over ~450 lines) on purpose: the spec's dataclasses and their dict/TOML reading and
validation are one file format; apart, each field would be separated from its check.
"""

from __future__ import annotations

import contextlib
import difflib
import numbers
import os
import shutil
import sys
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from mmoe_inspect.errors import MmoeInspectError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

TaskKind = Literal["binary", "regression"]
GateOutput = Literal["probs", "logits", "weights"]
GATE_OUTPUTS: tuple[str, ...] = ("probs", "logits", "weights")

SPEC_VERSION = 1
SPEC_KEYS = (
    "version",
    "source",
    "confidence",
    "architecture",
    "notes",
    "tasks",
    "experts",
    "gates",
    "unresolved",
)
"""The top-level keys of a spec (`Topology.to_dict`); any other is refused with the closest one named."""

# A discovered topology below this confidence cannot be judged (`check` exits 4, the report says so first).
LOW_CONFIDENCE = 0.5


SPEC_MAX_BYTES = 16 * 2**20  # a spec names a few dozen modules: a few KB; larger is another file


class TopologyError(MmoeInspectError, ValueError):
    """A topology (declared, discovered or read from a spec file) is inconsistent or does not fit the model."""


@dataclass(frozen=True)
class TaskSpec:
    """One prediction target.

    `output` locates the prediction in the model's output: a dict key, a column index of a
    `[batch, n_tasks]` tensor, or a position in a list/tuple; for a nested output (predictions next to an
    auxiliary loss, `((p_click, p_buy), aux)` or `{"preds": {...}, "aux": aux}`) the tuple of those steps
    from the outside in, `(0, 1)` or `("preds", "click")` (a list in a spec file); with `rows_second`, `output`
    locates a tasks-first `[T, batch]` entry and `column` is the task's row. `label` is the data column holding
    the target (defaults to the task name). `probability` says whether the output is already a
    probability (binary tasks of both real libraries and our models) rather than a logit.
    """

    name: str
    kind: TaskKind = "binary"
    output: str | int | tuple[str | int, ...] | None = None
    label: str | None = None
    probability: bool = True
    column: int = (
        0  # which column of a `[batch, C]` entry is the prediction (1: a two-class softmax's positive class)
    )
    rows_second: bool = False  # the entry is `[T, batch]` (`torch.stack(preds)`): `column` is the task's row

    @property
    def label_column(self) -> str:
        return self.label if self.label is not None else self.name


def _output_steps(task: Any) -> Any:
    """A spec file's task table with a list `output` (the steps into a nested output) made a tuple."""
    if isinstance(task, dict) and isinstance(task.get("output"), list):
        return {**task, "output": tuple(task["output"])}
    return task


@dataclass(frozen=True)
class ExpertSpec:
    """One expert network.

    `module` is the module path whose forward output is this expert's output `[batch, dim]`; for
    models whose experts are one module emitting `[batch, n_experts, dim]`, `index` selects the slice
    along dim 1. `module=None` means the expert is computed inline (no hookable output).
    `owner` is "shared" or the task name of a task-specific expert (PLE/CGC).
    `same_as` names an earlier expert whose module holds the very same parameters (tied weights): judged (and
    named) there by the expert checks; gate slots holding the two count as one expert only when they hold one
    output (see `GateSpec.slot_outputs` and `expert_slots`).
    """

    name: str
    module: str | None = None
    index: int | None = None
    owner: str = "shared"
    level: int = 0
    same_as: str | None = None


@dataclass(frozen=True)
class GateSpec:
    """One gate: per-row weights over `experts` (names, in the gate's column order).

    Where the weights are read, two ways:

    * a module gate (`op` None): the output of module `module`'s forward: probabilities
      (`output="probs"`) or logits that the model softmaxes afterwards (`output="logits"`, e.g.
      DeepCTR-Torch's `gate_dnn_final_layer`). `call` picks one call when the module runs several
      times per forward (0-based); None means every call of the module is this gate (it must run once).
    * a function-level gate (`op` set): the tensor made by the `occurrence`-th call (0-based, counted
      over one whole forward) of torch function `op` (e.g. "softmax", "sigmoid", "div", "scatter")
      while `module` is executing (nested calls included; `module=""` is the model's own forward).
      `arg` -1 captures the op's (first) output, -2 its second output and so on; `arg` k >= 0 its k-th
      tensor argument. This records gates computed inline (a temperature, a mask, top-k
      renormalisation) that no module returns.
    * a top-k gate (`index_op` set, function level): the captured tensor holds only the k chosen weights
      per row `[batch, k]`; their expert indices `[batch, k]` are read the same way from call
      `index_occurrence` of `index_op` (`index_arg` -2: its second output, e.g. `topk`'s indices) under
      the same `module`, and the gate is the `[batch, E]` tensor with zeros elsewhere (Mixtral-style
      routing, per-expert dispatch).

    * a fused gate (`part_dim` set, module or function level): the captured tensor holds the gates of
      several tasks along axis `part_dim` (`[batch, T, E]`: one `Linear(d, T * E)` viewed and softmaxed,
      mixed with the experts by one `bmm`), and this gate is its slice `part`; `dim` and `batch_dim`
      are axes of the whole captured tensor.
    * a two-way gate (`two_way`, module or function level): two experts blended by one weight per row,
      `torch.lerp(x0, x1, w)`, `(1 - w) * x0 + w * x1` or `x0 + w * (x1 - x0)`: the captured tensor holds
      `w` (size 1 on `dim`, e.g. a sigmoid's `[batch, 1]`; for a `[batch]` w, `dim` 1) and the gate is `[1 - w, w]` `[batch, 2]` over
      `experts = [x0, x1]` (the expert weighted by `1 - w` first). No tensor of the model holds that pair:
      the recorder builds it, and causal edits write its second column back as `w` (so only edits that
      keep each row summing to 1 can be applied). With `part_dim` set (= `dim`), `w` is slice `part` of that
      axis kept as size 1: one `[batch, T]` tensor holding T tasks' weights, blended by `s[:, k:k+1]`.

    `output`: "probs" (rows sum to 1), "logits" (softmaxed over the expert axis by the recorder) or
    "weights" (non-negative weights that need not sum to 1: sigmoid gates, learned scalar mixtures;
    statistics that assume the simplex, such as entropy and JSD, are not computed for them).
    `dim` is the expert axis of the captured tensor (`[batch, E]` and `[batch, E, 1]` both use 1);
    `batch_dim` its batch axis, or -1 for weights without one (`[E]`, the same for every row).
    `task` is the task served; None for a shared gate (PLE non-final levels, OMoE's single gate).
    `layer_call` says which run of its layer the gate belongs to (0-based) when one MMoE layer runs several
    times per forward on different inputs (user and item features): each run mixes its own expert outputs
    and gives every task a gate, and only gates of one run are compared. None: one run (one gate module
    called once per task with a task embedding gives each task one gate: its calls are compared).
    `slot_outputs` says which slots hold the same expert OUTPUT (one id per slot, equal ids: one output): the
    same tensor, or one module (or modules with the same parameters) whose outputs are equal on discovery's
    example batch. Such slots are one expert to the gate statistics; one module whose outputs differ (on
    different inputs, `enc(x[:, :4])`, `enc(x[:, 4:])`, or with another int / keyword argument) is not. None: by name (slots naming one expert, or experts tied by `same_as`, hold one
    output), which discovery leaves where the two agree.
    """

    name: str
    module: str
    experts: tuple[str, ...]
    task: str | None = None
    level: int = 0
    output: GateOutput = "probs"
    dim: int = 1
    call: int | None = None
    op: str | None = None
    occurrence: int = 0
    arg: int = -1
    batch_dim: int = 0
    index_op: str | None = None
    index_occurrence: int = 0
    index_arg: int = -2
    part_dim: int | None = None
    part: int = 0
    two_way: bool = False
    layer_call: int | None = None
    slot_outputs: tuple[int, ...] | None = None

    @property
    def n_experts(self) -> int:
        return len(self.experts)

    @property
    def function_level(self) -> bool:
        """Read from a torch function call (see class docstring), not from a module's output."""
        return self.op is not None

    @property
    def simplex(self) -> bool:
        """Whether each row is a distribution over the experts (entropy and JSD are meaningful)."""
        return self.output != "weights"

    @property
    def locator(self) -> str:
        """Where the gate is read, for humans: `module` or `module:op#occurrence` ("<model>" for the root)."""
        where = self.module or "<model>"
        arg = "" if self.arg == -1 else f" arg {self.arg}"
        idx = "" if self.index_op is None else f" at {self.index_op}#{self.index_occurrence}"
        part = "" if self.part_dim is None else f" [{self.part} on dim {self.part_dim}]"
        part += " as [1 - w, w]" if self.two_way else ""
        if self.op is None:
            return (where if self.call is None else f"{where} (call {self.call})") + part
        return f"{where}:{self.op}#{self.occurrence}{arg}{idx}{part}"


@dataclass(frozen=True)
class Unresolved:
    """Something gate-like that discovery saw but could not turn into a gate: the routing cannot be judged.

    `what` says what was seen, `where` the module it was computed in (the model's forward when ""),
    `reason` why it is not a gate yet, and `snippet` a TOML spec fragment to start a hand-written gate from
    (`mmoe-inspect topology --write spec.toml`, fill it in, pass it back with `--spec`).
    """

    what: str
    where: str = ""
    reason: str = ""
    snippet: str = ""

    def line(self) -> str:
        where = self.where or "the model's forward"
        return f"{self.what} in {where}: {self.reason}" if self.reason else f"{self.what} in {where}"


@dataclass(frozen=True)
class Topology:
    """Tasks, experts and gates of one model, plus where this description came from and how sure it is."""

    tasks: tuple[TaskSpec, ...]
    experts: tuple[ExpertSpec, ...] = ()
    gates: tuple[GateSpec, ...] = ()
    source: str = "declared"
    confidence: float = 1.0
    notes: tuple[str, ...] = field(default_factory=tuple)
    architecture: str | None = None
    unresolved: tuple[Unresolved, ...] = ()

    def __post_init__(self) -> None:
        self.validate()

    # ----------------------------------------------------------------- queries
    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks)

    @property
    def has_gates(self) -> bool:
        return len(self.gates) > 0

    @property
    def why_no_gates(self) -> str:
        """Why an analysis of gates has nothing to work on, for a note: the model has none, or discovery saw
        gate-like computations it could not resolve (then the routing is unverified, not gate-less)."""
        if self.unresolved:
            n = len(self.unresolved)
            return (
                f"no gate could be resolved ({n} gate-like item{'s' if n != 1 else ''} unresolved: see the "
                "Topology notes, or pass a spec naming the gates)"
            )
        return "the model has no gates (Shared-Bottom or dense)"

    @property
    def judgeable(self) -> bool:
        """False when discovery saw gate-like computations it could not resolve (see `Unresolved`) or its
        confidence is below `LOW_CONFIDENCE`: then no verdict about the routing may be given."""
        return not self.unresolved and not (self.source == "discovered" and self.confidence < LOW_CONFIDENCE)

    def task(self, name: str) -> TaskSpec:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(name)

    def gate(self, name: str) -> GateSpec:
        for g in self.gates:
            if g.name == name:
                return g
        raise KeyError(name)

    def expert(self, name: str) -> ExpertSpec:
        for e in self.experts:
            if e.name == name:
                return e
        raise KeyError(name)

    def task_gates(self, task: str) -> tuple[GateSpec, ...]:
        """Gates serving `task`, lowest level first."""
        return tuple(sorted((g for g in self.gates if g.task == task), key=lambda g: g.level))

    def final_task_gates(self) -> dict[str, GateSpec]:
        """For each task, its gate on the highest level (the one whose mixture feeds the tower)."""
        out: dict[str, GateSpec] = {}
        for t in self.tasks:
            gates = self.task_gates(t.name)
            if gates:
                out[t.name] = gates[-1]
        return out

    @property
    def levels(self) -> tuple[int, ...]:
        return tuple(sorted({g.level for g in self.gates}))

    # ------------------------------------------------------------- validation
    def validate(self) -> None:
        names = [t.name for t in self.tasks]
        if not names:
            raise TopologyError("a topology needs at least one task")
        _unique("task", names)
        _unique("expert", [e.name for e in self.experts])
        _unique("gate", [g.name for g in self.gates])
        known_experts = {e.name for e in self.experts}
        for g in self.gates:
            if len(g.experts) < 1:
                raise TopologyError(f"gate {g.name!r} mixes no experts")
            missing = [e for e in g.experts if e not in known_experts]
            if missing:
                raise TopologyError(f"gate {g.name!r} names unknown experts {missing}")
            if g.task is not None and g.task not in names:
                raise TopologyError(f"gate {g.name!r} serves unknown task {g.task!r}")
            if g.output not in GATE_OUTPUTS:
                raise TopologyError(
                    f"gate {g.name!r}: output must be one of {', '.join(map(repr, GATE_OUTPUTS))}, not {g.output!r}"
                )
            if g.op is not None and (not isinstance(g.op, str) or not g.op):
                raise TopologyError(f"gate {g.name!r}: op must be a torch function name such as 'softmax'")
            if isinstance(g.occurrence, bool) or not isinstance(g.occurrence, int) or g.occurrence < 0:
                raise TopologyError(f"gate {g.name!r}: occurrence must be an integer >= 0")
            for what, v in (
                ("arg", g.arg),
                ("index_arg", g.index_arg),
                ("index_occurrence", g.index_occurrence),
            ):
                if isinstance(v, bool) or not isinstance(v, int) or (what == "index_occurrence" and v < 0):
                    raise TopologyError(
                        f"gate {g.name!r}: {what} must be an integer (-1, -2, ... an output; k >= 0 an argument)"
                    )
            if g.index_op is not None and (not isinstance(g.index_op, str) or not g.index_op):
                raise TopologyError(f"gate {g.name!r}: index_op must be a torch function name such as 'topk'")
            if g.index_op is not None and g.op is None:
                raise TopologyError(f"gate {g.name!r}: index_op needs a function-level gate (op)")
            for what, v in (("dim", g.dim), ("batch_dim", g.batch_dim)):
                if isinstance(v, bool) or not isinstance(v, int) or v < -1:
                    raise TopologyError(f"gate {g.name!r}: {what} must be an integer axis")
            if g.batch_dim == g.dim:
                raise TopologyError(f"gate {g.name!r}: batch_dim and dim must differ")
            if g.part_dim is not None:
                if isinstance(g.part_dim, bool) or not isinstance(g.part_dim, int) or g.part_dim < 0:
                    raise TopologyError(f"gate {g.name!r}: part_dim must be an integer axis >= 0")
                if g.part_dim == g.batch_dim or (g.part_dim == g.dim) != g.two_way:
                    raise TopologyError(
                        f"gate {g.name!r}: part_dim must differ from batch_dim, and from dim except for a two_way "
                        "gate (whose w is slice `part` of axis part_dim = dim, kept as size 1)"
                    )
                if g.index_op is not None:
                    raise TopologyError(f"gate {g.name!r}: a top-k gate (index_op) cannot be a part")
            _whole(g.part, f"gate {g.name!r}: part", 0)
            if not isinstance(g.two_way, bool):
                raise TopologyError(f"gate {g.name!r}: two_way must be true or false")
            if g.two_way and (len(g.experts) != 2 or g.output != "probs"):
                raise TopologyError(
                    f"gate {g.name!r}: a two_way gate reads one weight w per row as [1 - w, w]: it mixes exactly "
                    "2 experts and its output is 'probs'"
                )
            if g.two_way and g.index_op is not None:
                raise TopologyError(f"gate {g.name!r}: a two_way gate cannot be a top-k gate")
            _whole(g.level, f"gate {g.name!r}: level", 0)
            if g.layer_call is not None:
                _whole(g.layer_call, f"gate {g.name!r}: layer_call", 0)
            if g.slot_outputs is not None and (
                not isinstance(g.slot_outputs, tuple)
                or len(g.slot_outputs) != g.n_experts
                or any(isinstance(k, bool) or not isinstance(k, numbers.Integral) for k in g.slot_outputs)
            ):
                raise TopologyError(
                    f"gate {g.name!r}: slot_outputs must hold one whole number per expert slot ({g.n_experts})"
                )
        read: dict[tuple, str] = {}  # where each gate's tensor is read: two gates on one tensor are one gate
        for g in self.gates:
            where = (
                g.module,
                g.call,
                g.op,
                g.occurrence,
                g.arg,
                g.index_op,
                g.part_dim,
                g.part,
                g.dim,
                g.batch_dim,
            )
            if where in read:
                raise TopologyError(
                    f"gates {read[where]!r} and {g.name!r} read the same tensor ({'op ' + g.op if g.op else 'module'} "
                    f"{g.module!r}{'' if g.call is None else f', call {g.call}'}): they would always route "
                    "alike; give each gate its own tensor (call, occurrence or part)"
                )
            read[where] = g.name
        for u in self.unresolved:
            if not all(isinstance(v, str) for v in (u.what, u.where, u.reason, u.snippet)):
                raise TopologyError("each [[unresolved]] entry holds text: what, where, reason, snippet")
        for e in self.experts:
            _whole(e.level, f"expert {e.name!r}: level", 0)
            if e.index is not None:
                _whole(e.index, f"expert {e.name!r}: index", None)
            if e.same_as is not None and (e.same_as not in known_experts or e.same_as == e.name):
                raise TopologyError(f"expert {e.name!r}: same_as names no other expert ({e.same_as!r})")
            if e.owner != "shared" and e.owner not in names:
                raise TopologyError(f"expert {e.name!r} is owned by unknown task {e.owner!r}")
        for t in self.tasks:
            steps = t.output if isinstance(t.output, tuple) else (t.output,)
            if t.output is not None and (
                not steps
                or any(isinstance(k, bool) or not isinstance(k, (str, numbers.Integral)) for k in steps)
            ):
                raise TopologyError(
                    f"task {t.name!r}: output must be a key (text), an index (integer) or a list of them"
                )
            if t.kind not in ("binary", "regression"):
                raise TopologyError(f"task {t.name!r}: kind must be 'binary' or 'regression', not {t.kind!r}")
        _check_contradictions(self)

    # ------------------------------------------------------------ (de)serialize
    def to_dict(self) -> dict[str, Any]:
        """Plain, TOML/JSON-friendly dict (None values dropped)."""

        def clean(d: dict[str, Any]) -> dict[str, Any]:
            return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items() if v is not None}

        return {
            "version": SPEC_VERSION,
            "source": self.source,
            "confidence": float(self.confidence),
            "architecture": self.architecture or "",
            "notes": list(self.notes),
            "tasks": [
                {
                    k: v
                    for k, v in clean(asdict(t)).items()
                    if (k, v) not in (("column", 0), ("rows_second", False))
                }
                for t in self.tasks
            ],
            "experts": [clean(asdict(e)) for e in self.experts],
            "gates": [_gate_dict(g, clean(asdict(g))) for g in self.gates],
            "unresolved": [asdict(u) for u in self.unresolved],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Topology:
        unknown = sorted(set(data) - set(SPEC_KEYS))
        if unknown:  # a misspelt table ("[[gate]]") would otherwise be dropped without a word
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(str(key), SPEC_KEYS, n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise TopologyError(
                f"spec has unknown top-level key(s) {', '.join(hints)}; a spec holds only "
                f"{', '.join(SPEC_KEYS)}"
            )
        version = data.get("version", SPEC_VERSION)
        if version != SPEC_VERSION:
            raise TopologyError(
                f"spec version {version} is not supported (this mmoe-inspect reads version {SPEC_VERSION})"
            )
        try:
            tasks = tuple(TaskSpec(**_output_steps(t)) for t in data.get("tasks", []))
            experts = tuple(ExpertSpec(**e) for e in data.get("experts", []))
            gates = tuple(
                GateSpec(**{**g, "experts": tuple(g.get("experts", ())), **_slot_outputs(g)})
                for g in data.get("gates", [])
            )
            unresolved = tuple(Unresolved(**u) for u in data.get("unresolved", []))
        except TypeError as exc:  # unknown or missing keys
            raise TopologyError(f"malformed topology spec: {exc}") from None
        return cls(
            tasks=tasks,
            experts=experts,
            gates=gates,
            source=data.get("source", "spec"),
            confidence=_number(data.get("confidence", 1.0), "confidence"),
            notes=_texts(data.get("notes", ()), "notes"),
            architecture=data.get("architecture") or None,
            unresolved=unresolved,
        )

    def to_toml(self) -> str:
        import tomli_w

        header = (
            f"{SPEC_HEADER} Edit module paths, expert lists or tasks if discovery got them\n"
            "# wrong, then pass this file with --spec. Gate `output` is 'probs', 'logits' or 'weights'; `dim`\n"
            "# is the expert axis; `call` picks one call of a module that runs several times per forward.\n"
            "# A function-level gate also names `op` (torch function), `occurrence` (0-based call of that op\n"
            "# while `module` runs, over one forward; module \"\" = the model's forward), `arg` (-1 = the op's\n"
            "# output, k = its k-th tensor argument) and `batch_dim` (-1 = no batch axis). A fused gate (the\n"
            "# gates of several tasks in one tensor) is slice `part` of axis `part_dim` of that tensor.\n"
            "# A `two_way` gate reads one weight w per row (size 1 on `dim`) as [1 - w, w] over its 2 experts.\n"
            "# `layer_call` (one layer run several times per forward on different inputs) is the run a gate\n"
            "# belongs to; only gates of one run are compared.\n"
        )
        data = self.to_dict()
        if not data["unresolved"]:
            del data["unresolved"]
        text = header + tomli_w.dumps(data)
        if self.unresolved:
            text += (
                "\n# UNRESOLVED: discovery saw the gate-like computations listed in [[unresolved]] above and\n"
                "# could not resolve them, so the routing cannot be judged. For each, add a [[gates]] entry\n"
                "# (start from the snippet below: set `task` and the experts), then delete the [[unresolved]]\n"
                "# entry and pass this file with --spec.\n"
            )
            for u in self.unresolved:
                if u.snippet:
                    text += f"\n# --- {u.line()}\n" + "".join(f"# {ln}\n" for ln in u.snippet.splitlines())
        return text

    @classmethod
    def from_toml(cls, text: str) -> Topology:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise TopologyError(f"spec file is not valid TOML: {exc}") from None
        except RecursionError:
            raise TopologyError("spec file is nested too deeply to be a topology spec") from None
        try:
            return replace(cls.from_dict(data), source="spec")
        except TopologyError:
            raise
        except (
            TypeError,
            ValueError,
            KeyError,
            AttributeError,
            IndexError,
            OverflowError,
            RecursionError,
        ) as exc:
            raise TopologyError(
                f"spec file has a field of the wrong type or value: {type(exc).__name__}: {exc}"
            ) from None

    def save(self, path: str | Path) -> None:
        """Write the spec as TOML at `path`, whole or not at all (a temp file beside it, then renamed over it)."""
        path = Path(path)
        tmp = path.absolute().parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
        # created as a plain file would be (0666 less the umask; mkstemp's 0600 would hide it from the group),
        # or with the mode of the spec it replaces
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(self.to_toml())
            if path.is_file() and not path.is_symlink():
                shutil.copymode(path, tmp)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str | Path) -> Topology:
        path = Path(path)
        # A FIFO or a device (a spec named by a process substitution, /dev/zero) would block or be read
        # without end: only a regular file of a spec's size is read.
        if path.exists() and not path.is_file():
            raise TopologyError(
                f"spec file {path} is not a regular file (a folder, FIFO or device); give a TOML file"
            )
        if path.is_file() and path.stat().st_size > SPEC_MAX_BYTES:
            raise TopologyError(
                f"spec file {path} holds {path.stat().st_size:,} bytes, more than a spec's "
                f"{SPEC_MAX_BYTES // 2**20} MiB; is it the right file?"
            )
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise TopologyError(
                f"spec file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8"
            ) from None
        return cls.from_toml(text)

    def describe(self) -> str:
        """A few human lines: what was found and how sure."""
        lines = [
            f"source: {self.source} (confidence {self.confidence:.2f})"
            + (f", architecture: {self.architecture}" if self.architecture else ""),
            "tasks: " + ", ".join(f"{t.name} ({t.kind})" for t in self.tasks),
            f"experts: {len(self.experts)}",
        ]
        for u in self.unresolved:
            lines.append(f"UNRESOLVED: {u.line()}")
        if self.unresolved:
            lines.append(
                "the routing cannot be judged until these are resolved: write a spec "
                "(`mmoe-inspect topology MODEL --write spec.toml`, fill in the [[gates]] it suggests) "
                "and pass it with --spec"
            )
        elif self.source == "discovered" and self.confidence < LOW_CONFIDENCE:
            lines.append(
                f"LOW CONFIDENCE ({self.confidence:.2f} < {LOW_CONFIDENCE}): the routing cannot be judged "
                "until a spec confirms the gates (--spec)"
            )
        if not self.gates and not self.unresolved:
            lines.append("gates: none (no routing to inspect; task outputs are still reported)")
        for g in self.gates:
            served = g.task if g.task is not None else "shared"
            where = f"function {g.locator}" if g.function_level else f"module {g.module}"
            lines.append(
                f"gate {g.name}: {where} ({g.output}), level {g.level}, serves {served}, "
                f"{g.n_experts} experts [{', '.join(g.experts)}]"
            )
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


SPEC_HEADER = "# mmoe-inspect topology spec."


def spec_target_problem(path: Path, force: bool) -> str | None:
    """Why a spec may not be written at `path` (None: it may): its folder is missing; it is a symbolic link
    or a folder; it exists and `force` is off; or it exists and is not a topology spec (`force` replaces
    only a spec file: never a checkpoint, data or another file of the user's)."""
    if not path.absolute().parent.is_dir():
        return f"folder {path.absolute().parent} does not exist"
    if path.is_symlink():
        return "it is a symbolic link; give the path of a regular file"
    if not path.exists():
        return None
    if not path.is_file():
        return "it exists and is not a regular file (a folder?); give a file path"
    if not force:
        return "it exists; pass --force to replace it"
    try:
        with path.open("rb") as fh:
            head = fh.read(len(SPEC_HEADER.encode()))
    except OSError as exc:
        return f"it cannot be read ({exc.strerror or exc})"
    if head != SPEC_HEADER.encode():
        return (
            "it exists and is not a topology spec this tool wrote; --force replaces only such a file, never "
            "another file (pick another path)"
        )
    return None


def expert_slots(experts: tuple[ExpertSpec, ...], g: GateSpec) -> list[list[int]]:
    """Gate `g`'s slots grouped by the expert output they hold, in order of first slot (`[[0], [1], ...]`
    when every slot holds its own): by `g.slot_outputs` where set, else by name (experts tied by `same_as`
    are one). The one rule for "these slots are one expert" (gate statistics, discovery's note)."""
    if g.slot_outputs is not None:
        keys: tuple[object, ...] = g.slot_outputs
    else:
        tied = {e.name: e.same_as for e in experts if e.same_as is not None}
        keys = tuple(tied.get(name, name) for name in g.experts)
    groups: dict[object, list[int]] = {}
    for k, key in enumerate(keys):
        groups.setdefault(key, []).append(k)
    return list(groups.values())


def _slot_outputs(g: dict[str, Any]) -> dict[str, Any]:
    """A spec entry's `slot_outputs` list as the tuple `GateSpec` holds (absent: nothing)."""
    v = g.get("slot_outputs")
    return {"slot_outputs": tuple(v)} if isinstance(v, list) else {}


def _gate_dict(gate: GateSpec, d: dict[str, Any]) -> dict[str, Any]:
    """A gate's spec entry without the function-level fields a module gate leaves at their defaults."""
    if gate.op is None:
        for key, default in (("occurrence", 0), ("arg", -1), ("batch_dim", 0)):
            if d.get(key) == default:
                d.pop(key, None)
    if gate.index_op is None:
        for key, default in (("index_occurrence", 0), ("index_arg", -2)):
            if d.get(key) == default:
                d.pop(key, None)
    if gate.part_dim is None and d.get("part") == 0:
        d.pop("part", None)
    if not gate.two_way:
        d.pop("two_way", None)
    return d


def _check_contradictions(topo: Topology) -> None:
    """Refuse a spec whose parts contradict each other (each would be reported as the model's fault): two
    tasks reading one model output, one module declared both a gate and an expert, and at one level two
    gates serving one task while another task has none (one gate per task mislabelled)."""
    read: dict[object, str] = {}
    for i, t in enumerate(topo.tasks):  # an output left out is read by the task's name (dict) or position
        if t.output is None:
            keys = {("key", t.name), ("index", i)}
        elif isinstance(t.output, str):
            keys = {("key", t.output)}
        elif isinstance(t.output, list | tuple):  # nested steps (`["preds", "click"]`)
            keys = {("steps", tuple(t.output))}
        else:
            keys = {("index", int(t.output))}
        if t.rows_second:  # one `[T, batch]` entry, one row per task
            keys = {(*k, t.column) for k in keys}
        for k in keys:  # two tasks that leave `output` out never share a key: names and positions differ
            if k in read:
                raise TopologyError(
                    f"tasks {read[k]!r} and {t.name!r} both read the model output {k[1]!r}: one task's "
                    "predictions would be judged against the other's labels; give each task its own `output`"
                )
            read.setdefault(k, t.name)
    experts = {e.module: e.name for e in topo.experts if e.module}
    for g in topo.gates:
        if g.op is None and g.module in experts:
            raise TopologyError(
                f"module {g.module!r} is declared both as gate {g.name!r} and as expert {experts[g.module]!r}: "
                "the expert's numbers would be the gate's; name the expert's own module"
            )
    names = [t.name for t in topo.tasks]
    for level in sorted({g.level for g in topo.gates}):
        served = [g for g in topo.gates if g.level == level and g.task is not None]
        counts = {n: sum(g.task == n for g in served) for n in names}
        doubled = [n for n, c in counts.items() if c > 1]
        bare = [n for n, c in counts.items() if c == 0]
        if doubled and bare and len(served) <= len(names):
            twice = [g.name for g in served if g.task == doubled[0]]
            raise TopologyError(
                f"gates {twice} all serve task {doubled[0]!r} at level {level} while no gate serves task(s) "
                f"{bare}: set each gate's `task` to the task it serves"
            )


def _unique(kind: str, names: list[str]) -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise TopologyError(f"duplicate {kind} name {n!r}")
        seen.add(n)


def _whole(value: object, what: str, low: int | None) -> None:
    """A spec integer field (`level`, `index`): an int (not a bool, not text), at least `low` when given."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or (low is not None and value < low)
    ):
        need = "an integer" + (f" >= {low}" if low is not None else "")
        raise TopologyError(f"{what} must be {need}, not {value!r}"[:200])


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TopologyError(f"spec field {what} must be a number, not {type(value).__name__}")
    return float(value)


def _texts(value: object, what: str) -> tuple[str, ...]:
    if (
        isinstance(value, str)
        or not isinstance(value, list | tuple)
        or not all(isinstance(v, str) for v in value)
    ):
        raise TopologyError(f"spec field {what} must be a list of strings")
    return tuple(value)
