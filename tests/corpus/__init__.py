"""A corpus of independently written multi-task models, with gate truth computed WITHOUT mmoe_inspect.

`ENTRIES` lists every model: GATED ones (an expert mixture mmoe-inspect must find, with planted routing
cases), UNRESOLVED ones (a mixture a `TorchFunctionMode` tracer cannot see, so the tool must say it
cannot judge), and GATELESS ones (no mixture; softmaxes that only look like gates). The classes live in
`zoo_styles.py` (public multi-task libraries' styles), `paper_styles.py` (papers' reference styles),
`handwritten.py`, `unresolved.py` and `gateless.py`; they import only torch (numpy, lightning), so each
file can be given to `--model-code`.

Truth: `entry.truth(model, input)` runs the model's own second path (`forward(..., return_gates=True)`)
in eval mode and returns `{gate key: [B, E] float64}`. Gate keys: the task name the gate serves,
"shared" for a one-gate MoE, "L{level}.{task}" / "L{level}.shared" for PLE-like models (level 0 nearest
the input). Expert columns follow the model's own expert order; `expert_names[key]` names them
("0".."E-1" for single-level models; "L0.shared.1" style for PLE/CGC), and `planted` names dead
experts by these names.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch
from torch import nn

from . import _data, gateless, handwritten, paper_styles, unresolved, zoo_styles
from ._plant import GateParams, plant_dselect, plant_logit_gates, plant_scalar

HERE = Path(__file__).resolve().parent
GATED_CASES = ("specialized", "collapsed", "dead_expert", "identical")
FAILURE_CODES = ("collapsed_gate", "dead_expert", "tasks_route_identically", "uniform_gate")
TWO = ("click", "like")
DENSE10 = tuple(f"f{i}" for i in range(10))
DENSE12 = tuple(f"f{i}" for i in range(12))
DENSE8 = tuple(f"f{i}" for i in range(8))

# Every pattern of issue 15 point 1 (and the forms of input/output around them) the corpus must cover.
REQUIRED_PATTERNS = (
    "einsum_ellipsis_experts_first",
    "einsum_experts_last",
    "einsum_experts_middle",
    "mul_sum_dim0",
    "mul_sum_dim1",
    "mul_sum_dim_last",
    "bmm",
    "matmul",
    "matmul_operator",
    "stack_sum_slices",
    "python_loop_sum",
    "batched_param_experts",
    "bmm_experts",
    "sparse_dispatch_index_add",
    "sparse_dispatch_scatter_add",
    "gather_topk",
    "temperature",
    "masked_fill",
    "noisy_topk",
    "topk_renorm",
    "gumbel_softmax",
    "sigmoid_gate",
    "sparsemax",
    "dselect_k",
    "scalar_mixture",
    "ple_two_level",
    "shared_softmax_module",
    "pred_suffix_outputs",
    "tuple_input",
    "list_output",
    "omoe",
    "dict_input",
    "tuple_output",
    "concat_output",
    "lightning",
    "param_gate",
    # unresolved
    "numpy_mix",
    "disable_torch_function",
    "custom_op",
    "autograd_function",
    "torchscript",
    # gateless
    "shared_bottom",
    "autoint_attention",
    "din_attention_pooling",
    "multiclass_output_softmax",
    "transformer_encoder",
)


@dataclass(frozen=True)
class CorpusEntry:
    """One corpus model: how to build it (per planted case), its data, and its gate truth."""

    name: str
    style: str
    expect: Literal["gated", "unresolved", "gateless"]
    make: Callable[[str], nn.Module]
    cases: tuple[str, ...]
    features: tuple[str, ...]
    tasks: tuple[str, ...]
    labels: dict[str, str]
    example: Callable[[nn.Module, int, int], Any]
    frame: Callable[[nn.Module, int, int], pd.DataFrame]
    truth: Callable[[nn.Module, Any], dict[str, torch.Tensor]] | None
    expert_counts: dict[str, int]
    planted: dict[str, dict[str, set[str]]]
    source_file: str
    filled_spec: Callable[[nn.Module], str] | None = None
    patterns: tuple[str, ...] = ()
    # frame -> the exact input `forward` takes (a tuple means positional arguments)
    to_input: Callable[[pd.DataFrame], Any] | None = None
    # gate key -> the model's own names of the experts, in column order
    expert_names: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # model -> the tensors that make its gate weights (perturbed by the corpus self-checks)
    gate_parameters: Callable[[nn.Module], list[torch.Tensor]] | None = None
    # gate key -> level (0 nearest the input) and task (None: shared)
    gate_tasks: dict[str, tuple[int, str | None]] = field(default_factory=dict)


def call(model: nn.Module, inp: Any, **kwargs: Any) -> Any:
    """`model(*inp)` for a tuple of positional arguments, `model(inp)` otherwise."""
    return model(*inp, **kwargs) if isinstance(inp, tuple) else model(inp, **kwargs)


def truth_from_model(model: nn.Module, inp: Any) -> dict[str, torch.Tensor]:
    """The model's own second path: `forward(..., return_gates=True)` in eval mode, gates as float64 `[B, E]`."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            _, gates = call(model, inp, return_gates=True)
    finally:
        model.train(was)
    return {k: v.detach().to(torch.float64).reshape(v.shape[0], -1).clone() for k, v in gates.items()}


