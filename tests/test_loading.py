"""Checkpoint forms, the pickle scan, user code, adapters' input conventions and data sources."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import mmoe_inspect as mi
from mmoe_inspect.checkpoint import save_checkpoint
from mmoe_inspect.data.schema import CategoricalFeature, FeatureSpec
from mmoe_inspect.data.sources import TableSource, require_columns, sample_mask
from mmoe_inspect.loading import (
    CheckpointError,
    CheckpointFileError,
    DataError,
    FrameInputs,
    IdRangeError,
    InputColumn,
    LabelValueError,
    MissingColumnError,
    ModelCodeError,
    NonFiniteError,
    NonNumericError,
    StateDictMismatchError,
    UnsupportedCheckpointError,
    UntrustedCheckpointError,
    adapter_for,
    load_model,
    sniff,
)
from mmoe_inspect.loading._code import user_code
from mmoe_inspect.models import MMoE

TINY = '''
"""A user's model module: a small MMoE and factories for it."""
import torch
from torch import nn


class TinyMMoE(nn.Module):
    def __init__(self, d=3, n_experts=3, width=4):
        super().__init__()
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(d, width), nn.ReLU()) for _ in range(n_experts))
        self.gates = nn.ModuleList(nn.Sequential(nn.Linear(d, n_experts), nn.Softmax(dim=1)) for _ in range(2))
        self.towers = nn.ModuleList(nn.Linear(width, 1) for _ in range(2))

    def forward(self, x):
        ex = torch.stack([e(x) for e in self.experts], dim=1)
        outs = [torch.sigmoid(t((g(x).unsqueeze(-1) * ex).sum(1))) for g, t in zip(self.gates, self.towers)]
        return torch.cat(outs, dim=1)


def build():
    torch.manual_seed(1)
    return TinyMMoE()


def build_from(config):
    return TinyMMoE(n_experts=config["n_experts"])


def not_a_model():
    return {"weights": 1}


def collate(frame):
    return torch.tensor(frame[["a", "b", "c"]].to_numpy(), dtype=torch.float32)
