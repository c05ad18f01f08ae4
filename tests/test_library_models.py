"""Real torch-rechub and DeepCTR-Torch models, trained a few steps and saved the ways their users
save them, load and inspect end to end with the original predictions and the discovered gates."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import mmoe_inspect as mi
from mmoe_inspect.binding import task_predictions
from mmoe_inspect.checkpoint import CheckpointError
from mmoe_inspect.data.sources import TableSource
from mmoe_inspect.loading import UntrustedCheckpointError, load_model
from mmoe_inspect.loading._code import user_code
from mmoe_inspect.recording.recorder import GateRecorder
from mmoe_inspect.stats.outputs import TaskOutputStats

N_ROWS = 600
TASKS = ["click", "buy"]

# The user's own code: factories that build each model (imported with --model-code / --builder).
FACTORIES = '''
"""Model factories, as a user would keep them next to the training script."""
from deepctr_torch.inputs import DenseFeat, SparseFeat
from deepctr_torch.models import multitask as deepctr
from torch_rechub.basic.features import DenseFeature, SparseFeature
from torch_rechub.models import multi_task as rechub


def rechub_features():
    return [SparseFeature("city", 12, embed_dim=4), SparseFeature("item", 9, embed_dim=4), DenseFeature("age")]


def deepctr_features():
    return [SparseFeat("city", 12, embedding_dim=4), SparseFeat("item", 9, embedding_dim=4), DenseFeat("age", 1)]


def rechub_mmoe(config=None):
    n = (config or {}).get("n_expert", 3)
    return rechub.MMOE(rechub_features(), ["classification"] * 2, n, {"dims": [8]}, [{"dims": [4]}] * 2)


def rechub_ple(config=None):
    return rechub.PLE(rechub_features(), ["classification"] * 2, 2, 2, 1, {"dims": [8]}, [{"dims": [4]}] * 2)


def rechub_shared_bottom(config=None):
    return rechub.SharedBottom(rechub_features(), ["classification"] * 2, {"dims": [8]}, [{"dims": [4]}] * 2)


def deepctr_mmoe(config=None):
    n = (config or {}).get("n_expert", 3)
    return deepctr.MMOE(deepctr_features(), num_experts=n, expert_dnn_hidden_units=(8,), gate_dnn_hidden_units=(6,),
                        tower_dnn_hidden_units=(4,), task_names=("click", "buy"))


def deepctr_ple(config=None):
    return deepctr.PLE(deepctr_features(), shared_expert_num=1, specific_expert_num=2, num_levels=2,
                       expert_dnn_hidden_units=(8,), gate_dnn_hidden_units=(6,), tower_dnn_hidden_units=(8,),
                       task_names=("click", "buy"))


def deepctr_shared_bottom(config=None):
    return deepctr.SharedBottom(deepctr_features(), bottom_dnn_hidden_units=(8,), tower_dnn_hidden_units=(4,),
                                task_names=("click", "buy"))


def rechub_esmm():
    user, item = [SparseFeature("city", 12, embed_dim=4)], [SparseFeature("item", 9, embed_dim=4)]
    return rechub.ESMM(user, item, {"dims": [8]}, {"dims": [8]})


def rechub_aitm():
    return rechub.AITM(rechub_features(), 2, {"dims": [8]}, [{"dims": [4]}] * 2)


def deepctr_esmm():
    return deepctr.ESMM(deepctr_features(), tower_dnn_hidden_units=(8,))
'''

# (library, architecture) -> gates discovery must find
GATES = {
    ("rechub", "mmoe"): 2,
    ("rechub", "ple"): 5,  # 2 levels: two task gates each, plus the level-0 shared gate
    ("rechub", "shared_bottom"): 0,
    ("deepctr", "mmoe"): 2,
    ("deepctr", "ple"): 6,  # DeepCTR-Torch also builds (and runs) a last-level shared gate
    ("deepctr", "shared_bottom"): 0,
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("libs")


@pytest.fixture(scope="module")
def factories(workdir: Path):
    path = workdir / "lib_factories.py"
    path.write_text(FACTORIES)
    with user_code(model_code=path) as module:
        yield path, module


@pytest.fixture(scope="module")
def frame(workdir: Path) -> tuple[pd.DataFrame, Path]:
    """Rows with the original column names (ids, a dense value, two 0/1 labels), also as parquet."""
    rng = np.random.default_rng(0)
    city = rng.integers(0, 12, N_ROWS)
    item = rng.integers(0, 9, N_ROWS)
    age = rng.normal(size=N_ROWS).astype("float32")
    click = (age + 0.4 * (city % 3) + rng.normal(scale=0.5, size=N_ROWS) > 0.5).astype("int64")
    buy = (click * (item < 4)).astype("int64")
    df = pd.DataFrame({"city": city, "item": item, "age": age, "click": click, "buy": buy})
    path = workdir / "eval.parquet"
    df.to_parquet(path, row_group_size=250)
    return df, path


def rechub_inputs(df: pd.DataFrame) -> dict[str, torch.Tensor]:
    """How a torch-rechub user feeds the model: int64 ids and float32 dense values by feature name."""
    return {
        "city": torch.tensor(df["city"].to_numpy(), dtype=torch.int64),
        "item": torch.tensor(df["item"].to_numpy(), dtype=torch.int64),
        "age": torch.tensor(df["age"].to_numpy(), dtype=torch.float32),
    }


def deepctr_inputs(model, df: pd.DataFrame) -> torch.Tensor:
    """DeepCTR-Torch's layout: one float tensor with columns in `feature_index` order."""
    return torch.from_numpy(np.stack([df[n].to_numpy(np.float32) for n in model.feature_index], axis=1))


