"""Models no adapter knows, bound to their data with `--trust-checkpoint --model-code FILE` only.

Each model lives in a training script (its classes in `__main__`), is pickled whole and run through the
CLI with no mapping flag: the tool works out the input form (one tensor, a dict, positional
`forward(categorical, numerical)`, a tuple) and the output → label matching (`like_pred` -> `like`,
`click_pred` -> `is_click`, tuple / `[B, T]` outputs in task order), says which binding it used, and
its numbers equal a direct forward. Ambiguous inputs or labels give exit 2 and the flag that fixes it.
The trial forwards leave the model exactly as found.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from mmoe_inspect.cli.main import app
from mmoe_inspect.data.call import call_model
from mmoe_inspect.loading import InputMappingError, bind_inputs, load_model
from mmoe_inspect.loading.input_binding import label_for_output, looks_like_label

runner = CliRunner()
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
N = 240

# The user's training script: every class a different library's style (re-written here, not vendored).
SCRIPT = '''
import torch
from torch import nn


def _experts(d, e, h=8):
    return nn.ModuleList(nn.Sequential(nn.Linear(d, h), nn.ReLU()) for _ in range(e))


def _mix(gate, experts, x):
    w = torch.softmax(gate(x), dim=1)
    ex = torch.stack([m(x) for m in experts], dim=1)  # [B, E, H]
    return (w.unsqueeze(-1) * ex).sum(1)


class DictMMoE(nn.Module):
    """forward(batch) with batch = {column: tensor}; outputs {like_pred, finish_pred}."""

    def __init__(self, n_users=12, dense=("f0", "f1", "f2"), e=3):
        super().__init__()
        self.dense = list(dense)
        self.emb = nn.Embedding(n_users, 4)
        d = 4 + len(dense)
        self.experts = _experts(d, e)
        self.gates = nn.ModuleList(nn.Linear(d, e) for _ in range(2))
        self.towers = nn.ModuleList(nn.Linear(8, 1) for _ in range(2))

    def forward(self, batch):
        x = torch.cat([self.emb(batch["user_id"])] + [batch[k].unsqueeze(1) for k in self.dense], dim=1)
        return {
            f"{name}_pred": torch.sigmoid(t(_mix(g, self.experts, x))).squeeze(1)
            for name, g, t in zip(("like", "finish"), self.gates, self.towers)
        }


class TensorMMoE(nn.Module):
    """forward(x) with x = [B, D] floats; a tuple of per-task probabilities (click, like)."""

    def __init__(self, d=6, e=4):
        super().__init__()
        self.experts = _experts(d, e)
        self.gates = nn.ModuleList(nn.Linear(d, e) for _ in range(2))
        self.towers = nn.ModuleList(nn.Linear(8, 1) for _ in range(2))

    def forward(self, x):
        return tuple(torch.sigmoid(t(_mix(g, self.experts, x))) for g, t in zip(self.gates, self.towers))


class PositionalMMoE(nn.Module):
    """MTReclib style: forward(categorical, numerical); one concatenated [B, T] output."""

    def __init__(self, n_ids=(10, 7), n_num=3, e=3):
        super().__init__()
        self.embs = nn.ModuleList(nn.Embedding(n, 4) for n in n_ids)
        d = 4 * len(n_ids) + n_num
        self.experts = _experts(d, e)
        self.gates = nn.ModuleList(nn.Linear(d, e) for _ in range(2))
        self.towers = nn.ModuleList(nn.Linear(8, 1) for _ in range(2))

    def forward(self, categorical, numerical):
        emb = [m(categorical[:, i]) for i, m in enumerate(self.embs)]
        x = torch.cat([*emb, numerical], dim=1)
        return torch.cat([torch.sigmoid(t(_mix(g, self.experts, x))) for g, t in zip(self.gates, self.towers)], 1)


class FuxiStyle(nn.Module):
    """FuxiCTR style: forward(inputs: dict) returning {"<label>_pred": ...}."""

    def __init__(self, cols=("a", "b", "c", "d"), e=3):
        super().__init__()
        self.cols = list(cols)
        self.experts = _experts(len(cols), e)
        self.gates = nn.ModuleList(nn.Linear(len(cols), e) for _ in range(2))
        self.towers = nn.ModuleList(nn.Linear(8, 1) for _ in range(2))

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = torch.stack([inputs[c] for c in self.cols], dim=1)
        return {
            f"{name}_pred": torch.sigmoid(t(_mix(g, self.experts, x)))
            for name, g, t in zip(("click", "share"), self.gates, self.towers)
        }


class TupleInputMMoE(nn.Module):
    """forward(inputs) with inputs = (int64 ids [B, 1], float32 values [B, 2]); [B, 2] logits."""

    def __init__(self, n_ids=9, e=3):
        super().__init__()
        self.emb = nn.Embedding(n_ids, 4)
        self.experts = _experts(6, e)
        self.gates = nn.ModuleList(nn.Linear(6, e) for _ in range(2))
        self.towers = nn.ModuleList(nn.Linear(8, 1) for _ in range(2))

    def forward(self, inputs):
        ids, values = inputs
        x = torch.cat([self.emb(ids[:, 0]), values], dim=1)
        return torch.cat([t(_mix(g, self.experts, x)) for g, t in zip(self.gates, self.towers)], dim=1)


if __name__ == "__main__":  # training would run here
    raise SystemExit("not during tests")
'''


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The script file and its classes as `python train.py` defines them (module `__main__`)."""
    root = tmp_path_factory.mktemp("script")
    path = root / "train_mtl.py"
    path.write_text(SCRIPT)
    namespace: dict = {"__name__": "__main__"}
    exec(compile(SCRIPT.split('if __name__ == "__main__"')[0], str(path), "exec"), namespace)
    return path, namespace


