"""The `Topology` spec: queries, validation, and the TOML spec file round trip and its errors."""

from __future__ import annotations

from dataclasses import replace

import pytest

from mmoe_inspect.topology.spec import ExpertSpec, GateSpec, TaskSpec, Topology, TopologyError


def ple_topology() -> Topology:
    """Two-level PLE with every optional field in use (index, logits, dim, call, notes)."""
    tasks = (
        TaskSpec("ctr", "binary", output=0, label="click"),
        TaskSpec("watch", "regression", output=1, probability=False),
    )
    experts = (
        ExpertSpec("L0.ctr.0", "levels.0.specific.0.0", owner="ctr"),
        ExpertSpec("L0.watch.0", "levels.0.specific.1.0", owner="watch"),
        ExpertSpec("L0.shared.0", "levels.0.bank", index=0),
        ExpertSpec("L0.shared.1", "levels.0.bank", index=1),
        ExpertSpec("L1.ctr.0", "levels.1.specific.0.0", owner="ctr", level=1),
        ExpertSpec("L1.watch.0", None, owner="watch", level=1),
        ExpertSpec("L1.shared.0", "levels.1.shared.0", level=1),
    )
    gates = (
        GateSpec("L0.ctr", "levels.0.gates.0", ("L0.ctr.0", "L0.shared.0", "L0.shared.1"), task="ctr"),
        GateSpec(
            "L0.watch",
            "levels.0.gate_logits",
            ("L0.watch.0", "L0.shared.0", "L0.shared.1"),
            task="watch",
            output="logits",
            call=1,
        ),
        GateSpec(
            "L0.shared",
            "levels.0.gate_shared",
            ("L0.ctr.0", "L0.watch.0", "L0.shared.0", "L0.shared.1"),
            dim=1,
        ),
        GateSpec("L1.ctr", "levels.1.gates.0", ("L1.ctr.0", "L1.shared.0"), task="ctr", level=1),
        GateSpec("L1.watch", "levels.1.gates.1", ("L1.watch.0", "L1.shared.0"), task="watch", level=1),
    )
    return Topology(
        tasks,
        experts,
        gates,
        source="discovered",
        confidence=0.85,
        notes=("module levels.0.gate_logits runs 2 times per forward; this gate is its call 1",),
        architecture="ple",
    )


# -------------------------------------------------------------------------------- queries
def test_queries():
    topo = ple_topology()
    assert topo.task_names == ("ctr", "watch")
    assert topo.has_gates and topo.levels == (0, 1)
    assert [g.name for g in topo.task_gates("ctr")] == ["L0.ctr", "L1.ctr"]
    assert {t: g.name for t, g in topo.final_task_gates().items()} == {"ctr": "L1.ctr", "watch": "L1.watch"}
    assert topo.gate("L0.shared").n_experts == 4 and topo.gate("L0.shared").task is None
    assert topo.task("ctr").label_column == "click" and topo.task("watch").label_column == "watch"
    assert topo.expert("L0.shared.1").index == 1
    with pytest.raises(KeyError):
        topo.gate("L2.ctr")
    text = topo.describe()
    assert "gate L0.watch: module levels.0.gate_logits (logits), level 0, serves watch" in text
    assert "note: module levels.0.gate_logits runs 2 times" in text
    shared_bottom = Topology((TaskSpec("a"), TaskSpec("b")))
    assert not shared_bottom.has_gates and shared_bottom.final_task_gates() == {}
    assert "gates: none" in shared_bottom.describe()


# ------------------------------------------------------------------------------ round trip
def test_toml_round_trip_keeps_everything_but_the_source():
    topo = ple_topology()
    text = topo.to_toml()
    assert text.startswith("# mmoe-inspect topology spec")
    again = Topology.from_toml(text)
    assert again == replace(topo, source="spec")
    # None fields are omitted in the file and come back as None
    assert again.expert("L1.watch.0").module is None and again.gate("L0.ctr").call is None


def test_save_and_load(tmp_path):
    topo = ple_topology()
    path = tmp_path / "topology.toml"
    topo.save(path)
    assert Topology.load(path) == replace(topo, source="spec")


def test_dict_round_trip():
    topo = ple_topology()
    assert Topology.from_dict(topo.to_dict()) == replace(topo, source="discovered")