def train(model: torch.nn.Module, x, y: torch.Tensor, steps: int = 12) -> None:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        loss = F.binary_cross_entropy(model(x)[:, : y.shape[1]].clamp(1e-6, 1 - 1e-6), y)
        loss.backward()
        opt.step()
    model.eval()


def reference_predictions(lib: str, model: torch.nn.Module, df: pd.DataFrame) -> torch.Tensor:
    """The in-memory model's predictions `[rows, T]` the library's own way."""
    if lib == "deepctr":
        x = {n: df[n].to_numpy() for n in model.feature_index}
        return torch.from_numpy(model.predict(x, batch_size=256)).float()
    with torch.inference_mode():
        return model(rechub_inputs(df)).float()


def trained(lib: str, arch: str, factories, df: pd.DataFrame) -> torch.nn.Module:
    _, module = factories
    torch.manual_seed(0)
    model = getattr(module, f"{lib}_{arch}")()
    x = rechub_inputs(df) if lib == "rechub" else deepctr_inputs(model, df)
    y = torch.tensor(df[TASKS].to_numpy(), dtype=torch.float32)
    train(model, x, y)
    return model


def save(way: str, lib: str, arch: str, model: torch.nn.Module, opt_state: dict, workdir: Path) -> dict:
    """Save `model` the way users do; return the `load_model` keyword arguments it needs."""
    path = workdir / f"{lib}-{arch}-{way}.pt"
    builder = f"lib_factories:{lib}_{arch}"
    if way == "whole":
        torch.save(model, path)
        return {"path": path, "trust": True}
    if way == "state_dict":
        torch.save(model.state_dict(), path)
        return {"path": path, "builder": builder}
    torch.save(
        {
            "model_state_dict": model.state_dict(),
            "optimizer": opt_state,
            "epoch": 3,
            "config": {"n_expert": 3},
        },
        path,
    )
    return {"path": path, "builder": builder}