def _save(script: tuple[Path, dict], name: str, tmp_path: Path, monkeypatch, **kwargs):
    """Pickle `name(**kwargs)` whole as the script would (`__main__.Name`); the class is then gone."""
    namespace = script[1]
    cls = namespace[name]
    monkeypatch.setattr(sys.modules["__main__"], name, cls, raising=False)
    torch.manual_seed(1)
    model = cls(**kwargs).eval()
    ckpt = tmp_path / f"{name}.pt"
    torch.save(model, ckpt)
    monkeypatch.delattr(sys.modules["__main__"], name)
    return model, ckpt


def _rows(**columns) -> pd.DataFrame:
    return pd.DataFrame(columns)


RNG = np.random.default_rng(0)
DICT_ROWS = _rows(
    user_id=RNG.integers(0, 12, N),
    f0=RNG.normal(size=N),
    f1=RNG.normal(size=N).astype("float32"),
    f2=RNG.normal(size=N),
    city=RNG.choice(["paris", "oslo"], N),  # a non-numeric segment column: left out
    device=RNG.integers(0, 3, N),  # numeric, but the forward never reads it: left out
    like=RNG.integers(0, 2, N),
    finish=RNG.integers(0, 2, N).astype("float64"),
)
TENSOR_ROWS = _rows(
    **{f"d{i}": RNG.normal(size=N) for i in range(6)}, click=RNG.integers(0, 2, N), like=RNG.integers(0, 2, N)
)
POSITIONAL_ROWS = _rows(
    user_id=RNG.integers(0, 10, N),
    n0=RNG.normal(size=N),
    item_id=RNG.integers(0, 7, N),
    n1=RNG.normal(size=N),
    n2=RNG.normal(size=N),
    click=RNG.integers(0, 2, N),
    purchase=RNG.integers(0, 2, N),
)
FUXI_ROWS = _rows(
    **{c: RNG.normal(size=N) for c in "abcd"}, is_click=RNG.integers(0, 2, N), share=RNG.integers(0, 2, N)
)
TUPLE_ROWS = _rows(
    shop=RNG.integers(0, 9, N),
    v0=RNG.normal(size=N),
    v1=RNG.normal(size=N),
    y_ctr=RNG.integers(0, 2, N),
    y_cvr=RNG.integers(0, 2, N),
)


