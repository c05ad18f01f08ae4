"""Hand-written multi-task models that blend TWO experts by one weight per row, and look-alikes that do not.

Module names avoid gate-like words (`gate`, `expert`, ...) on purpose: discovery must find the blend by what
it does, not by a name. Each task `t` has its own weight `w_t = sigmoid(weight_t(x))` `[B, 1]`;
`collapse(model)` plants click's weight at ~1 (all on `right`) and leaves buy's varying with the input.

Used by `tests/test_two_expert_mixes.py` (in process, and as `--model-code` for the CLI).
"""

from __future__ import annotations

import torch
from torch import nn

N_FEATURES = 8
WIDTH = 6
TASKS = ("click", "buy")

TWO_WAY = (
    "lerp",
    "affine",
    "affine_swapped",
    "delta",
    "minus",
    "stacked",
    "python_sum",
    "unsqueezed",
    "widened",
)
BLENDS = (*TWO_WAY, "interleaved_pair", "interleaved_softmax", "interleaved_blocks", "interleaved_split")
"""Forms of a per-row mix: `lerp(l, r, w)`; `(1 - w) * l + w * r`; `w * r + (1 - w) * l`; `l + w * (r - l)`;
`l - w * (l - r)`; `stack([(1 - w) * l, w * r]).sum(0)`; Python's `sum(...)` over the two products;
a `[B]` weight unsqueezed in the blend, `(1 - w)[:, None] * l + w[:, None] * r`; `w` widened to the experts'
`[B, D]` by `repeat_interleave` then `(1 - w_d) * l + w_d * r`; `[1 - w, w]` and a 3-way
softmax repeat_interleaved over the concatenated experts, reshaped and summed; the pair's product summed by
column blocks (`prod[:, :D] + prod[:, D:]`) and the 3-way one's by `sum(prod.split(D, dim=1))`."""


