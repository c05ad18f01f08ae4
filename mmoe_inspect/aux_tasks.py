"""Per-row auxiliary outputs that are not tasks, told apart once the data's columns are known.

MoE code often returns, next to the predictions, a term computed per row for training: a load-balancing
or regularisation term `[batch]` (`{"click": p, "buy": q, "aux_loss": lb}`). It has the batch axis, so
the output walk (`data.outputs.find_predictions`) takes it for a prediction; with no label it became a
task that `check` reported as unlabelled (a warning, which fails the default `--fail-on`).

What separates such a term from a task head, from strongest to weakest: its name (a dict key,
namedtuple field or `tasks=` name whose words say aux / loss / reg / penalty / balance / entropy), and
that no label column matches it. Both are needed: an output named like a term is dropped from the
tasks only when the data holds no label column for it (nor one spelt nearly like it) and no gate or
expert was traced to it alone. An unnamed output (`(p, q, lb)`: task_2) carries no such evidence and
stays a task; its `task_unlabelled` finding says it was not judged. Each decision is a topology note.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace

from mmoe_inspect.topology.spec import Topology

__all__ = ["AUX_WORDS", "drop_auxiliary", "looks_auxiliary"]

AUX_WORDS = frozenset(
    {
        "aux",
        "auxiliary",
        "loss",
        "losses",
        "reg",
        "regularizer",
        "regulariser",
        "regularization",
        "regularisation",
        "penalty",
        "balance",
        "balancing",
        "entropy",
    }
)
"""Words of an output's name that say it is a training term, not a prediction."""

_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")


def looks_auxiliary(name: str) -> bool:
    """Whether a word of `name` (split at `_`, `.`, `-`, digits and camelCase) is in `AUX_WORDS`:
    `aux`, `aux_loss`, `lbLoss`, `l2_reg`, `moe.balance`; not `regression`, `region`, `click`."""
    return any(w.lower() in AUX_WORDS for w in _WORD.findall(name))


def drop_auxiliary(topo: Topology, present: set[str], hints: Mapping[str, str]) -> Topology:
    """`topo` without the tasks whose name looks auxiliary (`looks_auxiliary`), whose label column is not in
    `present` and that have no label hint (`hints`, a column spelt nearly like it), unless a gate or an
    expert was traced to that task (then kept, said in a note). Only discovered topologies: declared tasks stay."""
    if topo.source != "discovered":  # a spec's or the model's own tasks are declared: never second-guessed
        return topo
    from mmoe_inspect.topology._tasks import invented_names, unsigmoided

    unlabelled = [t for t in topo.tasks if t.label_column not in present and t.name not in hints]
    bare = set(unsigmoided(topo.notes)) & invented_names(topo.notes)
    doubtful = [t.name for t in unlabelled if t.name in bare]
    named = [t for t in topo.tasks if looks_auxiliary(t.name) and t.label_column not in present]
    if not named and not doubtful:
        return topo
    served = {g.task for g in topo.gates} | {e.owner for e in topo.experts}
    dropped = [t for t in named if t.name not in served and t.name not in hints]
    kept = [t for t in named if t not in dropped]
    notes = list(topo.notes)
    if dropped:
        names = ", ".join(t.name for t in dropped)
        notes.append(
            f"output(s) {names}: named like an auxiliary per-row term (a loss, regulariser or balance term) and "
            "no label column matches: not a task (to judge one, pass its label column: --labels task=column)"
        )
    for t in kept:
        why = f"the data has {hints[t.name]!r}" if t.name in hints else "a gate or an expert serves it alone"
        notes.append(
            f"output {t.name}: named like an auxiliary per-row term but {why}: kept as a task (unlabelled)"
        )
    if doubtful:  # (p, q, term): no name to go by, only the missing sigmoid and label
        notes.append(
            f"output(s) {', '.join(doubtful)}: no name, no label and no final sigmoid unlike the other outputs: "
            "kept as task(s); if one is an auxiliary per-row term (a loss or balance term), leave it out with a "
            "spec (mmoe-inspect topology MODEL --write spec.toml, delete the task, then --spec spec.toml)"
        )
    if not dropped:
        return replace(topo, notes=tuple(notes))
    gone = {t.name for t in dropped}
    return replace(topo, tasks=tuple(t for t in topo.tasks if t.name not in gone), notes=tuple(notes))
