"""`LoadedModel`: a model from any checkpoint form, with its adapter, ready to inspect."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from torch import nn

from mmoe_inspect.data.inputs import (
    CollateInputs,
    FrameInputs,
    InputMode,
    parse_labels,
    split_names,
)
from mmoe_inspect.data.sources import DataError, TableSource, require_columns
from mmoe_inspect.loading.adapters import Adapter
from mmoe_inspect.loading.input_binding import InputBinding, bind_inputs

if TYPE_CHECKING:
    from mmoe_inspect.analysis.findings import Thresholds
    from mmoe_inspect.causal.options import CausalOptions
    from mmoe_inspect.checkpoint import LoadedCheckpoint
    from mmoe_inspect.inspector import InspectConfig
    from mmoe_inspect.results import InspectionResult
    from mmoe_inspect.topology.spec import Topology

DataLike = pd.DataFrame | str | Path | TableSource


@dataclass(frozen=True)
class LoadedModel:
    """A loaded model (eval mode) plus what is known about reading data into it.

    `form` says which checkpoint form it came from; `adapter` is the library adapter picked from
    the model's class; `eval_frame` holds the rows stored in an mmoe-inspect checkpoint (else None);
    `notes` list what loading adjusted (stripped key prefixes, a synced `model.device`, ...).

    Examples::

        >>> loaded = load_model("mmoe.pt", trust=True)           # torch.save(model) of a rechub MMOE
        >>> result = loaded.inspect("eval.parquet", tasks=["ctr", "cvr"])
        >>> loaded.features                                       # ('city', 'item', 'age')
    """

    model: nn.Module
    adapter: Adapter
    form: str
    path: Path | None = None
    eval_frame: pd.DataFrame | None = None
    notes: tuple[str, ...] = ()
    checkpoint: LoadedCheckpoint | None = None

    @property
    def features(self) -> tuple[str, ...]:
        """The data columns the adapter feeds the model, in input order (empty when unknown)."""
        return tuple(c.name for c in self.adapter.columns(self.model))

    @property
    def tasks(self) -> tuple[str, ...] | None:
        """Task names the model declares (DeepCTR-Torch `task_names`, our configs), else None."""
        names = self.adapter.task_names(self.model)
        return tuple(names) if names else None

    @property
    def task_kinds(self) -> tuple[str, ...] | None:
        kinds = self.adapter.task_kinds(self.model)
        return tuple(kinds) if kinds else None

    def input_fn(
        self,
        *,
        input: InputMode | None = None,
        features: str | Sequence[str] | None = None,
        collate: str | Callable[[pd.DataFrame], Any] | None = None,
    ) -> FrameInputs | CollateInputs:
        """Rows → inputs for this model (the adapter's convention unless overridden); see `Adapter.input_fn`."""
        return self.adapter.input_fn(
            self.model, input=input, features=split_names(features, "--features"), collate=collate
        )

    def bind(
        self,
        data: DataLike | None = None,
        *,
        tasks: str | Sequence[str] | None = None,
        labels: str | Mapping[str, str] | None = None,
        input: InputMode | None = None,
        features: str | Sequence[str] | None = None,
        collate: str | Callable[[pd.DataFrame], Any] | None = None,
    ) -> InputBinding:
        """How rows feed this model and which outputs read which labels (`mmoe_inspect.loading.input_binding`).

        A library model reads rows its adapter's way (`form` "adapter", or "collate"). A model no
        adapter knows (`adapter.name == "generic"`) gets the evident binding worked out by trial
        forwards on the first rows of `data`: every non-label column as one tensor, a dict, or the
        forward's positional arguments, and outputs matched to label columns by close names; what
        is given (`features`, `input`, `labels`, `tasks`) is kept. The notes say what was chosen.
        """
        label_map = parse_labels(labels)
        inputs_given = collate is not None or (features is not None and input is not None)
        if self.adapter.name != "generic" or (inputs_given and (tasks is not None or labels is not None)):
            fn = self.input_fn(input=input, features=features, collate=collate)
            form = (
                "collate" if collate is not None else "adapter" if self.adapter.name != "generic" else "given"
            )
            return InputBinding(fn, form, labels=label_map)
        fn_collate = None
        if collate is not None:
            fn_collate = self.input_fn(features=features, collate=collate)
        return bind_inputs(
            self.model,
            self.source(data),
            tasks=tasks,
            labels=label_map,
            input=input,
            features=features,
            collate=fn_collate,  # type: ignore[arg-type]
        )

    def task_names(
        self, tasks: str | Sequence[str] | None = None, labels: Mapping[str, str] | None = None
    ) -> list[str] | None:
        """Names for the outputs: `tasks`, else the model's own, else the `labels` keys when they
        name every output in order, else None (discovery calls them task_0, task_1, ...)."""
        given = split_names(tasks, "--tasks")
        if given:
            return given
        if self.tasks:
            return list(self.tasks)
        n = self.adapter.n_tasks(self.model)
        if labels and n is not None and len(labels) == n:
            return list(labels)
        return None

    def source(self, data: DataLike | None = None) -> TableSource:
        """`data`, else the evaluation rows stored in the checkpoint."""
        if data is not None:
            return TableSource.of(data)
        if self.eval_frame is not None:
            return TableSource.of(self.eval_frame)
        cols = ", ".join(self.features[:8]) + (" ..." if len(self.features) > 8 else "")
        raise DataError(
            "no evaluation rows: this checkpoint stores none; pass --data FILE.parquet"
            + (f" with the model's input columns ({cols})" if cols else "")
        )

    def topology(
        self,
        data: DataLike | None = None,
        *,
        discover: bool = False,
        tasks: str | Sequence[str] | None = None,
        labels: str | Mapping[str, str] | bool | None = None,
        input: InputMode | None = None,
        features: str | Sequence[str] | None = None,
        collate: str | Callable[[pd.DataFrame], Any] | None = None,
        rows: int | None = None,
        binding: InputBinding | None = None,
    ) -> Topology:
        """The model's declared topology, or (library models, `discover=True`) discovery on `rows` rows.

        A model no adapter knows is bound to the data first (`bind`, or the given `binding`); the
        binding's notes lead the topology's notes and its label columns are set on the tasks. Task kinds
        are read as `inspect` reads them (a guessed-regression task with 0/1 labels: binary logits), unless
        `labels=False`.
        """
        from mmoe_inspect.aux_tasks import drop_auxiliary
        from mmoe_inspect.binding import (
            example_batch,
            raw_outputs,
            resolve_topology,
            with_labels,
        )
        from mmoe_inspect.label_kinds import settle_kinds
        from mmoe_inspect.topology.discovery import discover_topology

        declared = getattr(self.model, "topology", None)
        if callable(declared) and not discover:
            return resolve_topology(self.model, None)
        source = self.source(data)
        ignore_labels = labels is False
        if isinstance(labels, bool):
            labels = None
        if binding is None:
            binding = self.bind(
                source, tasks=tasks, labels=labels, input=input, features=features, collate=collate
            )
        names = list(binding.input_fn.names) if binding.input_fn.names else None
        if names:
            require_columns(source, names)
        example = example_batch(source, binding.input_fn, names, *(() if rows is None else (rows,)))
        label_map = binding.labels
        with self.adapter.session(self.model):
            topo = discover_topology(
                self.model,
                example,
                task_names=self._names(tasks, binding),
                task_kinds=self.task_kinds,
                has_label=None if ignore_labels else _has_label(set(source.columns()), label_map),
            )
            if label_map and binding.guessed and not ignore_labels:  # the label columns the binding matched
                topo = with_labels(topo, label_map, source)
            if not ignore_labels and self.task_kinds is None:
                run = raw_outputs(self.model, binding.input_fn, names)
                topo = settle_kinds(topo, source, set(source.columns()), run, names)
        topo = drop_auxiliary(topo, set(source.columns()), {})
        return with_notes(topo, binding.notes)

    def inspect(
        self,
        data: DataLike | None = None,
        *,
        tasks: str | Sequence[str] | None = None,
        labels: str | Mapping[str, str] | bool | None = None,
        input: InputMode | None = None,
        features: str | Sequence[str] | None = None,
        collate: str | Callable[[pd.DataFrame], Any] | None = None,
        topology: Topology | str | Path | None = None,
        config: InspectConfig | None = None,
        thresholds: Thresholds | None = None,
        model_name: str | None = None,
        binding: InputBinding | None = None,
        causal: bool | Mapping[str, Any] | CausalOptions = False,
        **options: Any,
    ) -> InspectionResult:
        """`mmoe_inspect.inspect` with this model's input function, task names/kinds and labels wired in,
        inside the adapter's session (causal analyses and attributions included).

        Further `options` (`progress`, `attribution`, `distributed`, `label`, `on_recorded`) go to `inspect`
        unchanged;
        `causal` too, where a baseline may also be a `LoadedModel` (read with this call's input options
        when no adapter knows it). Without `data`, the rows stored in the checkpoint are read.

        `labels` maps task → label column (`{"click": "is_click"}` or "click=is_click"); without it (or
        True), a column named like a task is its label; False ignores the labels (as `inspect`). See
        `input_fn` for `input`/`features`/`collate`; a model no adapter knows is bound by `bind` (or the
        given `binding`), recorded in `result.meta["input_binding"]` and the topology notes.
        """
        import functools
        from contextlib import ExitStack
        from dataclasses import replace

        from mmoe_inspect.causal.options import CausalOptions
        from mmoe_inspect.inspector import inspect

        source = self.source(data)
        ignore_labels = labels is False  # (True: the labels as found, as with None)
        if isinstance(labels, bool):
            labels = None
        if binding is None:
            binding = self.bind(
                source, tasks=tasks, labels=labels, input=input, features=features, collate=collate
            )
        label_map = binding.labels
        fn = binding.input_fn
        names = self._names(tasks, binding)
        kinds = self.task_kinds
        causal_opts = CausalOptions.of(causal)
        with ExitStack() as stack:
            if causal_opts is not None and any(
                isinstance(b, LoadedModel) for b in causal_opts.baselines.values()
            ):
                # a loaded baseline becomes a `causal.Baseline` once the main model's tasks are known
                opts = {"stack": stack, "source": source, "tasks": tasks, "input": input}
                opts |= {"features": features, "collate": collate}
                baselines = {
                    name: functools.partial(b.as_baseline, name, **opts) if isinstance(b, LoadedModel) else b
                    for name, b in causal_opts.baselines.items()
                }
                causal_opts = replace(causal_opts, baselines=baselines)
            stack.enter_context(self.adapter.session(self.model))
            result = inspect(
                self.model,
                source,
                topology=topology,
                tasks=names,
                task_kinds=kinds
                if kinds is not None and (names is None or len(kinds) == len(names))
                else None,
                input_fn=fn,
                columns=list(fn.names) if fn.names else None,
                labels=False if ignore_labels else label_map if label_map is not None else True,
                config=config,
                thresholds=thresholds,
                model_name=model_name
                or f"{type(self.model).__name__}" + (f" ({self.path.name})" if self.path else ""),
                causal=causal_opts if causal_opts is not None else False,
                **{"label": self.path.name if self.path else None, **options},
            )
        if data is None and self.eval_frame is not None and self.path is not None:
            result.data_source = f"evaluation rows stored in {self.path.name}"
        if binding.guessed or binding.notes:
            result.meta["input_binding"] = binding.meta()
            result.topology = with_notes(result.topology, binding.notes)
        return result

    def as_baseline(
        self,
        name: str,
        main_tasks: Sequence[str],
        *,
        stack: Any,
        source: TableSource | None = None,
        tasks: str | Sequence[str] | None = None,
        input: InputMode | None = None,
        features: str | Sequence[str] | None = None,
        collate: str | Callable[[pd.DataFrame], Any] | None = None,
    ) -> Any:
        """This model as a `causal.Baseline` for a main model with tasks `main_tasks`; its adapter session
        is entered on `stack` (an `ExitStack`). A model no adapter knows reads rows with the main model's
        input options; its tasks are its declared ones, else `tasks`, else the first of `main_tasks`."""
        from mmoe_inspect.causal import Baseline

        generic = self.adapter.name == "generic"
        if generic and source is not None and features is None and collate is None:
            fn: Any = self.bind(source, input=input).input_fn
        else:
            fn = self.input_fn(
                input=input if generic else None,
                features=features if generic else None,
                collate=collate if generic else None,
            )
        declared = getattr(self.model, "topology", None)
        names: list[str] | None = None
        if callable(declared):
            predicts = list(declared().task_names)
        else:
            names = self.task_names(tasks)
            n = self.adapter.n_tasks(self.model)
            if names is None and n is not None and n <= len(main_tasks):
                names = list(main_tasks[:n])
            if names is None:
                where = self.path.name if self.path else type(self.model).__name__
                raise DataError(
                    f"baseline {name}: cannot tell which tasks {where} predicts; save it with task names "
                    "or name the tasks (tasks= / --tasks)"
                )
            predicts = names
        if main_tasks and not set(predicts) & set(main_tasks):
            raise DataError(
                f"baseline {name} predicts {predicts}, none of the model's tasks {list(main_tasks)} "
                "(tasks are matched by name)"
            )
        stack.enter_context(self.adapter.session(self.model))
        return Baseline(self.model, input_fn=fn, tasks=names)

    def _names(self, tasks: str | Sequence[str] | None, binding: InputBinding) -> list[str] | None:
        """Output names: `tasks`, else the binding's (unnamed outputs matched to label columns), else
        `task_names` (the model's own, or the label keys when they name every output)."""
        if tasks is None and binding.tasks is not None:
            return list(binding.tasks)
        return self.task_names(tasks, binding.labels)


def with_notes(topo: Topology, notes: Sequence[str]) -> Topology:
    """`topo` with `notes` first among its notes (each once)."""
    from dataclasses import replace

    new = tuple(n for n in notes if n not in topo.notes)
    return replace(topo, notes=new + tuple(topo.notes)) if new else topo


def _has_label(present: set[str], label_map: Any) -> Callable[[str], bool]:
    """`task -> bool`: the data holds the task's label column (`label_map` `{task: column}` where given, else a
    column named as the task); discovery's evidence that an output is a prediction of labels."""
    named = dict(label_map) if label_map else {}
    return lambda task: named.get(task, task) in present