def _direct(name: str, model, df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per-task predictions from a hand-written forward (not through mmoe-inspect), keyed by label column."""
    t = lambda c: torch.tensor(df[c].to_numpy())  # noqa: E731
    m = lambda cols, dtype=None: torch.tensor(np.ascontiguousarray(df[cols].to_numpy(dtype)))  # noqa: E731
    with torch.no_grad():
        if name == "DictMMoE":
            out = model({"user_id": t("user_id"), **{c: t(c).float() for c in ("f0", "f1", "f2")}})
            return {"like": out["like_pred"].numpy(), "finish": out["finish_pred"].numpy()}
        if name == "TensorMMoE":
            a, b = model(m([f"d{i}" for i in range(6)], np.float32))
            return {"click": a[:, 0].numpy(), "like": b[:, 0].numpy()}
        if name == "PositionalMMoE":
            out = model(
                m(["user_id", "item_id"]),
                m(["n0", "n1", "n2"], np.float32),
            )
            return {"click": out[:, 0].numpy(), "purchase": out[:, 1].numpy()}
        if name == "FuxiStyle":
            out = model({c: t(c).float() for c in "abcd"})
            return {"is_click": out["click_pred"][:, 0].numpy(), "share": out["share_pred"][:, 0].numpy()}
        out = model((m(["shop"]), m(["v0", "v1"], np.float32)))
        return {"y_ctr": out[:, 0].numpy(), "y_cvr": out[:, 1].numpy()}


CASES = [
    pytest.param("DictMMoE", DICT_ROWS, "a dict {column: tensor}", {"like_pred": "like", "finish_pred": "finish"}, id="dict-in-dict-out"),
    pytest.param("TensorMMoE", TENSOR_ROWS, "ONE float32 tensor [batch, 6]", {"click": "click", "like": "like"}, id="tensor-in-tuple-out"),
    pytest.param("PositionalMMoE", POSITIONAL_ROWS, "positional arguments forward(categorical=int64 [batch, 2]", {"click": "click", "purchase": "purchase"}, id="positional-in-concat-out"),
    pytest.param("FuxiStyle", FUXI_ROWS, "a dict {column: tensor} of 4 columns", {"click_pred": "is_click", "share_pred": "share"}, id="fuxi-label-pred-keys"),
    pytest.param("TupleInputMMoE", TUPLE_ROWS, "one tuple (int64 [batch, 1] of shop; float32 [batch, 2]", {"y_ctr": "y_ctr", "y_cvr": "y_cvr"}, id="tuple-in-logits-out"),
]  # fmt: skip


def _invoke(*args: object) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, ANSI.sub("", result.output)


@pytest.mark.parametrize(("name", "df", "form", "labels"), CASES)
def test_report_needs_only_trust_and_model_code(
    name, df, form, labels, script, tmp_path, monkeypatch
) -> None:
    """`report CKPT --trust-checkpoint --model-code FILE --data ROWS`: exit 0, the binding named on the
    terminal and in metrics.json, each task's mean/std prediction and label rate equal a direct forward."""
    model, ckpt = _save(script, name, tmp_path, monkeypatch)
    data = tmp_path / "rows.parquet"
    df.to_parquet(data, index=False)
    out = tmp_path / "report"
    code, text = _invoke(
        "report", ckpt, "--trust-checkpoint", "--model-code", script[0], "--data", data, "--out", out
    )
    assert code == 0, text
    assert f"input binding for {name}" in text and form in text, text
    metrics = json.loads((out / "metrics.json").read_text())
    binding = metrics["meta"]["input_binding"]
    assert binding["guessed"] and form in binding["notes"][0]
    assert any(form in n for n in metrics["topology"]["notes"])
    tasks = {row["task"]: row for row in metrics["tables"]["tasks"]}
    assert {t: row["label"] for t, row in tasks.items()} == labels
    direct = _direct(name, model, df)
    logits = name == "TupleInputMMoE"  # logits out, 0/1 labels: read as binary tasks' logits (sigmoid)
    for task, column in labels.items():
        pred, row = direct[column], tasks[task]
        if logits:
            assert row["kind"] == "binary"
            pred = 1.0 / (1.0 + np.exp(-np.asarray(pred, dtype=np.float64)))
        assert row["n_labelled"] == N
        assert row["label_mean"] == pytest.approx(df[column].mean(), abs=1e-12)
        assert row["mean_prediction"] == pytest.approx(float(np.mean(pred)), abs=1e-6)
        assert row["std_prediction"] == pytest.approx(float(np.std(pred)), rel=1e-3, abs=1e-6)
    if logits:
        assert any("read as binary tasks' logits" in n for n in metrics["topology"]["notes"])
    assert not (tmp_path / "train_mtl.py.ran").exists()


@pytest.mark.parametrize(("name", "df", "form", "labels"), CASES)
def test_the_library_binding_feeds_what_a_direct_forward_gets(name, df, form, labels, script) -> None:
    """`bind_inputs` (the Python API behind the CLI): its input function's predictions equal the direct forward."""
    torch.manual_seed(1)
    model = script[1][name]().eval()
    b = bind_inputs(model, df)
    assert b.guessed and form in b.notes[0]
    assert "city" not in (b.features or ())
    with torch.no_grad():
        out = call_model(model, b.input_fn(df))
    direct = _direct(name, model, df)
    got = out if isinstance(out, dict) else None
    for j, (task, column) in enumerate(labels.items()):
        if got is not None:
            value = got[task].reshape(-1)
        elif isinstance(out, tuple):
            value = out[j].reshape(-1)
        else:
            value = out[:, j]
        np.testing.assert_array_equal(value.numpy(), direct[column])


def test_dropped_and_label_columns_are_named(script) -> None:
    b = bind_inputs(script[1]["DictMMoE"]().eval(), DICT_ROWS)
    assert b.features == ("user_id", "f0", "f1", "f2")
    text = " | ".join(b.notes)
    assert "non-numeric column(s) left out of the inputs: city" in text
    assert "column(s) the forward never reads, left out of the inputs: device" in text
    assert "label column(s) not fed to the model: like, finish" in text
    assert "like_pred -> like" in text and "finish_pred -> finish" in text
    dtypes = {k: v.dtype for k, v in b.input_fn(DICT_ROWS.head(3)).items()}
    assert dtypes == {"user_id": torch.int64, "f0": torch.float32, "f1": torch.float32, "f2": torch.float32}


# --------------------------------------------------------------------------- ambiguous: exit 2, the flag named
def _extra_column(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(session_len=RNG.normal(size=len(df)))  # not a label, not an input of the model


AMBIGUOUS = [
    pytest.param("TensorMMoE", lambda: _extra_column(TENSOR_ROWS), ("takes 6 input columns but got 7", "--features"), id="extra-column"),
    pytest.param("FuxiStyle", lambda: FUXI_ROWS.assign(click_label=FUXI_ROWS["is_click"]), ("'is_click' or 'click_label'", "--labels click_pred=is_click"), id="two-labels-fit-one-output"),
    pytest.param("DictMMoE", lambda: DICT_ROWS.drop(columns=["user_id"]), ("reads the input 'user_id'", "--features"), id="dict-key-missing"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "make", "words"), AMBIGUOUS)
def test_ambiguous_inputs_exit_2_naming_the_flag(name, make, words, script, tmp_path, monkeypatch) -> None:
    _, ckpt = _save(script, name, tmp_path, monkeypatch)
    data = tmp_path / "rows.parquet"
    make().to_parquet(data, index=False)
    code, text = _invoke("summary", ckpt, "--trust-checkpoint", "--model-code", script[0], "--data", data)
    assert code == 2, text
    line = text.strip().splitlines()[-1]
    assert line.startswith("error:") and "Traceback" not in text
    for w in words:
        assert w in line, line


def test_two_outputs_for_one_label_name_the_labels_flag(script) -> None:
    """`like_pred` and `like_prob` both read `like`: which is the task is the user's call."""

    class Twice(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(3, 1)

        def forward(self, x):
            p = torch.sigmoid(self.lin(x)).squeeze(1)
            return {"like_pred": p, "like_prob": p * 0.5}

    df = _rows(
        a=RNG.normal(size=20), b=RNG.normal(size=20), c=RNG.normal(size=20), like=RNG.integers(0, 2, 20)
    )
    with pytest.raises(
        InputMappingError, match=r"'like_pred' and 'like_prob' both match .*--labels like_pred=like$"
    ):
        bind_inputs(Twice(), df)
    b = bind_inputs(Twice(), df, labels="like_pred=like")  # the flag the error names fixes it
    assert b.labels == {"like_pred": "like"} and b.features == ("a", "b", "c")


def test_given_flags_are_kept(script) -> None:
    model = script[1]["TensorMMoE"]().eval()
    df = _extra_column(TENSOR_ROWS)
    b = bind_inputs(model, df, features=[f"d{i}" for i in range(6)])
    assert b.form == "tensor" and b.features == tuple(f"d{i}" for i in range(6))
    assert not any("input binding" in n for n in b.notes)  # --features alone meant one tensor: nothing to say
    with pytest.raises(InputMappingError, match="--input must be one of dict, tensor"):
        bind_inputs(model, df, input="list")
    with pytest.raises(
        InputMappingError, match=r"does not take its input as a dict \(TypeError: .*pass --input tensor"
    ):
        bind_inputs(model, TENSOR_ROWS, input="dict")


# --------------------------------------------------------------------------- names
@pytest.mark.parametrize(
    ("output", "columns", "expected"),
    [
        ("like_pred", ["like", "finish"], ["like"]),
        ("pred_like", ["like"], ["like"]),
        ("Like_Prob", ["like"], ["like"]),
        ("y_like", ["like"], ["like"]),
        ("like_logit", ["LIKE"], ["LIKE"]),
        ("click_pred", ["is_click", "share"], ["is_click"]),
        ("click", ["Click"], ["Click"]),
        ("click_pred", ["is_click", "click_label"], ["is_click", "click_label"]),
        ("score", ["like"], []),
    ],
)
def test_output_names_match_label_columns(output, columns, expected) -> None:
    assert label_for_output(output, columns) == expected


def test_label_like_names() -> None:
    for name in ("click", "is_click", "label", "y_ctr", "y1", "target", "ctr_label", "Purchase"):
        assert looks_like_label(name), name
    for name in ("year", "yield", "user_id", "price", "d0", "session_len", "labelled_by"):
        assert not looks_like_label(name), name


# --------------------------------------------------------------------------- the model left as found
def _fingerprint(model: torch.nn.Module) -> tuple:
    h = hashlib.sha256()
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        h.update(name.encode())
        h.update(t.detach().cpu().numpy().tobytes())
    for name, p in model.named_parameters():
        h.update((name + "grad").encode())
        h.update(b"none" if p.grad is None else p.grad.numpy().tobytes())
    hooks = [
        (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()
    ]
    modes = [m.training for m in model.modules()]
    return h.hexdigest(), hooks, modes


class Stateful(torch.nn.Module):
    """Train-mode BatchNorm, a forward that counts its calls in a buffer and draws noise (noisy gating)."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = torch.nn.BatchNorm1d(4)
        self.gate = torch.nn.Linear(4, 3)
        self.experts = torch.nn.ModuleList(torch.nn.Linear(4, 2) for _ in range(3))
        self.head = torch.nn.Linear(2, 1)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, batch: dict):
        self.calls += 1
        x = self.bn(torch.stack([batch[k] for k in ("a", "b", "c", "d")], dim=1))
        w = torch.softmax(self.gate(x) + torch.randn(x.shape[0], 3), dim=1)
        ex = torch.stack([e(x) for e in self.experts], dim=1)
        return {"click_pred": torch.sigmoid(self.head((w.unsqueeze(-1) * ex).sum(1))).squeeze(1)}


def test_trial_forwards_leave_the_model_as_found() -> None:
    model = Stateful()
    model.train()
    model.experts[1].eval()  # mixed modes must come back mixed
    model.head.weight.grad = torch.full_like(model.head.weight, 0.5)
    handle = model.gate.register_forward_hook(lambda *a: None)  # the user's own hook stays, nothing added
    df = _rows(**{c: RNG.normal(size=12) for c in "abcd"}, click=RNG.integers(0, 2, 12))
    before = _fingerprint(model)
    rng = torch.get_rng_state()
    b = bind_inputs(model, df)
    assert b.form == "dict" and b.labels == {"click_pred": "click"}
    assert _fingerprint(model) == before
    assert torch.equal(torch.get_rng_state(), rng)  # the noise drawn by the trials is given back
    with pytest.raises(InputMappingError):  # also when every trial fails
        bind_inputs(model, df.drop(columns=["a"]))
    assert _fingerprint(model) == before
    handle.remove()


def test_load_model_binds_through_the_python_api(script, tmp_path, monkeypatch) -> None:
    """`LoadedModel.bind` / `.inspect` / `.topology`: the same binding the CLI uses, recorded in the result."""
    model, ckpt = _save(script, "PositionalMMoE", tmp_path, monkeypatch)
    loaded = load_model(ckpt, trust=True, model_code=script[0])
    b = loaded.bind(POSITIONAL_ROWS)
    assert b.form == "args" and b.tasks == ("click", "purchase")
    assert b.features == ("user_id", "item_id", "n0", "n1", "n2")
    topo = loaded.topology(POSITIONAL_ROWS)
    assert topo.task_names == ("click", "purchase") and "positional arguments" in topo.notes[0]
    assert len(topo.gates) == 2
    result = loaded.inspect(POSITIONAL_ROWS, causal=True)
    assert result.meta["input_binding"]["form"] == "args"
    assert result.causal is not None  # the causal passes call forward(categorical, numerical) too
    means = result.table("tasks").set_index("task")["mean_prediction"]
    direct = _direct("PositionalMMoE", model, POSITIONAL_ROWS)
    assert means["click"] == pytest.approx(float(direct["click"].mean()), abs=1e-6)


def test_a_label_like_column_the_forward_asks_for_is_fed_back() -> None:
    """`likes` (a count) reads like a label, but the dict forward asks for it: it is an input after all."""

    class ReadsLikes(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

        def forward(self, batch):
            x = torch.stack([batch["a"], batch["likes"]], dim=1)
            return {"finish_pred": torch.sigmoid(self.lin(x)).squeeze(1)}

    df = _rows(a=RNG.normal(size=20), likes=RNG.normal(size=20), finish=RNG.integers(0, 2, 20))
    b = bind_inputs(ReadsLikes(), df)
    assert b.form == "dict" and b.features == ("a", "likes")
    assert b.labels == {"finish_pred": "finish"}
    assert any("named like labels that the forward reads, fed as inputs: likes" in n for n in b.notes)


def test_topology_command_names_the_binding(script, tmp_path, monkeypatch) -> None:
    _, ckpt = _save(script, "FuxiStyle", tmp_path, monkeypatch)
    data = tmp_path / "rows.parquet"
    FUXI_ROWS.to_parquet(data, index=False)
    code, text = _invoke("topology", ckpt, "--trust-checkpoint", "--model-code", script[0], "--data", data)
    assert code == 0, text
    assert "note: input binding for FuxiStyle" in text and "a dict {column: tensor} of 4 columns" in text
    assert "click_pred -> is_click" in text
    assert text.count("gate") >= 2


def test_labels_of_the_wrong_type_are_one_clear_error(tmp_path) -> None:
    """A label value of another type is one line naming the forms it takes, not an AttributeError from deep in
    the parser; `LoadedModel.inspect(labels=False)` ignores the labels, as `inspect()` does."""
    from mmoe_inspect.checkpoint import save_checkpoint
    from mmoe_inspect.data.inputs import parse_labels
    from mmoe_inspect.models import MMoE

    assert parse_labels("click=is_click, buy = is_buy") == {"click": "is_click", "buy": "is_buy"}
    for bad in (False, True, 3):
        with pytest.raises(InputMappingError, match=r"task=column.*mapping, not"):
            parse_labels(bad)  # type: ignore[arg-type]
    model = MMoE(4, ("click", "buy"), n_experts=2, expert_hidden=(4,), tower_hidden=(2,))
    loaded = load_model(save_checkpoint(tmp_path / "m.pt", model))
    frame = pd.DataFrame(np.random.default_rng(0).normal(size=(64, 4)), columns=[f"x{i}" for i in range(4)])
    frame["click"] = (np.arange(64) % 3 == 0).astype(float)
    with pytest.raises(InputMappingError, match="not int 3"):
        loaded.inspect(frame, labels=3)  # type: ignore[arg-type]
    labelled, ignored = loaded.inspect(frame), loaded.inspect(frame, labels=False)
    assert labelled.table("tasks").set_index("task").loc["click", "n_labelled"] == 64
    assert ignored.table("tasks").set_index("task").loc["click", "n_labelled"] == 0
    assert loaded.inspect(frame, labels=True).table("tasks").equals(labelled.table("tasks"))


def test_topology_reads_logit_tasks_as_inspect_does(script, tmp_path, monkeypatch) -> None:
    """`LoadedModel.topology` (what `mmoe-inspect topology --write` saves) gives logit outputs with 0/1 labels the
    kind `inspect` uses (binary logits), and with `labels=False` the kind the outputs alone suggest."""
    _model, ckpt = _save(script, "TupleInputMMoE", tmp_path, monkeypatch)
    loaded = load_model(ckpt, trust=True, model_code=script[0])
    kinds = {t.name: (t.kind, t.probability) for t in loaded.topology(TUPLE_ROWS, discover=True).tasks}
    assert kinds == {"y_ctr": ("binary", False), "y_cvr": ("binary", False)}
    inspected = loaded.inspect(TUPLE_ROWS)
    assert {t.name: (t.kind, t.probability) for t in inspected.topology.tasks} == kinds
    unlabelled = loaded.topology(TUPLE_ROWS, discover=True, labels=False)
    assert {t.kind for t in unlabelled.tasks} == {"regression"}


def test_a_float64_model_is_told_its_dtype_not_to_name_features() -> None:
    """A `model.double()` model fails on float32 features on every form: the message names the dtype and its
    fix (the hint used to be --features, which cannot help)."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.lin(x))

    df = pd.DataFrame(np.random.default_rng(0).normal(size=(40, 3)), columns=["a", "b", "c"])
    df["task_0"] = 1.0
    with pytest.raises(InputMappingError) as err:
        bind_inputs(Net().double(), df)
    msg = str(err.value)
    assert (
        "parameters are float64 but the data's features arrive as float32" in msg and "--features" not in msg
    )
    assert bind_inputs(Net(), df).input_fn is not None  # the float32 model binds


def test_a_keyword_only_forward_gets_a_way_out_not_circular_advice() -> None:
    class Kw(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 1)

        def forward(self, *, dense: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
            return torch.sigmoid(self.lin(dense) * scale)

    df = pd.DataFrame(np.random.default_rng(0).normal(size=(40, 3)), columns=["a", "b", "c"])
    with pytest.raises(
        InputMappingError, match=r"keyword-only arguments \(dense\).*self\.model\(\*\*batch\)"
    ):
        bind_inputs(Kw(), df)
