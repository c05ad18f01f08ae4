"""`outputs._group` (the compaction behind the exact streaming AUC) against a plain Python reference:
one row per (task, value) sorted by task then value, counts summed, each group keeping the value of
its first row (so -0.0 and +0.0, equal as floats, are one group), for ties, infinities and subnormals."""

from __future__ import annotations

import pytest
import torch

from mmoe_inspect.stats.outputs import _group, compact_scores, exact_auc, merge_compacted


def reference(rows: torch.Tensor) -> torch.Tensor:
    groups: dict[tuple[float, float], list[float]] = {}
    for task, value, pos, neg in rows.tolist():
        key = (task, value + 0.0)  # -0.0 == 0.0 as a dict key too
        if key not in groups:
            groups[key] = [task, value, 0.0, 0.0]
        groups[key][2] += pos
        groups[key][3] += neg
    ordered = sorted(groups.values(), key=lambda r: (r[0], r[1]))
    return torch.tensor(ordered, dtype=torch.float64).reshape(-1, 4)


def rows_of(n: int, tasks: int, kind: str, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    p = torch.rand(n, tasks, generator=gen, dtype=torch.float64)
    if kind == "ties":  # few distinct values, signed zeros
        p = (p * 20).floor() / 20 - 0.25
        p[::3] = -0.0
        p[::5] = 0.0
    elif kind == "extremes":
        p = torch.randn(n, tasks, generator=gen, dtype=torch.float64) * 1e300
        p[::4] = float("inf")
        p[::6] = -float("inf")
        p[::7] = 5e-324
        p[::9] = -5e-324
    y = (torch.rand(n, tasks, generator=gen) < 0.3).double()
    w = (torch.rand(n, tasks, generator=gen) < 0.8).double()
    task = torch.arange(tasks, dtype=torch.float64).expand_as(p)
    rows = torch.stack([task, p, w * y, w * (1 - y)], -1).reshape(-1, 4)
    return rows[torch.randperm(rows.shape[0], generator=gen)]


@pytest.mark.parametrize("kind", ["fresh", "ties", "extremes"])
@pytest.mark.parametrize("tasks", [1, 3])
def test_group_equals_the_reference(kind: str, tasks: int) -> None:
    rows = rows_of(400, tasks, kind, seed=tasks)
    got, want = _group(rows), reference(rows)
    assert got.shape == want.shape
    assert torch.equal(got, want)
    assert torch.equal(torch.signbit(got[:, 1]), torch.signbit(want[:, 1]))  # each group's first value
    assert _group(rows[:0]).shape == (0, 4)


def test_compaction_in_pieces_gives_the_auc_of_all_rows() -> None:
    """Compacting part of the rows, then the compacted rows with the rest, gives the same rows (hence
    AUC) as compacting everything at once; a task absent from the rows is NaN."""
    rows = rows_of(3000, 3, "ties", seed=7)
    rows = rows[rows[:, 0] != 1]
    once, bits = compact_scores(rows, 53, 1 << 20)
    kept, _ = compact_scores(rows[:1000], 53, 1 << 20)
    twice, _ = compact_scores(torch.cat([kept, rows[1000:]]), 53, 1 << 20)
    assert bits == 53 and torch.equal(once, twice)
    auc = exact_auc(once, 3)
    assert auc[1].isnan() and not auc[0].isnan() and not auc[2].isnan()


@pytest.mark.parametrize("kind", ["fresh", "ties", "extremes"])
@pytest.mark.parametrize("tasks", [1, 3])
def test_merging_compacted_rows_equals_grouping_them_together(kind: str, tasks: int) -> None:
    """`merge_compacted` of two compacted row sets gives `_group` of both, bit for bit (each group keeps
    the first value: -0.0 of the kept rows stays -0.0), also when a task is on one side only."""
    rows = rows_of(900, tasks, kind, seed=11 + tasks)
    rows = rows[(rows[:, 2] + rows[:, 3]) > 0]
    for cut in (0, 1, 300, rows.shape[0]):
        kept, new = _group(rows[:cut]), _group(rows[cut:])
        if tasks == 3:  # task 1 only among the kept rows, task 2 only among the new ones
            kept, new = kept[kept[:, 0] != 2], new[new[:, 0] != 1]
            want = _group(torch.cat([kept, new]))
        else:
            want = _group(rows)
        got = merge_compacted(kept, new)
        assert torch.equal(got, want)
        assert torch.equal(torch.signbit(got[:, 1]), torch.signbit(want[:, 1]))


@pytest.mark.parametrize("kind", ["fresh", "ties"])
def test_streamed_compactions_keep_the_rows_of_one_compaction(kind: str) -> None:
    """`TaskOutputStats` compacting as rows stream in (each compaction merges the new rows into the
    kept ones) holds the same rows as one compaction of everything, and the same AUC as scikit-learn;
    unlabelled rows (NaN labels) weigh nothing."""
    from sklearn.metrics import roc_auc_score

    from mmoe_inspect.stats.outputs import TaskOutputStats, compact_state

    gen = torch.Generator().manual_seed(3)
    n, b = 300_000, 4096
    p = torch.rand(n, 2, generator=gen, dtype=torch.float64)
    if kind == "ties":
        p = (p * 5000).floor() / 5000
    y = (torch.rand(n, 2, generator=gen) < 0.1).double()
    y[::13, 1] = float("nan")
    stats = TaskOutputStats(["binary", "binary"])
    compactions = 0
    for lo in range(0, n, b):
        before = len(stats.score_counts)
        stats.update(p[lo : lo + b], y[lo : lo + b])
        compactions += len(stats.score_counts) < before
    assert compactions >= 3  # the merge path ran (each later compaction merges into a compacted head)
    rows, bits = compact_state(list(stats.score_counts), 53, 1 << 20)
    ok = ~y.isnan()
    task = torch.arange(2, dtype=torch.float64).expand_as(p)
    all_rows = torch.stack([task[ok], p[ok], (y[ok] > 0.5).double(), (y[ok] <= 0.5).double()], -1)
    want, _ = compact_scores(all_rows, 53, 1 << 20)
    assert bits == 53 and torch.equal(rows, want)
    auc = stats.compute().auc
    for t in range(2):
        m = ok[:, t]
        assert abs(float(auc[t]) - roc_auc_score(y[m, t].numpy(), p[m, t].numpy())) < 1e-12


def test_a_cap_below_one_value_is_refused() -> None:
    """`max_auc_values` < 1 would truncate the values forever (the compaction never fits): refused at once."""
    from mmoe_inspect.stats.outputs import TaskOutputStats

    with pytest.raises(ValueError, match="max_auc_values must be at least 1"):
        TaskOutputStats(["binary"], max_auc_values=0)


def test_one_sort_key_orders_task_then_value_on_probabilities() -> None:
    """`_task_value_key` (the single sort of `_group`) orders rows as (task, value) exactly, at the edges
    of its domain (+-0.0, 1.0, the largest value below 2, tasks 0 and 3), and declines outside it
    (a value of 2, a negative value, a fifth task), where `_group` sorts twice; both give the reference."""
    from mmoe_inspect.stats.outputs import _order_key, _task_value_key

    below_two = torch.nextafter(
        torch.tensor(2.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
    )
    values = torch.tensor([0.0, -0.0, 5e-324, 0.5, 1.0, float(below_two), 1e-300, 0.25], dtype=torch.float64)
    task = torch.arange(4).repeat_interleave(values.shape[0])
    value = values.repeat(4)
    joint = _task_value_key(task, _order_key(value))
    assert joint is not None
    order = torch.sort(joint, stable=True).indices
    want = sorted(range(value.shape[0]), key=lambda i: (int(task[i]), float(value[i]), i))
    assert order.tolist() == want
    for t, v in ((task, torch.where(value == 1.0, 2.0, value)), (task, value - 0.5), (task + 1, value)):
        assert _task_value_key(t, _order_key(v)) is None
    gen = torch.Generator().manual_seed(5)
    for tasks, shift in ((4, 0.0), (5, 0.0), (4, -0.5)):  # one sort; two (fifth task; negative values)
        p = (torch.rand(600, tasks, generator=gen, dtype=torch.float64) * 40).floor() / 20 + shift
        p[::7] = -0.0
        y = (torch.rand(600, tasks, generator=gen) < 0.3).double()
        t = torch.arange(tasks, dtype=torch.float64).expand_as(p)
        rows = torch.stack([t, p, y, 1 - y], -1).reshape(-1, 4)
        got, want = _group(rows), reference(rows)
        assert torch.equal(got, want)
        assert torch.equal(torch.signbit(got[:, 1]), torch.signbit(want[:, 1]))


def test_a_known_compacted_head_is_merged_without_a_check_and_an_unknown_one_is_checked() -> None:
    """`compact_state(head_compacted=True)` (what `TaskOutputStats` passes for the rows its last compaction
    returned) merges the new rows into the head as the checked path does; without the flag, a head that
    is not compacted (unsorted, repeated values) is regrouped with the rest, not merged as if it were."""
    from mmoe_inspect.stats.outputs import compact_state

    rows = rows_of(2000, 3, "fresh", seed=21)
    rows = rows[(rows[:, 2] + rows[:, 3]) > 0]
    want, _ = compact_scores(rows, 53, 1 << 20)
    head, _ = compact_scores(rows[:1500], 53, 1 << 20)
    for flag in (True, False):
        got, bits = compact_state([head, rows[1500:]], 53, 1 << 20, head_compacted=flag)
        assert bits == 53 and torch.equal(got, want)
    raw = torch.cat([rows[:1500], rows[:10]])  # not compacted: unsorted, ten values twice
    got, _ = compact_state([raw, rows[1500:]], 53, 1 << 20)
    assert torch.equal(got, compact_scores(torch.cat([raw, rows[1500:]]), 53, 1 << 20)[0])


def test_reset_drops_the_compacted_rows() -> None:
    """After `reset`, the rows of the last compaction are no longer held (nor taken as a compacted head)."""
    from mmoe_inspect.stats.outputs import TaskOutputStats

    stats = TaskOutputStats(["binary"])
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        stats.update(torch.rand(4096, 1, generator=gen), (torch.rand(4096, 1, generator=gen) < 0.5).double())
    assert stats._kept is not None and stats.score_counts[0] is stats._kept
    stats.reset()
    assert stats._kept is None and stats.n.sum() == 0