'''


class Evil:
    """Unpickling this runs a shell command that writes a file."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.target}",))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    path = folder / "tiny_models.py"
    path.write_text(TINY)
    with user_code(model_code=path) as module:
        yield path, module


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "a": rng.normal(size=300).astype("float32"),
            "b": rng.normal(size=300).astype("float32"),
            "c": rng.normal(size=300).astype("float32"),
            "click": rng.integers(0, 2, 300),
            "buy": rng.integers(0, 2, 300),
        }
    )
    path = tmp_path_factory.mktemp("rows") / "rows.parquet"
    df.to_parquet(path)
    return path


# ------------------------------------------------------------------------- checkpoint forms
def test_our_checkpoint_loads_with_its_rows(tmp_path) -> None:
    features = FeatureSpec(dense=("x0", "x1"), categorical=(CategoricalFeature("city", 5, 4),))
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "x0": rng.normal(size=200).astype("float32"),
            "x1": rng.normal(size=200).astype("float32"),
            "city": rng.integers(0, 5, 200),
            "click": rng.integers(0, 2, 200).astype("float32"),
            "purchase": rng.integers(0, 2, 200).astype("float32"),
        }
    )
    model = MMoE(features, ["click", "purchase"], n_experts=3, expert_hidden=(8,), tower_hidden=(4,))
    path = save_checkpoint(tmp_path / "ours.pt", model, eval_frame=frame)
    loaded = load_model(path, trust=False)
    assert loaded.form == "mmoe-inspect checkpoint" and loaded.adapter.name == "mmoe-inspect"
    assert loaded.features == ("x0", "x1", "city") and loaded.tasks == ("click", "purchase")
    via_loading = loaded.inspect()
    direct = mi.inspect(loaded.model, loaded.eval_frame, features=features)
    pd.testing.assert_frame_equal(via_loading.table("utilization"), direct.table("utilization"))
    pd.testing.assert_frame_equal(via_loading.table("tasks"), direct.table("tasks"))

    # the same weights as a training dict with our model_config build without --builder
    ours = torch.load(path, weights_only=True)
    train_dict = tmp_path / "train.pt"
    torch.save(
        {"model_state_dict": ours["state_dict"], "model_config": ours["model_config"], "epoch": 9}, train_dict
    )
    again = load_model(train_dict)
    assert again.form == "training dict (state_dict under 'model_state_dict') + model_config"
    x = loaded.input_fn()(frame)
    with torch.inference_mode():
        torch.testing.assert_close(again.model(x), loaded.model(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("wrap", "form"),
    [
        pytest.param(lambda sd: sd, "state_dict + --builder", id="bare"),
        pytest.param(
            lambda sd: {"state_dict": sd, "epoch": 2},
            "training dict (state_dict under 'state_dict')",
            id="state_dict",
        ),
        pytest.param(
            lambda sd: {"model": sd, "optimizer": {}}, "training dict (state_dict under 'model')", id="model"
        ),
        pytest.param(lambda sd: {"net": sd, "step": 5}, "training dict (state_dict under 'net')", id="net"),
        pytest.param(
            lambda sd: {"model_state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 1},
            "training dict (state_dict under 'model_state_dict')",
            id="ddp-prefix",
        ),
    ],
)
def test_state_dict_forms_load_with_a_builder(wrap, form, tiny, tmp_path) -> None:
    code, module = tiny
    model = module.build()
    path = tmp_path / "w.pt"
    torch.save(wrap(model.state_dict()), path)
    loaded = load_model(path, builder="tiny_models:build", model_code=code)
    assert loaded.form.startswith(form)
    x = torch.randn(16, 3)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(x), model(x), rtol=0, atol=0)
    assert any("prefix 'module.'" in n for n in loaded.notes) == ("module." in str(wrap({"k": 0})))


def test_builder_gets_the_training_dicts_config(tiny, tmp_path) -> None:
    code, module = tiny
    model = module.TinyMMoE(n_experts=5)
    path = tmp_path / "cfg.pt"
    torch.save({"model_state_dict": model.state_dict(), "config": {"n_experts": 5}}, path)
    loaded = load_model(path, builder="tiny_models:build_from", model_code=code)
    assert len(loaded.model.experts) == 5
    bare = tmp_path / "bare.pt"
    torch.save(model.state_dict(), bare)
    with pytest.raises(ModelCodeError, match="stores no config"):
        load_model(bare, builder="tiny_models:build_from", model_code=code)


def test_state_dict_mismatch_names_the_keys_and_shapes(tiny, tmp_path) -> None:
    code, module = tiny
    path = tmp_path / "five.pt"
    torch.save(module.TinyMMoE(n_experts=5, width=6).state_dict(), path)
    with pytest.raises(StateDictMismatchError) as err:
        load_model(path, builder="tiny_models:build", model_code=code)
    text = str(err.value)
    assert "unexpected (experts.3.0.weight" in text and "of another shape" in text and "[6, 3]" in text
    assert "\n" not in text


def test_whole_module_refusal_lists_its_globals_and_trust_loads_it(tiny, tmp_path) -> None:
    code, module = tiny
    model = module.build()
    for protocol in (2, 4):  # GLOBAL opcodes, and STACK_GLOBAL with memoized strings
        path = tmp_path / f"whole{protocol}.pt"
        torch.save(model, path, pickle_protocol=protocol)
        found = sniff(path)
        assert found.kind == "torch-zip"
        assert found.globals[0] == "tiny_models.TinyMMoE"
        assert "torch.nn.modules.linear.Linear" in found.globals
        with pytest.raises(UntrustedCheckpointError, match=r"it would import tiny_models\.TinyMMoE"):
            load_model(path, model_code=code)
    loaded = load_model(tmp_path / "whole4.pt", trust=True, model_code=code)
    assert loaded.form == "pickled nn.Module" and type(loaded.model).__name__ == "TinyMMoE"
    legacy = tmp_path / "legacy.pt"
    torch.save(model, legacy, _use_new_zipfile_serialization=False)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps(model))
    for path in (legacy, plain):
        assert sniff(path).kind == "torch-legacy" and sniff(path).globals[0] == "tiny_models.TinyMMoE"
        with pytest.raises(UntrustedCheckpointError, match=r"tiny_models\.TinyMMoE"):
            load_model(path, model_code=code)
        x = torch.randn(4, 3)
        with torch.inference_mode():
            torch.testing.assert_close(load_model(path, trust=True, model_code=code).model(x), model(x))


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(lambda evil: evil, id="bare"),
        pytest.param(lambda evil: {"state_dict": {"w": torch.ones(2)}, "extra": evil}, id="in-training-dict"),
        pytest.param(lambda evil: [torch.ones(1), {"nested": (evil,)}], id="nested"),
    ],
)
@pytest.mark.parametrize("protocol", [2, 4])
def test_malicious_pickle_is_refused_and_writes_nothing(payload, protocol, tiny, tmp_path) -> None:
    target = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pt"
    torch.save(payload(Evil(target)), path, pickle_protocol=protocol)
    for kwargs in ({}, {"builder": "tiny_models:build", "model_code": tiny[0]}):
        with pytest.raises(UntrustedCheckpointError) as err:
            load_model(path, **kwargs)
        assert f"{os.system.__module__}.system" in str(err.value) and "WARNING" in str(err.value)
    assert sniff(path).globals  # scanned, never run
    assert not target.exists()


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_compiled_archives_are_refused_with_what_to_save(tmp_path) -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.Softmax(dim=1))
    script = tmp_path / "ts.pt"
    torch.jit.save(torch.jit.script(model), script)
    with pytest.raises(UnsupportedCheckpointError, match=r"TorchScript.*hooks cannot.*state_dict"):
        load_model(script, trust=True)
    exported = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(2, 3),)), exported)
    with pytest.raises(UnsupportedCheckpointError, match=r"torch\.export archive.*--builder"):
        load_model(exported, trust=True)


def test_files_that_are_not_checkpoints(tmp_path) -> None:
    good = tmp_path / "good.pt"
    torch.save({"w": torch.randn(64, 64)}, good)
    cases = {
        "missing.pt": (None, "does not exist"),
        "empty.pt": (b"", "empty"),
        "half.pt": (good.read_bytes()[: good.stat().st_size // 2], "truncated"),
        "noise.pt": (bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "not a PyTorch"),
        "config.json": (b'{"architecture": "mmoe"}', "JSON file"),
        "spec.toml": (b"[[tasks]]\nname = 'click'\n", "text file"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(CheckpointFileError, match=message):
            load_model(path)
    with pytest.raises(CheckpointFileError, match="folder"):
        load_model(tmp_path)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list"):
        load_model(tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="--device"):
        load_model(good, device="warp-drive")


def test_user_code_errors_and_cleanup(tiny, tmp_path) -> None:
    code, _ = tiny
    path = tmp_path / "sd.pt"
    torch.save(tiny[1].build().state_dict(), path)
    bad = tmp_path / "broken_code.py"
    bad.write_text("def build(:\n")
    path_before = list(sys.path)
    cases = [
        ({"builder": "no_such_pkg.models:build"}, "no module named 'no_such_pkg'"),
        ({"builder": "tiny_models:nope", "model_code": code}, "has no attribute 'nope'"),
        ({"builder": "tiny_models", "model_code": code}, "must look like package.module:function"),
        ({"builder": "tiny_models:not_a_model", "model_code": code}, "not a torch nn.Module"),
        ({"builder": "x:y", "model_code": tmp_path / "absent.py"}, "does not exist"),
        ({"builder": "broken_code:build", "model_code": bad}, r"failed to load \(line 1\): SyntaxError"),
        ({"builder": "tiny_models:build", "imports": ["no_such_module_xyz"]}, "--import no_such_module_xyz"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ModelCodeError, match=message):
            load_model(path, **kwargs)
    assert sys.path == path_before
    assert "broken_code" not in sys.modules


# ------------------------------------------------------------------------------ adapters
def test_frame_inputs_follow_each_convention() -> None:
    frame = pd.DataFrame(
        {
            "city": [1, 2, 3],
            "age": np.array([0.5, 1.5, 2.5], dtype="float64"),
            "hist": [[1, 2, 0], [3, 0, 0], [4, 5, 6]],
            "grade": pd.Categorical(["b", "a", "b"]),
        }
    )
    cols = (
        InputColumn("city", "int64", 1, 10),
        InputColumn("age", "float32"),
        InputColumn("hist", "int64", 3, 10),
        InputColumn("grade"),
    )
    as_dict = FrameInputs(cols, "dict")(frame)
    assert as_dict["city"].dtype == torch.int64 and as_dict["age"].dtype == torch.float32
    assert as_dict["hist"].shape == (3, 3) and as_dict["grade"].tolist() == [1, 0, 1]
    as_tensor = FrameInputs(cols, "tensor")(frame)
    assert as_tensor.dtype == torch.float32 and as_tensor.shape == (3, 6)
    assert as_tensor[2].tolist() == [3.0, 2.5, 4.0, 5.0, 6.0, 1.0]

    def bad(**change) -> pd.DataFrame:
        return frame.assign(**change)

    checks = [
        (bad(city=[1, 2, 10]), IdRangeError, r"holds 10 \(row 2\).*\(ids 0\.\.9\)"),
        (bad(city=[1.0, 2.5, 3.0]), IdRangeError, "non-integer"),
        (bad(age=[0.1, np.inf, 0.3]), NonFiniteError, "'age' has 1 row"),
        (bad(age=["x", "y", "z"]), NonNumericError, "'age' .* not numeric .* 'x'"),
        (bad(hist=[[1, 2], [3, 0, 0], [4, 5, 6]]), DataError, "different lengths"),
        (bad(hist=[1, 2, 3]), DataError, "expects a list of 3"),
    ]
    for broken, error, message in checks:
        with pytest.raises(error, match=message):
            FrameInputs(cols, "dict")(broken)


def test_adapters_pick_conventions_and_overrides(tiny) -> None:
    from torch_rechub.basic.features import DenseFeature, SequenceFeature, SparseFeature
    from torch_rechub.models.multi_task import MMOE

    feats = [
        SparseFeature("city", 5, embed_dim=2),
        SequenceFeature("hist", 5, embed_dim=2),
        DenseFeature("age"),
    ]
    rechub = MMOE(feats, ["classification", "regression"], 2, {"dims": [4]}, [{"dims": [2]}] * 2)
    adapter = adapter_for(rechub)
    assert adapter.name == "torch-rechub"
    fn = adapter.input_fn(rechub)
    assert fn.mode == "dict" and [(c.name, c.dtype, c.width) for c in fn.columns] == [
        ("city", "int64", 1),
        ("hist", "int64", None),
        ("age", "float32", 1),
    ]
    assert adapter.task_kinds(rechub) == ["binary", "regression"] and adapter.task_names(rechub) is None

    class MyMMOE(MMOE):  # a user's subclass still matches the library
        pass

    assert (
        adapter_for(MyMMOE(feats, ["classification"] * 2, 2, {"dims": [4]}, [{"dims": [2]}] * 2)) is adapter
    )
    plain = tiny[1].build()
    assert adapter_for(plain).name == "generic"
    with pytest.raises(DataError, match="--features a,b,c"):
        adapter_for(plain).input_fn(plain)
    over = adapter_for(plain).input_fn(plain, input="dict", features=["c", "a"])
    assert over.mode == "dict" and over.names == ("c", "a")
    collate = adapter_for(plain).input_fn(plain, collate="tiny_models:collate")
    assert collate(pd.DataFrame({"a": [1.0], "b": [2.0], "c": [3.0]})).tolist() == [[1.0, 2.0, 3.0]]
    with pytest.raises(DataError, match=r"--collate collate failed on rows 0\.\.0: KeyError"):
        collate(pd.DataFrame({"a": [1.0]}))
    with pytest.raises(DataError, match="--input must be one of"):
        adapter_for(plain).input_fn(plain, input="list")  # type: ignore[arg-type]


def test_deepctr_stale_device_is_synced_then_restored(tmp_path) -> None:
    from deepctr_torch.inputs import DenseFeat, SparseFeat, VarLenSparseFeat
    from deepctr_torch.models.multitask import MMOE

    feats = [
        SparseFeat("item", 9, embedding_dim=4),
        VarLenSparseFeat(SparseFeat("hist", 9, embedding_dim=4, embedding_name="item"), maxlen=3),
        DenseFeat("age", 1),
    ]
    model = MMOE(
        feats,
        num_experts=2,
        expert_dnn_hidden_units=(4,),
        gate_dnn_hidden_units=(),
        tower_dnn_hidden_units=(2,),
    )
    model.device = "cuda:0"  # trained on a GPU, now on a CPU machine: .to() never updates it
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "item": rng.integers(0, 9, 50),
            "hist": [list(rng.integers(0, 9, 3)) for _ in range(50)],
            "age": rng.normal(size=50),
            "ctr": rng.integers(0, 2, 50),
        }
    )
    parquet = tmp_path / "seq.parquet"
    df.to_parquet(parquet)
    adapter = adapter_for(model)
    fn = adapter.input_fn(model)
    assert [(c.name, c.width) for c in fn.columns] == [("item", 1), ("hist", 3), ("age", 1)]
    x = fn(df)
    assert x.shape == (50, 5)
    if not torch.cuda.is_available():
        with pytest.raises((AssertionError, RuntimeError)):
            model(x)
    with adapter.session(model), torch.inference_mode():
        expected = model(x)
    assert model.device == "cuda:0"  # restored

    path = tmp_path / "deepctr.pt"
    torch.save(model, path)
    loaded = load_model(path, trust=True)
    assert any("model.device was 'cuda:0'; set to 'cpu'" in n for n in loaded.notes)
    result = loaded.inspect(parquet)
    assert result.topology.task_names == ("ctr", "ctcvr") and len(result.topology.gates) == 2
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(x), expected, rtol=0, atol=0)


# ------------------------------------------------------------------------ data and labels
def test_sampling_is_deterministic_and_batch_size_invariant(rows) -> None:
    src = TableSource.of(rows)
    picked = [
        np.concatenate([c.index.to_numpy() for c in src.iter_frames(bs, ["a"], sample=0.3, seed=7)])
        for bs in (7, 64, 1000)
    ]
    assert all(np.array_equal(picked[0], p) for p in picked[1:])
    assert 60 <= len(picked[0]) <= 120
    assert [len(c) for c in src.iter_frames(64, ["a"], sample=0.3, seed=7)][:-1] == [64] * (
        len(picked[0]) // 64
    )
    assert not np.array_equal(picked[0], np.flatnonzero(sample_mask(np.arange(300), 0.3, seed=8)))
    assert sum(sample_mask(np.arange(100_000), 0.25)) == pytest.approx(25_000, rel=0.02)


def test_parquet_folder_streams_every_file_in_order(rows, tmp_path) -> None:
    df = pd.read_parquet(rows)
    folder = tmp_path / "parts"
    (folder / "day=2").mkdir(parents=True)
    df.iloc[:100].to_parquet(folder / "part-0.parquet")
    df.iloc[100:220].to_parquet(folder / "part-1.parquet")
    df.iloc[220:].to_parquet(folder / "day=2" / "part-0.parquet")  # nested: sorts after part-1
    (folder / "_SUCCESS").write_text("")
    df.iloc[:5].to_parquet(folder / ".part-0.parquet.crc.parquet")  # hidden: skipped
    src = TableSource.of(folder)
    assert src.n_rows() == 300 and src.columns() == list(df.columns)
    back = pd.concat(src.iter_frames(64, ["a", "click"]))
    order = np.r_[220:300, 0:220]
    np.testing.assert_array_equal(back["a"].to_numpy(), df["a"].to_numpy()[order])
    assert back.index.tolist() == list(range(300))
    df.iloc[:10].drop(columns=["b"]).to_parquet(folder / "part-2.parquet")
    # a column one file lacks: NaN in that file's rows (a partial label), refused as a feature naming the file
    assert TableSource.of(folder).partial_columns() == {"b": folder / "part-2.parquet"}
    back = pd.concat(TableSource.of(folder).iter_frames(64, ["a", "b"]))
    assert len(back) == 310 and back["b"].isna().sum() == 10 and list(back.columns) == ["a", "b"]
    with pytest.raises(MissingColumnError, match=r"part-2\.parquet lacks feature column\(s\) \['b'\]"):
        require_columns(TableSource.of(folder), ["a", "b"])


def test_labels_mapping_names_and_checks(tiny, rows, tmp_path) -> None:
    code, module = tiny
    path = tmp_path / "whole.pt"
    torch.save(module.build(), path)
    loaded = load_model(path, trust=True, model_code=code)
    df = pd.read_parquet(rows).rename(columns={"click": "is_click"})
    renamed = tmp_path / "renamed.parquet"
    df.to_parquet(renamed)
    result = loaded.inspect(renamed, features="a,b,c", tasks="click,buy", labels="click=is_click")
    table = result.table("tasks").set_index("task")
    assert table.loc["click", "label"] == "is_click" and table.loc["click", "n_labelled"] == 300
    assert table.loc["buy", "n_labelled"] == 300  # matched by name
    # a model that names no outputs takes its task names from --labels when they cover every output
    assert loaded.task_names(None, {"x": "click", "y": "buy"}) is None  # TinyMMoE: unknown output count
    with pytest.raises(DataError, match=r"labels name task\(s\) \['clik'\] \(did you mean 'click'\?\)"):
        loaded.inspect(renamed, features="a,b,c", tasks="click,buy", labels="clik=is_click")
    with pytest.raises(
        MissingColumnError, match=r"lacks label column\(s\) \['is_clik'\].*did you mean 'is_click'"
    ):
        loaded.inspect(renamed, features="a,b,c", tasks="click,buy", labels="click=is_clik")
    df.loc[150, "buy"] = 2
    df.to_parquet(renamed)
    with pytest.raises(LabelValueError, match=r"'buy' of binary task 'buy' .* holds 2 \(row 150\)"):
        loaded.inspect(renamed, features="a,b,c", tasks="click,buy", labels="click=is_click")
    with pytest.raises(MissingColumnError, match=r"\['cc'\]; 'cc' \(did you mean 'c'\?\)"):
        loaded.inspect(renamed, features="a,b,cc", tasks="click,buy")


def test_rechub_tasks_take_their_names_from_labels(rows, tmp_path) -> None:
    from torch_rechub.basic.features import DenseFeature
    from torch_rechub.models.multi_task import MMOE

    model = MMOE(
        [DenseFeature(n) for n in "abc"], ["classification"] * 2, 2, {"dims": [4]}, [{"dims": [2]}] * 2
    )
    path = tmp_path / "r.pt"
    torch.save(model, path)
    loaded = load_model(path, trust=True)
    result = loaded.inspect(
        rows, labels="clicked=click,bought=buy", config=mi.InspectConfig(sample=0.5, max_rows=100)
    )
    assert result.topology.task_names == ("clicked", "bought")
    assert result.n_rows == 100 and result.meta["sample"] == 0.5
    assert loaded.inspect(rows).topology.task_names == ("task_0", "task_1")


def test_csv_text_far_down_the_file_is_a_non_numeric_error(tmp_path, monkeypatch) -> None:
    """pyarrow types CSV columns from the first block; a word in a later block is still one clear line."""
    import mmoe_inspect.data.sources as sources

    monkeypatch.setattr(sources, "CSV_BLOCK_BYTES", 1 << 10)
    n = 2000
    frame = pd.DataFrame({"a": np.arange(n) % 97, "b": np.ones(n)}).astype({"a": object})
    frame.loc[n - 3, "a"] = "n/a?"
    path = tmp_path / "late.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(NonNumericError, match=r"column 'a' of .* holds 'n/a\?' further down"):
        for _ in TableSource.of(path).iter_frames(500, ["a"]):
            pass


def test_import_flag_and_working_directory(tmp_path, monkeypatch) -> None:
    """Classes pickled from the user's package load when it is importable (cwd or --import)."""
    pkg = tmp_path / "proj" / "userpkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(TINY)
    monkeypatch.syspath_prepend(str(tmp_path / "proj"))
    from userpkg.nets import build  # type: ignore[import-not-found]

    path = tmp_path / "pkg_model.pt"
    torch.save(build(), path)
    for name in [m for m in sys.modules if m.startswith("userpkg")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path / "proj")])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelCodeError, match=r"needs module 'userpkg'.*--import MODULE"):
        load_model(path, trust=True)
    monkeypatch.chdir(tmp_path / "proj")  # run from the project folder: its packages are importable
    loaded = load_model(path, trust=True, imports=["userpkg.nets"])
    assert type(loaded.model).__module__ == "userpkg.nets"
    assert str(tmp_path / "proj") not in sys.path
