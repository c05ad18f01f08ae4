"""Per-row auxiliary outputs that are not tasks, told apart once the data's columns are known.

MoE code often returns, next to the predictions, a term computed per row for training: a load-balancing
or regularisation term `[batch]` (`{"click": p, "buy": q, "aux_loss": lb}`). It has the batch axis, so
the output walk (`data.outputs.find_predictions`) takes it for a prediction; with no label it became a
task that `check` reported as unlabelled (a warning, which fails the default `--fail-on`).

What separates such a term from a task head: its name (a dict key, namedtuple field or `tasks=` name whose
words say aux / loss / reg / penalty / balance / entropy), that no label column matches it, and where it
comes from: no expert mixture moves it while the model's other outputs are mixtures (discovery's
`UNMIXED_NOTE`) and its traced inputs hold gate weights and no expert output (`GATE_TERM_NOTE`: a detach
does not hide an expert). All three are needed to drop it:
a name alone is no evidence (a regression task called `balance` on a Shared-Bottom is a task whose label
column is missing), and neither is a missing label. Such an output, and one with a label hint (a column spelt
nearly like it) or a gate or expert of its own, stays a task: its `task_unlabelled` finding says it was not
judged, and a note says it looks like a training term and how to leave it out (a spec). An unnamed output
(`(p, q, lb)`: task_2) carries no name evidence and stays a task too. Each decision is a topology note.
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


LEAVE_OUT = (
    "if it is an auxiliary per-row term (a loss or balance term), leave it out with a spec (mmoe-inspect topology "
    "MODEL --write spec.toml, delete the task, then --spec spec.toml); to judge it, pass its label column "
    "(--labels task=column)"
)


def drop_auxiliary(topo: Topology, present: set[str], hints: Mapping[str, str]) -> Topology:
    """`topo` without the tasks whose name looks auxiliary (`looks_auxiliary`), whose label column is not in
    `present`, that have no label hint (`hints`, a column spelt nearly like it), that no expert mixture moves
    while other outputs are mixed (`unmixed`) and that no gate or expert was traced to. A task named so that
    lacks the rest of that evidence is kept (unlabelled), with a note. Only discovered topologies: declared
    tasks stay."""
    if topo.source != "discovered":  # a spec's or the model's own tasks are declared: never second-guessed
        return topo
    from mmoe_inspect.topology._tasks import GATE_TERM_NOTE, invented_names, unmixed, unsigmoided

    unlabelled = [t for t in topo.tasks if t.label_column not in present and t.name not in hints]
    bare = set(unsigmoided(topo.notes)) & invented_names(topo.notes)
    doubtful = [t.name for t in unlabelled if t.name in bare]
    named = [t for t in topo.tasks if looks_auxiliary(t.name) and t.label_column not in present]
    if not named and not doubtful:
        return topo
    served = {g.task for g in topo.gates} | {e.owner for e in topo.experts}
    terms = unmixed(topo.notes) & unmixed(topo.notes, GATE_TERM_NOTE)  # positive evidence: gate weights only
    dropped = [t for t in named if t.name in terms and t.name not in served and t.name not in hints]
    kept = [t for t in named if t not in dropped]
    notes = list(topo.notes)
    if dropped:
        names = ", ".join(t.name for t in dropped)
        notes.append(
            f"output(s) {names}: named like an auxiliary per-row term (a loss, regulariser or balance term), no "
            "label column matches, no expert mixture moves it and it is computed from gate weights and no expert "
            "output: not a task (to judge one, pass its label column: --labels task=column)"
        )
    for t in kept:
        if t.name in hints:
            why = f"the data has {hints[t.name]!r}"
        elif t.name in served:
            why = "a gate or an expert serves it alone"
        elif t.name in terms or t.name not in unmixed(topo.notes):
            why = "only its name says so (it is not set apart from the predictions by how it is computed)"
        else:
            why = "no expert mixture moves it, yet it is not computed from gate weights alone (it reads the experts"
            why += " another way, e.g. their mean or a detached mixture, or its inputs could not be traced)"
        notes.append(
            f"output {t.name}: named like an auxiliary per-row term but {why}: kept as a task (unlabelled); "
            + LEAVE_OUT
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