def test_a_hand_written_spec_reads():
    text = """
    version = 1
    [[tasks]]
    name = "ctr"
    output = "ctr"
    [[tasks]]
    name = "cvr"
    output = "cvr"
    [[experts]]
    name = "e0"
    module = "experts.0"
    [[experts]]
    name = "e1"
    module = "experts.1"
    [[gates]]
    name = "ctr"
    module = "gates.0"
    experts = ["e0", "e1"]
    task = "ctr"
    """
    topo = Topology.from_toml(text)
    assert topo.source == "spec" and topo.confidence == 1.0 and topo.architecture is None
    assert topo.gate("ctr").experts == ("e0", "e1") and topo.gate("ctr").output == "probs"
    assert topo.task("cvr").kind == "binary"


# --------------------------------------------------------------------------------- errors
def test_bad_toml_is_reported_plainly():
    with pytest.raises(TopologyError, match="spec file is not valid TOML"):
        Topology.from_toml("[[gates]\nname = ")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        pytest.param(
            lambda d: d["gates"][0].update(experts=["L0.ctr.0", "L0.nobody"]),
            r"gate 'L0.ctr' names unknown experts \['L0.nobody'\]",
            id="unknown-expert",
        ),
        pytest.param(
            lambda d: d["gates"][0].update(task="likes"),
            r"gate 'L0.ctr' serves unknown task 'likes'",
            id="task",
        ),
        pytest.param(
            lambda d: d["gates"][0].update(experts=[]), r"gate 'L0.ctr' mixes no experts", id="no-experts"
        ),
        pytest.param(
            lambda d: d["gates"][0].update(output="softmax"),
            r"gate 'L0.ctr': output must be one of 'probs', 'logits', 'weights', not 'softmax'",
            id="output",
        ),
        pytest.param(
            lambda d: d["experts"][0].update(owner="likes"),
            r"expert 'L0.ctr.0' is owned by unknown task 'likes'",
            id="owner",
        ),
        pytest.param(
            lambda d: d["tasks"][0].update(kind="multiclass"),
            r"task 'ctr': kind must be 'binary' or 'regression', not 'multiclass'",
            id="kind",
        ),
        pytest.param(
            lambda d: d["experts"].append(dict(d["experts"][0])),
            r"duplicate expert name 'L0.ctr.0'",
            id="dup",
        ),
        pytest.param(lambda d: d.update(tasks=[]), r"a topology needs at least one task", id="no-tasks"),
        pytest.param(
            lambda d: d["gates"][0].update(modul="typo"),
            r"malformed topology spec: .*modul",
            id="unknown-key",
        ),
        pytest.param(
            lambda d: d["tasks"][0].pop("name"), r"malformed topology spec: .*name", id="missing-key"
        ),
        pytest.param(lambda d: d.update(version=2), r"spec version 2 is not supported", id="version"),
        pytest.param(
            lambda d: d.update(gate=d.pop("gates")),
            r"unknown top-level key\(s\) 'gate' \(did you mean 'gates'\?\)",
            id="misspelt-table",
        ),
        pytest.param(
            lambda d: d.update(zzz_extra=1),
            r"unknown top-level key\(s\) 'zzz_extra'; a spec holds",
            id="extra-key",
        ),
    ],
)
def test_malformed_specs_fail_with_clear_messages(edit, message):
    import tomli_w

    data = ple_topology().to_dict()
    edit(data)
    with pytest.raises(TopologyError, match=message):
        Topology.from_toml(tomli_w.dumps(data))


def test_topology_error_is_a_value_error():
    assert issubclass(TopologyError, ValueError)
    with pytest.raises(ValueError, match="duplicate task name 'a'"):
        Topology((TaskSpec("a"), TaskSpec("a")))


def test_tasks_reading_nested_outputs_are_told_apart() -> None:
    def topo(a: tuple, b: tuple) -> Topology:
        return Topology(
            (TaskSpec("click", output=a), TaskSpec("buy", output=b)),
            (ExpertSpec("e0", "experts.0"),),
            (),
        )

    assert topo(("preds", "click"), ("preds", "buy")).task("buy").output == ("preds", "buy")
    with pytest.raises(TopologyError, match=r"both read the model output \('preds', 'click'\)"):
        topo(("preds", "click"), ("preds", "click"))