class Blend(nn.Module):
    """Two (three for `interleaved_softmax`, `interleaved_split`) experts `left`, `right` (`mid`) blended per task as `form` says."""

    def __init__(self, form: str, weight_module: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.form = form
        self.left = nn.Sequential(nn.Linear(N_FEATURES, WIDTH), nn.ReLU())
        self.right = nn.Sequential(nn.Linear(N_FEATURES, WIDTH), nn.ReLU())
        self.mid = nn.Sequential(nn.Linear(N_FEATURES, WIDTH), nn.ReLU())
        n_w = 3 if form in ("interleaved_softmax", "interleaved_split") else 1
        # weight_module: the sigmoid inside a module (read at its output) instead of in forward
        squash = nn.Softmax(dim=1) if n_w == 3 else nn.Sigmoid()
        self.weights = nn.ModuleDict(
            {
                t: nn.Sequential(nn.Linear(N_FEATURES, n_w), squash)
                if weight_module
                else nn.Linear(N_FEATURES, n_w)
                for t in TASKS
            }
        )
        self.weight_module = weight_module
        self.heads = nn.ModuleDict({t: nn.Linear(WIDTH, 1) for t in TASKS})

    def weight(self, task: str, x: torch.Tensor) -> torch.Tensor:
        z = self.weights[task](x)
        if self.weight_module:
            return z
        return torch.softmax(z, dim=1) if z.shape[1] == 3 else torch.sigmoid(z)

    def blend(
        self, left: torch.Tensor, right: torch.Tensor, mid: torch.Tensor, w: torch.Tensor
    ) -> torch.Tensor:
        f = self.form
        if f == "lerp":
            return torch.lerp(left, right, w)
        if f == "affine":
            return (1 - w) * left + w * right
        if f == "affine_swapped":
            return w * right + (1 - w) * left
        if f == "delta":
            return left + w * (right - left)
        if f == "minus":
            return left - w * (left - right)
        if f == "stacked":
            return torch.stack([(1 - w) * left, w * right]).sum(0)
        if f == "python_sum":
            return sum(wi * xi for wi, xi in zip([1 - w, w], [left, right], strict=True))
        if f == "widened":
            wd = w.repeat_interleave(WIDTH, dim=1)  # [B, D], the same weight in every column
            return (1 - wd) * left + wd * right
        if f == "unsqueezed":
            w = w.squeeze(1)  # [B]
            return (1 - w)[:, None] * left + w.unsqueeze(1) * right
        pair = f in ("interleaved_pair", "interleaved_blocks")
        parts = [left, right] if pair else [left, right, mid]
        ww = torch.cat([1 - w, w], dim=1) if pair else w  # [B, E]
        flat = ww.repeat_interleave(WIDTH, dim=1) * torch.cat(parts, dim=1)  # [B, E * D]
        if f == "interleaved_blocks":
            return flat[:, :WIDTH] + flat[:, WIDTH : 2 * WIDTH]
        if f == "interleaved_split":
            return sum(flat.split(WIDTH, dim=1))
        return flat.reshape(-1, len(parts), WIDTH).sum(1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        left, right, mid = self.left(x), self.right(x), self.mid(x)
        out = {}
        for t in TASKS:
            h = self.blend(left, right, mid, self.weight(t, x))
            out[t] = torch.sigmoid(self.heads[t](h)).squeeze(1)
        return out


def collapse(model: Blend) -> Blend:
    """click's weight ~1 for every row (all on `right`; for the softmax: on its second expert), buy's varying."""
    with torch.no_grad():
        for t, lin in ((t, model.weights[t]) for t in TASKS):
            lin = lin[0] if isinstance(lin, nn.Sequential) else lin
            if t == "click":
                lin.weight.zero_()
                lin.bias.fill_(12.0)
                if lin.bias.numel() == 3:
                    lin.bias.copy_(torch.tensor([-12.0, 12.0, -12.0]))
            else:
                lin.weight.normal_(0, 2.0, generator=torch.Generator().manual_seed(1))
                lin.bias.zero_()
    return model.eval()


class Extrapolating(Blend):
    """`lerp(left, right, w)` with `w = 2 * sigmoid(z) - 0.5`, which leaves [0, 1]: not a gate over the two."""

    def weight(self, task: str, x: torch.Tensor) -> torch.Tensor:
        return 2 * torch.sigmoid(self.weights[task](x)) - 0.5


class SplitWeights(Blend):
    """`sigmoid(z) * left + sigmoid(-z) * right`: two per-row weights of their own, which no tensor holds as a
    pair; seen but not readable as a gate (unresolved), never a Shared-Bottom. `sliced` takes both from one
    `[B, 2]` softmax instead (`p[:, 0:1] * left + p[:, 1:2] * right`), which is that tensor's gate; `three`
    weights three experts by three sigmoids of their own, `w0 * left + w1 * right + w2 * mid`."""

    def __init__(self, sliced: bool = False, three: bool = False) -> None:
        super().__init__("lerp")
        self.sliced = sliced
        self.three = three
        self.pairs = nn.ModuleDict({t: nn.Linear(N_FEATURES, 2) for t in TASKS})
        self.thirds = nn.ModuleDict(
            {t: nn.ModuleList(nn.Linear(N_FEATURES, 1) for _ in range(3)) for t in TASKS}
        )

    def blend(
        self, left: torch.Tensor, right: torch.Tensor, mid: torch.Tensor, w: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        left, right, mid = self.left(x), self.right(x), self.mid(x)
        out = {}
        for t in TASKS:
            if self.three:
                w = [torch.sigmoid(lin(x)) for lin in self.thirds[t]]
                h = w[0] * left + w[1] * right + w[2] * mid
            elif self.sliced:
                p = torch.softmax(self.pairs[t](x), dim=1)
                h = p[:, 0:1] * left + p[:, 1:2] * right
            else:
                z = self.weights[t](x)
                h = torch.sigmoid(z) * left + torch.sigmoid(-z) * right
            out[t] = torch.sigmoid(self.heads[t](h)).squeeze(1)
        return out


class FlatWeight(Blend):
    """`(1 - w).unsqueeze(1) * left + w.unsqueeze(1) * right` with `w` naturally `[B]` (a sigmoid of a squeezed
    score): each term unsqueezes its own copy and no `[B, 1]` tensor feeds both, so the gate is read at the `[B]`
    weight (an edit written at one unsqueeze would change one term only)."""

    def weight(self, task: str, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.weights[task](x).squeeze(1))

    def blend(
        self, left: torch.Tensor, right: torch.Tensor, mid: torch.Tensor, w: torch.Tensor
    ) -> torch.Tensor:
        return (1 - w).unsqueeze(1) * left + w.unsqueeze(1) * right


class InlineSlices(Blend):
    """One `Linear(d, 2)` + sigmoid `s` holds both tasks' weights; task `i` blends `(1 - s[:, i:i+1]) * left +
    s[:, i:i+1] * right`, slicing its column once per term (the same weight twice). `cross` takes the other
    task's column for the second term, `(1 - s[:, i:i+1]) * left + s[:, j:j+1] * right`: no blend."""

    def __init__(self, cross: bool = False) -> None:
        super().__init__("affine")
        self.cross = cross
        self.both = nn.Linear(N_FEATURES, len(TASKS))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        left, right = self.left(x), self.right(x)
        s = torch.sigmoid(self.both(x))  # [B, T]
        out = {}
        for i, t in enumerate(TASKS):
            j = len(TASKS) - 1 - i if self.cross else i
            h = (1 - s[:, i : i + 1]) * left + s[:, j : j + 1] * right
            out[t] = torch.sigmoid(self.heads[t](h)).squeeze(1)
        return out


class LookAlike(nn.Module):
    """Gate-less multi-task models whose forwards hold sums and products that are no per-row blend:

    * `residual`: `h + f(h)` (a residual block over the shared bottom);
    * `average`: `0.5 * left + 0.5 * right` (a constant average);
    * `constant_rows`: `lerp(left, right, w)` with `w` a `[B, 1]` constant, computed from no input;
    * `per_feature`: `(1 - z) * left + z * right` with `z` `[B, D]` (one weight per feature, GRU-style);
    * `features`: attention-like products of features, `left * right`, `left * sigmoid(score(x))` per
      feature, and `sigmoid(s) * left + right` (a per-row weight on one term only);
    * `highway`: `t * relu(block(h)) + (1 - t) * h`, `t = sigmoid(carry(h))` `[B, 1]` (a highway layer: one
      term is computed from the other); `saturated=True` pins `t` at ~0, the carry a highway net often learns;
    * `gru`: three GRU-style steps `(1 - z) * h + z * tanh(cand([x, h]))` with a per-row update gate `z`;
    * `gated_residual`: `h + s * (f(h) - h)` (`s` a per-row sigmoid); `tanh_residual`: the same with
      `s = tanh(.)`, which leaves [0, 1].
    """

    def __init__(self, form: str, saturated: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.form = form
        self.carry = nn.Linear(WIDTH, 1)
        self.cand = nn.Linear(N_FEATURES + WIDTH, WIDTH)
        self.update = nn.Linear(N_FEATURES + WIDTH, 1)
        if saturated:
            with torch.no_grad():
                self.carry.weight.zero_()
                self.carry.bias.fill_(-12.0)
        self.left = nn.Sequential(nn.Linear(N_FEATURES, WIDTH), nn.ReLU())
        self.right = nn.Sequential(nn.Linear(N_FEATURES, WIDTH), nn.ReLU())
        self.block = nn.Linear(WIDTH, WIDTH)
        self.score = nn.Linear(N_FEATURES, WIDTH)
        self.scalar = nn.Linear(N_FEATURES, 1)
        self.heads = nn.ModuleDict({t: nn.Linear(WIDTH, 1) for t in TASKS})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        left, right = self.left(x), self.right(x)
        if self.form == "residual":
            h = left + torch.relu(self.block(left))
        elif self.form == "average":
            h = 0.5 * left + 0.5 * right
        elif self.form == "constant_rows":
            h = torch.lerp(left, right, torch.full((x.shape[0], 1), 0.3))
        elif self.form == "per_feature":
            z = torch.sigmoid(self.score(x))  # [B, D]: a weight per feature (GRU-style), not per row
            h = (1 - z) * left + z * right
        elif self.form == "highway":
            t = torch.sigmoid(self.carry(left))
            h = t * torch.relu(self.block(left)) + (1 - t) * left
        elif self.form == "gru":
            h = torch.zeros_like(left)
            for _ in range(3):
                xh = torch.cat([x, h], dim=1)
                z = torch.sigmoid(self.update(xh))
                h = (1 - z) * h + z * torch.tanh(self.cand(xh))
        elif self.form in ("gated_residual", "tanh_residual"):
            squash = torch.sigmoid if self.form == "gated_residual" else torch.tanh
            s = squash(self.scalar(x))
            h = left + s * (torch.relu(self.block(left)) - left)
        else:
            h = left * right + left * torch.sigmoid(self.score(x))
            h = torch.sigmoid(self.scalar(x)) * h + right
        return {t: torch.sigmoid(self.heads[t](h)).squeeze(1) for t in TASKS}


class SkipExpert(nn.Module):
    """An expert with a gated skip inside: `t * relu(inner(x)) + (1 - t) * proj(x)`, `t` `[B, 1]`."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(N_FEATURES, WIDTH)
        self.inner = nn.Linear(N_FEATURES, WIDTH)
        self.skip = nn.Linear(N_FEATURES, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.sigmoid(self.skip(x))
        return t * torch.relu(self.inner(x)) + (1 - t) * self.proj(x)


class SkipInExpert(nn.Module):
    """A plain MMoE (3 experts, one softmax gate per task) whose first expert is a `SkipExpert`: its gated skip
    is part of that expert, not a gate of the model."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.experts = nn.ModuleList(
            [SkipExpert()] + [nn.Sequential(nn.Linear(N_FEATURES, WIDTH), nn.ReLU()) for _ in range(2)]
        )
        self.gates = nn.ModuleDict({t: nn.Linear(N_FEATURES, 3) for t in TASKS})
        self.heads = nn.ModuleDict({t: nn.Linear(WIDTH, 1) for t in TASKS})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        e = torch.stack([m(x) for m in self.experts], dim=1)  # [B, 3, D]
        out = {}
        for t in TASKS:
            g = torch.softmax(self.gates[t](x), dim=1)
            out[t] = torch.sigmoid(self.heads[t]((g.unsqueeze(-1) * e).sum(1))).squeeze(1)
        return out


SCALAR_FORMS = ("lerp", "affine", "affine_swapped", "delta", "minus", "stacked", "python_sum")


class ScalarHeads(Blend):
    """Per task, two scalar heads `low_t`, `high_t` (`Linear(WIDTH, 1)` on the shared `left(x)`) blended by the
    task's own `w_t = sigmoid(weight_t(x))` as `form` says: `y_t = (1 - w_t) * low_t(h) + w_t * high_t(h)`.
    The experts are `[B, 1]`, as wide as `w_t`, so neither factor of a product is the weight by its shape.
    `highway` is a scalar look-alike instead: `y_t = t * relu(bend(l)) + (1 - t) * l`, `l = low_t(h)`,
    `t = sigmoid(weight_t(x))`, one term made from the other (a gated skip on the head, no gate); so is
    `products`, `low_t * high_t + t * low_t` (a product of two heads). `split` weights the heads by two
    sigmoids of their own, `sigmoid(z) * low_t + sigmoid(-z) * high_t`: a mix that cannot be read as a gate."""

    def __init__(self, form: str) -> None:
        super().__init__(form)
        self.lows = nn.ModuleDict({t: nn.Linear(WIDTH, 1) for t in TASKS})
        self.highs = nn.ModuleDict({t: nn.Linear(WIDTH, 1) for t in TASKS})
        self.bend = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.left(x)
        out = {}
        for t in TASKS:
            w = self.weight(t, x)
            low = self.lows[t](h)
            if self.form == "highway":
                y = w * torch.relu(self.bend(low)) + (1 - w) * low
            elif self.form == "products":
                y = low * self.highs[t](h) + w * low
            elif self.form == "split":
                z = self.weights[t](x)
                y = torch.sigmoid(z) * low + torch.sigmoid(-z) * self.highs[t](h)
            else:
                y = self.blend(low, self.highs[t](h), low, w)
            out[t] = torch.sigmoid(y).squeeze(1)
        return out


TOTAL_FORMS = ("affine", "lerp", "delta", "clamped", "detached")


class TotalProbability(nn.Module):
    """A Shared-Bottom with an entire-space CVR decomposition (ESCM²/DCMT): `p_buy = p_click * a(h) +
    (1 - p_click) * b(h)` (as `form` writes it), where `p_click = sigmoid(ctr(h))` is the click task's own
    prediction, rare (bias -6): a blend by the law of total probability over another task's output, no gate.
    `clamped` returns `p_click.clamp(1e-6, 1 - 1e-6)` as click and blends by `p_click`; `detached` blends by
    `p_click.detach()`."""

    def __init__(self, form: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.form = form
        self.bottom = nn.Sequential(nn.Linear(N_FEATURES, WIDTH), nn.ReLU())
        self.ctr = nn.Linear(WIDTH, 1)
        self.clicked = nn.Linear(WIDTH, 1)
        self.unclicked = nn.Linear(WIDTH, 1)
        with torch.no_grad():
            self.ctr.bias.fill_(-6.0)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.bottom(x)
        p = torch.sigmoid(self.ctr(h))
        a, b = torch.sigmoid(self.clicked(h)), torch.sigmoid(self.unclicked(h))
        w = p.detach() if self.form == "detached" else p
        if self.form == "lerp":
            buy = torch.lerp(b, a, w)
        elif self.form == "delta":
            buy = b + w * (a - b)
        else:
            buy = w * a + (1 - w) * b
        click = p.clamp(1e-6, 1 - 1e-6) if self.form == "clamped" else p
        return {"click": click.squeeze(1), "buy": buy.squeeze(1)}