@pytest.mark.slow
@pytest.mark.parametrize("way", ["whole", "state_dict", "training_dict"])
@pytest.mark.parametrize("lib", ["rechub", "deepctr"])
@pytest.mark.parametrize("arch", ["mmoe", "ple", "shared_bottom"])
def test_saved_library_model_inspects_like_the_original(arch, lib, way, factories, frame, workdir) -> None:
    df, parquet = frame
    original = trained(lib, arch, factories, df)
    opt_state = torch.optim.Adam(original.parameters()).state_dict()
    kwargs = save(way, lib, arch, original, opt_state, workdir)
    path = kwargs.pop("path")

    loaded = load_model(path, model_code=factories[0], **kwargs)
    assert loaded.adapter.name == {"rechub": "torch-rechub", "deepctr": "deepctr-torch"}[lib]
    assert loaded.features == (("city", "item", "age") if lib == "rechub" else tuple(original.feature_index))
    assert ("pickled" in loaded.form) == (way == "whole")
    assert ("model_state_dict" in loaded.form) == (way == "training_dict")
    assert not loaded.model.training

    # the public inspect() with the adapter's input function, on the parquet file
    fn = loaded.input_fn()
    with loaded.adapter.session(loaded.model):
        result = mi.inspect(
            loaded.model,
            parquet,
            input_fn=fn,
            columns=fn.names,
            tasks=loaded.task_names(TASKS),
            task_kinds=loaded.task_kinds,
            config=mi.InspectConfig(batch_size=256),
        )
    topo = result.topology
    assert topo.task_names == tuple(TASKS)
    assert topo.source == "discovered"
    assert len(topo.gates) == GATES[(lib, arch)]
    if topo.gates:  # every task has its own final gate, found by discovery
        assert sorted(topo.final_task_gates()) == sorted(TASKS)
    assert result.n_rows == N_ROWS

    # per-row predictions of the loaded model on the parquet rows == the original's on the same rows
    expected = reference_predictions(lib, original, df)
    chunks = list(TableSource.of(parquet).iter_frames(256, fn.names))
    with torch.inference_mode():
        got = torch.cat([task_predictions(loaded.model(fn(c)), topo.tasks) for c in chunks])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)

    # the recorded task outputs summarize exactly those predictions
    labels = torch.tensor(df[TASKS].to_numpy(), dtype=torch.float64)
    ref = TaskOutputStats(["binary", "binary"])
    ref.update(expected.double(), labels)
    ref_summary = ref.compute()
    table = result.table("tasks").set_index("task")
    for i, task in enumerate(TASKS):
        assert table.loc[task, "n_labelled"] == N_ROWS
        assert table.loc[task, "mean_prediction"] == pytest.approx(
            float(expected[:, i].double().mean()), abs=1e-6
        )
        assert table.loc[task, "auc"] == pytest.approx(float(ref_summary.auc[i]), abs=1e-9, nan_ok=True)

    # the gates recorded on the loaded model are the original model's gates on the same rows
    if topo.gates:
        x_loaded = fn(df)
        x_orig = rechub_inputs(df) if lib == "rechub" else deepctr_inputs(original, df)
        captures = []
        for model, x in ((loaded.model, x_loaded), (original, x_orig)):
            with GateRecorder(model, topo) as rec, torch.inference_mode():
                model(x)
                captures.append(rec.take().gates)
        for name in captures[0]:
            torch.testing.assert_close(captures[0][name], captures[1][name], rtol=0, atol=1e-6)
        assert not result.verdict.startswith("No gates found")
    else:
        assert result.verdict.startswith("No gates found")


def test_whole_module_is_refused_without_trust_and_names_its_classes(factories, frame, workdir) -> None:
    df, _ = frame
    model = trained("rechub", "mmoe", factories, df)
    path = workdir / "refused.pt"
    torch.save(model, path)
    with pytest.raises(UntrustedCheckpointError) as err:
        load_model(path)
    text = str(err.value)
    assert "torch_rechub.models.multi_task.mmoe.MMOE" in text
    assert "torch_rechub.basic.layers.MLP" in text
    assert "--trust-checkpoint" in text and "\n" not in text and "\x1b" not in text
    assert err.value.globals[0] == "torch_rechub.models.multi_task.mmoe.MMOE"


@pytest.mark.parametrize(
    ("factory", "tasks", "n_gates"),
    [
        pytest.param("rechub_esmm", ("cvr", "ctr", "ctcvr"), 0, id="rechub-esmm"),
        pytest.param("rechub_aitm", ("task_0", "task_1"), None, id="rechub-aitm"),
        pytest.param("deepctr_esmm", ("ctr", "ctcvr"), 0, id="deepctr-esmm"),
    ],
)
def test_other_library_models_load_and_inspect(factory, tasks, n_gates, factories, frame, workdir) -> None:
    """ESMM (both libraries) and AITM: whole-module pickles; their task names come from the adapter."""
    df, parquet = frame
    torch.manual_seed(0)
    model = getattr(factories[1], factory)().eval()
    path = workdir / f"{factory}.pt"
    torch.save(model, path)
    loaded = load_model(path, trust=True)
    result = loaded.inspect(parquet, config=mi.InspectConfig(batch_size=256))
    assert result.topology.task_names == tasks
    assert result.n_rows == N_ROWS
    if n_gates is not None:
        assert len(result.topology.gates) == n_gates
    fn = loaded.input_fn()
    lib = factory.split("_")[0]
    with torch.inference_mode():
        got = loaded.model(fn(df))
    torch.testing.assert_close(got.float(), reference_predictions(lib, model, df), rtol=0, atol=1e-6)