def _src(module: Any) -> str:
    return str(Path(module.__file__).resolve())


def _seeded_make(build: Callable[[], nn.Module], plant: Callable[[nn.Module, str], None], seed: int):
    def make(case: str) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build()
            plant(model, case)
        return model

    return make


def _gate_key_info(key: str, tasks: Sequence[str]) -> tuple[int, str | None]:
    if key.startswith("L") and "." in key and key[1:].split(".", 1)[0].isdigit():
        lv, rest = key[1:].split(".", 1)
        return int(lv), (None if rest == "shared" else rest)
    return 0, (None if key == "shared" else key)


def _planted(
    cases: Sequence[str],
    collapse: tuple[str, str] | None,
    dead: str | None,
    identical: Sequence[str],
    always: Mapping[str, set[str]] | None = None,
) -> dict[str, dict[str, set[str]]]:
    out: dict[str, dict[str, set[str]]] = {}
    for case in cases:
        codes: dict[str, set[str]] = {k: set(v) for k, v in (always or {}).items()}
        if case == "collapsed" and collapse is not None:
            codes[collapse[0]] = {"collapsed_gate"}  # a collapsed gate gets no other gate finding
        if case == "dead_expert" and dead is not None:
            codes.setdefault(dead, set()).add("dead_expert")
        if case == "identical":
            for a, b in itertools.combinations(identical, 2):
                codes.setdefault(f"{a} ~ {b}", set()).add("tasks_route_identically")
        out[case] = codes
    return out


def _merge(
    planted: dict[str, dict[str, set[str]]], also: Mapping[str, Mapping[str, set[str]]]
) -> dict[str, dict[str, set[str]]]:
    """Add the findings a plant necessarily causes elsewhere (e.g. a collapsed one-gate MoE starves the
    other experts: they are dead too)."""
    for case, subjects in also.items():
        for subject, codes in subjects.items():
            planted[case].setdefault(subject, set()).update(codes)
    return planted