def test_script_saved_class_loads_with_model_code(tmp_path, frame, monkeypatch) -> None:
    """A class defined in a training script's `__main__`, pickled whole, loads with --model-code FILE.py."""
    df, parquet = frame
    script = tmp_path / "train_script.py"
    script.write_text(
        "import torch\nfrom torch import nn\n\n\n"
        "class ScriptMMoE(nn.Module):\n"
        "    def __init__(self, d=3, e=3):\n"
        "        super().__init__()\n"
        "        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(d, 4), nn.ReLU()) for _ in range(e))\n"
        "        self.gates = nn.ModuleList(nn.Sequential(nn.Linear(d, e), nn.Softmax(dim=1)) for _ in range(2))\n"
        "        self.towers = nn.ModuleList(nn.Linear(4, 1) for _ in range(2))\n\n"
        "    def forward(self, x):\n"
        "        ex = torch.stack([e(x) for e in self.experts], dim=1)\n"
        "        outs = [torch.sigmoid(t((g(x).unsqueeze(-1) * ex).sum(1))) for g, t in zip(self.gates, self.towers)]\n"
        "        return torch.cat(outs, dim=1)\n\n\n"
        "if __name__ == '__main__':  # training would run here\n"
        "    open(__file__ + '.ran', 'w').close()\n"
    )
    namespace: dict = {"__name__": "__main__"}
    classes_only = script.read_text().split("if __name__")[0]
    exec(compile(classes_only, str(script), "exec"), namespace)  # what `python train_script.py` defines
    cls = namespace["ScriptMMoE"]
    monkeypatch.setattr(sys.modules["__main__"], "ScriptMMoE", cls, raising=False)
    torch.manual_seed(0)
    model = cls().eval()
    path = tmp_path / "script_model.pt"
    torch.save(model, path)
    monkeypatch.delattr(sys.modules["__main__"], "ScriptMMoE")

    with pytest.raises(UntrustedCheckpointError, match=r"__main__\.ScriptMMoE"):
        load_model(path)
    with pytest.raises(CheckpointError, match=r"needs __main__\.ScriptMMoE.*--model-code"):
        load_model(path, trust=True)
    loaded = load_model(path, trust=True, model_code=script)
    assert not hasattr(sys.modules["__main__"], "ScriptMMoE")  # the alias lived only while loading
    assert not Path(f"{script}.ran").exists()  # the script's main block did not run
    assert loaded.adapter.name == "generic"
    result = loaded.inspect(parquet, features="city,item,age", tasks="click,buy")
    assert [g.module for g in result.topology.gates] == ["gates.0", "gates.1"]
    x = torch.from_numpy(df[["city", "item", "age"]].to_numpy(np.float32))
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(x), model(x), rtol=0, atol=0)


def test_cli_topology_then_report_with_the_written_spec(factories, frame, workdir, tmp_path) -> None:
    """`topology` discovers a pickled DeepCTR-Torch PLE on --data and writes a spec; `report` uses it."""
    import json
    import re

    from typer.testing import CliRunner

    from mmoe_inspect.cli.main import app

    df, parquet = frame
    model = trained("deepctr", "ple", factories, df)
    path = workdir / "cli-ple.pt"
    torch.save(model, path)
    spec = tmp_path / "ple.toml"
    runner = CliRunner()

    def run(*args) -> tuple[int, str]:
        result = runner.invoke(app, [str(a) for a in args])
        return result.exit_code, re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", result.output)

    code, text = run("topology", path, "--trust-checkpoint", "--data", parquet, "--write", spec)
    assert code == 0, text
    assert (
        "adapter deepctr-torch" in text
        and "gate L1.click: module specific_gate_dnn_final_layer.1.0 (logits)" in text
    )
    out = tmp_path / "report"
    code, text = run(
        "report",
        path,
        "--trust-checkpoint",
        "--data",
        parquet,
        "--spec",
        spec,
        "--out",
        out,
        "--sample",
        "0.5",
    )
    assert code == 0, text
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["topology"]["gates"]) == 6
    assert 250 <= metrics["n_rows"] <= 350