def _inputs(kind: str, features: Sequence[str], n_categorical: int = 0) -> Callable[[pd.DataFrame], Any]:
    feats = tuple(features)
    if kind == "dense":
        return lambda frame: _data.as_tensor(frame, feats)
    if kind == "dict":
        return lambda frame: _data.as_dict(frame, feats)
    if kind == "tuple":
        cat, num = feats[:n_categorical], feats[n_categorical:]

        def to_tuple(frame: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
            return (
                torch.from_numpy(frame[list(cat)].to_numpy(dtype="int64").copy()),
                _data.as_tensor(frame, num),
            )

        return to_tuple
    raise ValueError(kind)


def _entry(
    name: str,
    style: str,
    expect: str,
    build: Callable[[], nn.Module],
    source: Any,
    *,
    patterns: Sequence[str],
    tasks: Sequence[str],
    labels: Mapping[str, str] | None = None,
    features: Sequence[str] = DENSE10,
    inputs: str = "dense",
    n_categorical: int = 0,
    make_frame: Callable[[int, int, Sequence[str]], pd.DataFrame] | None = None,
    plant: Callable[[nn.Module, str], None] | None = None,
    expert_names: Mapping[str, Sequence[str]] | None = None,
    cases: Sequence[str] = ("plain",),
    planted: dict[str, dict[str, set[str]]] | None = None,
    gate_parameters: Callable[[nn.Module], list[torch.Tensor]] | None = None,
    filled_spec: Callable[[nn.Module], str] | None = None,
    seed: int = 0,
) -> CorpusEntry:
    labels = dict(labels) if labels is not None else {t: t for t in tasks}
    label_cols = [labels[t] for t in tasks]
    features = tuple(features)
    if make_frame is None:

        def make_frame(n: int, s: int, cols: Sequence[str]) -> pd.DataFrame:
            return _data.dense_frame(n, s, features, cols)

    to_input = _inputs(inputs, features, n_categorical)

    def frame(model: nn.Module, n: int, s: int) -> pd.DataFrame:
        return make_frame(n, s, label_cols)

    def example(model: nn.Module, n: int, s: int) -> Any:
        return to_input(frame(model, n, s))

    names = {k: tuple(v) for k, v in (expert_names or {}).items()}
    return CorpusEntry(
        name=name,
        style=style,
        expect=expect,  # type: ignore[arg-type]
        make=_seeded_make(build, plant or (lambda m, c: None), seed),
        cases=tuple(cases),
        features=features,
        tasks=tuple(tasks),
        labels=labels,
        example=example,
        frame=frame,
        truth=truth_from_model if expect != "gateless" else None,
        expert_counts={k: len(v) for k, v in names.items()},
        planted=planted or {c: {} for c in cases},
        source_file=_src(source),
        filled_spec=filled_spec,
        patterns=tuple(patterns),
        to_input=to_input,
        expert_names=names,
        gate_parameters=gate_parameters,
        gate_tasks={k: _gate_key_info(k, tasks) for k in names},
    )


def _gated(
    name: str,
    style: str,
    build: Callable[[], nn.Module],
    source: Any,
    gates: Callable[[nn.Module], dict[str, GateParams]],
    *,
    expert_names: Mapping[str, Sequence[str]] | None = None,
    n_experts: int = 4,
    keys: Sequence[str] | None = None,
    cases: Sequence[str] = GATED_CASES,
    collapse: tuple[str, str] | None = None,
    dead: str = "2",
    identical: Sequence[str] | None = None,
    kind: str = "softmax",
    scale: float = 2.0,
    big: float = 40.0,
    tasks: Sequence[str] = TWO,
    also: Mapping[str, Mapping[str, set[str]]] | None = None,
    **kw: Any,
) -> CorpusEntry:
    keys = tuple(keys) if keys is not None else tuple(tasks)
    names = expert_names or {k: tuple(str(i) for i in range(n_experts)) for k in keys}
    collapse = collapse or (keys[0], "1")
    identical = tuple(identical) if identical is not None else tuple(k for k in keys if k != "shared")
    seed = kw.pop("seed", 0)

    def plant(model: nn.Module, case: str) -> None:
        plant_logit_gates(
            gates(model),
            case,
            expert_names=names,
            collapse=collapse,
            dead=dead,
            identical=identical,
            kind=kind,
            scale=scale,
            seed=seed + 1,
            big=big,
        )

    return _entry(
        name,
        style,
        "gated",
        build,
        source,
        tasks=tasks,
        plant=plant,
        expert_names=names,
        cases=cases,
        planted=_merge(_planted(cases, collapse, dead, identical), also or {}),
        gate_parameters=lambda m: [t for p in gates(m).values() for t in p.tensors()],
        seed=seed,
        **kw,
    )


def _lin(layer: nn.Linear, *extra: nn.Module) -> GateParams:
    return GateParams(layer.weight, layer.bias, [t for m in extra for t in m.parameters()])


# --------------------------------------------------------------------------- gated: library styles
Z, P, H = zoo_styles, paper_styles, handwritten
MTRECLIB_FEATURES = ("c0", "c1", "c2", *(f"n{j}" for j in range(6)))


def _mtreclib_frame(n: int, s: int, cols: Sequence[str]) -> pd.DataFrame:
    return _data.categorical_frame(n, s, (5, 7, 4), 6, cols)


GATED = [
    _gated(
        "libmtl_mmoe",
        "LibMTL architecture/MMoE.py: experts stacked first [E,B,H], ModuleDict gates Linear+Softmax, "
        "torch.einsum('ij..., ji -> j...', experts, gate), dict of task outputs",
        Z.LibMTLStyleMMoE,
        Z,
        lambda m: {t: _lin(m.gate_specific[t][0]) for t in m.task_name},
        patterns=("einsum_ellipsis_experts_first",),
    ),
    _gated(
        "fuxictr_mmoe",
        "FuxiCTR MMoE/MMoE_Layer: gate MLPs emit logits, ONE nn.Softmax module applied to every task, "
        "sum(g.unsqueeze(-1) * experts, dim=1), outputs {label}_pred",
        Z.FuxiCTRStyleMMoE,
        Z,
        lambda m: {
            f"{t}_pred": _lin(m.mmoe_layer.gate[i][2], m.mmoe_layer.gate[i][0]) for i, t in enumerate(TWO)
        },
        tasks=("click_pred", "like_pred"),
        labels={"click_pred": "click", "like_pred": "like"},
        features=DENSE12,
        scale=6.0,
        seed=1,
        patterns=("shared_softmax_module", "mul_sum_dim1", "pred_suffix_outputs"),
    ),
    _gated(
        "mtreclib_mmoe",
        "MTReclib MMoEModel: forward(categorical_x, numerical_x), embeddings + numerical Linear, experts "
        "cat on dim 1, gates Linear+Softmax(dim=1), torch.bmm(gate.unsqueeze(1), fea), list output",
        Z.MTReclibStyleMMoE,
        Z,
        lambda m: {f"task_{i}": _lin(m.gate[i][0]) for i in range(2)},
        tasks=("task_0", "task_1"),
        labels={"task_0": "click", "task_1": "like"},
        features=MTRECLIB_FEATURES,
        inputs="tuple",
        n_categorical=3,
        make_frame=_mtreclib_frame,
        scale=3.0,
        patterns=("tuple_input", "list_output", "bmm"),
    ),
    _gated(
        "mtreclib_omoe",
        "MTReclib OMoEModel: one gate for all tasks, (gate.unsqueeze(1) @ experts), list output",
        Z.MTReclibStyleOMoE,
        Z,
        lambda m: {"shared": _lin(m.gate[0])},
        keys=("shared",),
        cases=("specialized", "collapsed", "dead_expert"),
        # the only gate collapsed on expert 1: experts 0, 2 and 3 get no weight from any gate
        also={"collapsed": {"0": {"dead_expert"}, "2": {"dead_expert"}, "3": {"dead_expert"}}},
        tasks=("task_0", "task_1"),
        labels={"task_0": "click", "task_1": "like"},
        features=MTRECLIB_FEATURES,
        inputs="tuple",
        n_categorical=3,
        make_frame=_mtreclib_frame,
        scale=3.0,
        patterns=("omoe", "matmul_operator", "tuple_input", "list_output"),
    ),
    _gated(
        "keras_mmoe_port",
        "keras-mmoe (census income) ported: expert kernel [F,H,E] by tensordot (experts last), gate kernels "
        "as bare parameters, softmax(x @ Wg + b), sum(experts * gate.unsqueeze(1), dim=2), list output",
        Z.KerasMMoEPort,
        Z,
        lambda m: {
            t: GateParams(m.gate_kernels[i].t(), m.gate_bias[i]) for i, t in enumerate(("income", "marital"))
        },
        tasks=("income", "marital"),
        patterns=("mul_sum_dim_last", "batched_param_experts", "param_gate", "list_output"),
    ),
    _gated(
        "paddlerec_mmoe",
        "PaddleRec MMoELayer: experts concatenated then reshaped [B,E,H] (experts in the middle), "
        "softmax(Linear) gates, einsum('beh,be->bh'), towers ending in a 2-class softmax, list of [B,2]",
        Z.PaddleRecStyleMMoE,
        Z,
        lambda m: {f"task_{i}": _lin(m._param_gate[i]) for i in range(2)},
        tasks=("task_0", "task_1"),
        labels={"task_0": "click", "task_1": "like"},
        features=DENSE12,
        patterns=("einsum_experts_middle", "list_output"),
    ),
    # ----------------------------------------------------------------------- gated: paper styles
    _gated(
        "shazeer_noisy_topk",
        "Shazeer et al. 2017 noisy top-k gating (davidmrau/mixture-of-experts): parameter gates, noise only "
        "in training, softmax over the top-2 logits, SparseDispatcher-like combine with index_add_",
        P.NoisyTopKMMoE,
        P,
        lambda m: {t: GateParams(m.w_gate[t].t(), m.b_gate[t], [m.w_noise[t]]) for t in m.tasks},
        kind="topk",
        patterns=("noisy_topk", "sparse_dispatch_index_add", "param_gate"),
    ),
    _gated(
        "switch_top2_scatter",
        "tutel/fastmoe-style dispatch: Linear router, softmax, top-2 renormalised, per-expert rows, "
        "contributions summed back with scatter_add_",
        P.SwitchTop2MMoE,
        P,
        lambda m: {t: _lin(m.router[t]) for t in m.tasks},
        kind="topk",
        patterns=("topk_renorm", "sparse_dispatch_scatter_add"),
    ),
    _gated(
        "mixtral_topk_gather",
        "Mixtral-style top-2 of 6 experts: softmax router, topk, renormalise, gather the chosen experts' outputs",
        P.TopKGatherMMoE,
        P,
        lambda m: {t: _lin(m.routers[i]) for i, t in enumerate(m.tasks)},
        n_experts=6,
        kind="topk",
        patterns=("topk_renorm", "gather_topk"),
    ),
    _entry(
        "dselect_k",
        "DSelect-k (Hazimeh et al. 2021, google-research dselect_k_moe), per-example: smooth-step of "
        "learned scalars combined with binary codes, selectors mixed by a per-row softmax; loop-sum mixture",
        "gated",
        P.DSelectKMMoE,
        P,
        tasks=TWO,
        plant=lambda m, case: plant_dselect(m, case, scale=2.0),
        expert_names={t: ("0", "1", "2", "3") for t in TWO},
        cases=GATED_CASES,
        planted=_planted(GATED_CASES, ("click", "3"), "3", TWO),
        gate_parameters=lambda m: [
            *m.z_weight.values(),
            *m.z_bias.values(),
            *m.w_weight.values(),
            *m.w_bias.values(),
        ],
        patterns=("dselect_k", "python_loop_sum"),
    ),
    _gated(
        "ple_two_level",
        "PLE (Tang et al. 2020) by hand: 2 levels of 2 specific experts per task + 2 shared, a shared gate "
        "on level 0, gates Linear + F.softmax inline, torch.matmul(g.unsqueeze(1), experts)",
        P.PLETwoLevel,
        P,
        lambda m: {
            "L0.click": _lin(m.levels[0].gates["click"]),
            "L0.like": _lin(m.levels[0].gates["like"]),
            "L0.shared": _lin(m.levels[0].gate_shared),
            "L1.click": _lin(m.levels[1].gates["click"]),
            "L1.like": _lin(m.levels[1].gates["like"]),
        },
        expert_names={
            "L0.click": ("L0.click.0", "L0.click.1", "L0.shared.0", "L0.shared.1"),
            "L0.like": ("L0.like.0", "L0.like.1", "L0.shared.0", "L0.shared.1"),
            "L0.shared": ("L0.click.0", "L0.click.1", "L0.like.0", "L0.like.1", "L0.shared.0", "L0.shared.1"),
            "L1.click": ("L1.click.0", "L1.click.1", "L1.shared.0", "L1.shared.1"),
            "L1.like": ("L1.like.0", "L1.like.1", "L1.shared.0", "L1.shared.1"),
        },
        keys=("L0.click", "L0.like", "L0.shared", "L1.click", "L1.like"),
        cases=("specialized", "collapsed", "dead_expert"),
        collapse=("L1.click", "L1.click.0"),
        dead="L0.shared.1",
        identical=(),
        scale=3.0,
        # click's other own expert on level 1 is mixed by no other gate: collapsing click's gate kills it
        also={"collapsed": {"L1.click.1": {"dead_expert"}}},
        patterns=("ple_two_level", "matmul"),
    ),
    _gated(
        "sparsemax_gates",
        "sparsemax gates (Martins & Astudillo 2016, hand-written), (w.unsqueeze(-1) * experts).sum(-2)",
        P.SparsemaxMMoE,
        P,
        lambda m: {t: _lin(m.gate_logits[t]) for t in m.tasks},
        kind="sparsemax",
        scale=1.5,
        patterns=("sparsemax", "mul_sum_dim1"),
    ),
    _gated(
        "sigmoid_gates",
        "independent sigmoid gates (not normalised), experts stacked last, (experts * w[:, None, :]).sum(-1)",
        P.SigmoidGateMMoE,
        P,
        lambda m: {t: _lin(m.gate[t]) for t in m.tasks},
        kind="sigmoid",
        scale=4.0,
        patterns=("sigmoid_gate", "mul_sum_dim_last"),
    ),
    _gated(
        "gumbel_gates",
        "gumbel-softmax gates in training, softmax(logits / tau) in eval, torch.bmm mixture",
        P.GumbelGateMMoE,
        P,
        lambda m: {t: _lin(m.gate[i]) for i, t in enumerate(m.tasks)},
        scale=1.0,
        patterns=("gumbel_softmax", "temperature", "bmm"),
    ),
    _entry(
        "scalar_mixture",
        "cross-stitch/sluice-style learned scalars: alpha[t] [E] mixes the experts for every row, "
        "einsum('e,ebh->bh') over experts stacked first",
        "gated",
        P.ScalarMixtureMTL,
        P,
        tasks=TWO,
        plant=lambda m, case: plant_scalar(m, case),
        expert_names={t: ("0", "1", "2", "3") for t in TWO},
        cases=GATED_CASES,
        # the same weights on every row: every gate that is not collapsed is input-independent
        planted={
            case: {
                **{k: v for k, v in _planted([case], ("click", "1"), "3", TWO)[case].items()},
                **{t: {"input_independent_gate"} for t in TWO if not (case == "collapsed" and t == "click")},
            }
            for case in GATED_CASES
        },
        gate_parameters=lambda m: [m.alpha],
        patterns=("scalar_mixture",),
    ),
    # ----------------------------------------------------------------------- gated: hand-written
    _gated(
        "dict_in_tuple_out",
        "hand-written: forward(batch: dict of columns), Python loop sum(w[:, i:i+1] * experts[i](x)), tuple out",
        H.DictInTupleOutMMoE,
        H,
        lambda m: {"click": _lin(m.click_gate), "like": _lin(m.like_gate)},
        inputs="dict",
        patterns=("dict_input", "tuple_output", "python_loop_sum"),
    ),
    _gated(
        "concat_output_temperature",
        "hand-written: softmax(gate(x) / T) inline, torch.sum(torch.stack([w[:, i:i+1] * e_i]), 0), "
        "one concatenated [B, 2] output",
        H.ConcatOutputMMoE,
        H,
        lambda m: {t: _lin(m.gates[i]) for i, t in enumerate(TWO)},
        scale=4.0,
        big=100.0,
        patterns=("temperature", "stack_sum_slices", "concat_output"),
    ),
    _gated(
        "lightning_masked",
        "a LightningModule MMoE: per-task expert mask applied with masked_fill(-inf) before the softmax, "
        "torch.matmul([B,1,E], [B,E,H])",
        H.LitMMoE,
        H,
        lambda m: {t: _lin(m.gate_layers[t]) for t in TWO},
        cases=("specialized", "collapsed", "dead_expert"),
        collapse=("click", "0"),  # expert 0 is masked out for like: click is its only user
        patterns=("lightning", "masked_fill", "matmul"),
    ),
    _gated(
        "batched_param_experts",
        "hand-written: experts as ONE parameter [E,F,H] via einsum('bd,edh->beh'), (w[..., None] * ex).sum(1)",
        H.BatchedParamMMoE,
        H,
        lambda m: {t: _lin(m.gates[t]) for t in TWO},
        patterns=("batched_param_experts", "mul_sum_dim1"),
    ),
    _gated(
        "bmm_experts_3task",
        "hand-written, 3 tasks x 6 experts run by torch.bmm ([E,B,F] x [E,F,H], experts first), "
        "(w.t().unsqueeze(-1) * ex).sum(0)",
        H.BmmExpertsMMoE,
        H,
        lambda m: {t: _lin(m.gates[i]) for i, t in enumerate(m.tasks)},
        n_experts=6,
        tasks=("click", "like", "share"),
        features=DENSE12,
        patterns=("bmm_experts", "mul_sum_dim0"),
    ),
    _gated(
        "einsum_last_3task",
        "hand-written, 3 tasks x 8 experts stacked last [B,H,E], gate MLPs with tanh, einsum('bhe,be->bh')",
        H.ThreeTaskEinsumLastMMoE,
        H,
        lambda m: {t: _lin(m.gates[t][2], m.gates[t][0]) for t in m.tasks},
        n_experts=8,
        tasks=("click", "like", "share"),
        features=DENSE12,
        scale=5.0,
        patterns=("einsum_experts_last",),
    ),
    _gated(
        "hand_cgc",
        "hand-written one-level CGC: 1 specific expert per task + 2 shared, no shared gate, "
        "(w.unsqueeze(-1) * stack([own, *shared], 1)).sum(-2)",
        H.HandCGC,
        H,
        lambda m: {t: _lin(m.gates[t]) for t in TWO},
        expert_names={
            "click": ("click.0", "shared.0", "shared.1"),
            "like": ("like.0", "shared.0", "shared.1"),
        },
        cases=("specialized", "collapsed", "dead_expert"),
        collapse=("click", "click.0"),
        dead="shared.1",
        identical=(),
        patterns=("mul_sum_dim1",),
    ),
]


# --------------------------------------------------------------------------- unresolved
def _spec_toml(tasks, experts, gates) -> str:
    """The function-level gate locator spec format (issue 15), as TOML text."""

    def val(v: Any) -> str:
        if isinstance(v, str):
            return '"' + v + '"'
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(val(x) for x in v) + "]"
        return str(v)

    lines = ["version = 1", ""]
    for section, items in (("tasks", tasks), ("experts", experts), ("gates", gates)):
        for item in items:
            lines.append(f"[[{section}]]")
            lines += [f"{k} = {val(v)}" for k, v in item.items()]
            lines.append("")
    return "\n".join(lines)


def _unresolved_spec(op: str, module: Callable[[str], str], output: str, occurrence: Callable[[int], int]):
    def spec(model: nn.Module) -> str:
        experts = [f"expert[{i}]" for i in range(len(model.experts))]
        return _spec_toml(
            [{"name": t, "kind": "binary", "output": t, "label": t} for t in unresolved.TASKS],
            [{"name": e, "module": f"experts.{i}"} for i, e in enumerate(experts)],
            [
                {
                    "name": t,
                    "module": module(t),
                    "op": op,
                    "occurrence": occurrence(i),
                    "arg": -1,
                    "output": output,
                    "dim": 1,
                    "batch_dim": 0,
                    "experts": experts,
                    "task": t,
                }
                for i, t in enumerate(unresolved.TASKS)
            ],
        )

    return spec


def _unresolved(
    name: str,
    style: str,
    cls: type,
    pattern: str,
    *,
    op="softmax",
    module=lambda t: "",
    output="probs",
    occurrence=lambda i: i,
) -> CorpusEntry:
    def plant(model: nn.Module, case: str) -> None:
        plant_logit_gates(
            {t: _lin(model.gates[t]) for t in unresolved.TASKS},
            "specialized",
            expert_names={t: ("0", "1", "2", "3") for t in unresolved.TASKS},
            collapse=("click", "1"),
            dead="2",
        )

    return _entry(
        name,
        style,
        "unresolved",
        cls,
        unresolved,
        tasks=TWO,
        plant=plant,
        expert_names={t: ("0", "1", "2", "3") for t in TWO},
        gate_parameters=lambda m: [p for t in unresolved.TASKS for p in m.gates[t].parameters()],
        filled_spec=_unresolved_spec(op, module, output, occurrence),
        patterns=(pattern,),
    )


UNRESOLVED = [
    _unresolved(
        "numpy_mix",
        "gate softmax in torch, mixture in numpy (.numpy() / torch.from_numpy)",
        unresolved.NumpyMixMMoE,
        "numpy_mix",
    ),
    _unresolved(
        "disabled_torch_function",
        "mixture inside torch._C.DisableTorchFunction()",
        unresolved.DisabledTorchFunctionMMoE,
        "disable_torch_function",
    ),
    _unresolved(
        "custom_op_mix",
        "mixture by a torch.library.custom_op (one opaque op)",
        unresolved.CustomOpMMoE,
        "custom_op",
    ),
    _unresolved(
        "autograd_function_moe",
        "softmax and mixture inside a custom torch.autograd.Function computing in numpy; "
        "only the gate logits (a Linear) are visible",
        unresolved.AutogradFunctionMoE,
        "autograd_function",
        op="linear",
        module=lambda t: f"gates.{t}",
        output="logits",
        occurrence=lambda i: 0,
    ),
    _unresolved(
        "torchscript_mix", "mixture by a torch.jit.script function", unresolved.ScriptedMixMMoE, "torchscript"
    ),
]


# --------------------------------------------------------------------------- gateless
def _din_frame(n: int, s: int, cols: Sequence[str]) -> pd.DataFrame:
    return _data.sequence_frame(n, s, 6, 30, 4, cols)


DIN_FEATURES = ("item", *(f"hist{i}" for i in range(6)), *(f"d{j}" for j in range(4)))

GATELESS = [
    _entry(
        "shared_bottom",
        "Shared-Bottom: one shared MLP, a tower per task, dict output",
        "gateless",
        gateless.SharedBottom,
        gateless,
        tasks=TWO,
        patterns=("shared_bottom",),
    ),
    _entry(
        "autoint",
        "AutoInt-style multi-head self-attention over feature fields (softmax over fields)",
        "gateless",
        gateless.AutoIntMTL,
        gateless,
        tasks=TWO,
        features=DENSE8,
        patterns=("autoint_attention", "has_softmax"),
    ),
    _entry(
        "din",
        "DIN-style attention pooling over a behaviour sequence (masked softmax over positions)",
        "gateless",
        gateless.DINMTL,
        gateless,
        tasks=TWO,
        features=DIN_FEATURES,
        inputs="dict",
        make_frame=_din_frame,
        patterns=("din_attention_pooling", "dict_input", "has_softmax"),
    ),
    _entry(
        "multiclass_output",
        "tasks read from one 3-class output softmax (click = p1 + p2, like = p2)",
        "gateless",
        gateless.MultiClassOutputMTL,
        gateless,
        tasks=TWO,
        patterns=("multiclass_output_softmax", "has_softmax"),
    ),
    _entry(
        "transformer_mtl",
        "a one-layer nn.TransformerEncoder over feature tokens, [B, 2] output",
        "gateless",
        gateless.TransformerMTL,
        gateless,
        tasks=TWO,
        features=DENSE8,
        patterns=("transformer_encoder", "concat_output"),
    ),
]

ENTRIES: list[CorpusEntry] = [*GATED, *UNRESOLVED, *GATELESS]
BY_NAME: dict[str, CorpusEntry] = {e.name: e for e in ENTRIES}

__all__ = [
    "BY_NAME",
    "ENTRIES",
    "FAILURE_CODES",
    "REQUIRED_PATTERNS",
    "CorpusEntry",
    "call",
    "truth_from_model",
]
