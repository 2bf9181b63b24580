"""Reweighting the mixture by validation loss during training ([data.reweight]): a DoReMi-style online rule (Xie
et al. 2023, "DoReMi", Algorithm 1, with the per-source validation loss the trainer measures at each validation in
place of the proxy model's training loss).

At a validation at or after `start` (every `every`-th), each source's excess over its reference is

    run reference:   excess_i = max(0, L_i - R_i)          R_i: the reference run's loss on source i
    "early":         excess_i = max(0, D_i - mean_j D_j)   D_i = L_i - R_i, R_i: the run's own early loss

(a run's losses fall below its own early ones, so against "early" the plain excess would always clip to 0: a source
is behind when it has improved less than the average source has), and the weights in force become
`update(weights, excess, base, ...)`, in force from the next optimizer step. The reweighted weights and the history
of updates are run state (in the loader's part of state.json), so a resumed run draws the same windows as a straight
one. Reweighting starts from data.weights (or the prepared token shares) and is refused with [[data.stage]]."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from rain.config import RunConfig
from rain.data.schedule import MixtureSchedule
from rain.errors import RainError
from rain.files import read_jsonl


def update(weights: np.ndarray, excess: np.ndarray, base: np.ndarray, eta: float, smoothing: float,
           floor: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """One step of the rule:

        w1 = w * exp(eta * excess) / sum_j w_j * exp(eta * excess_j)   (exponentiated gradient on the excess)
        w2 = (1 - smoothing) * w1 + smoothing * base                   (pulled back towards the base weights)
        w  = within_bounds(w2, floor, cap)                              (each source in [floor_i, cap_i], sum 1)

    Zero excess leaves w1 = w; smoothing still pulls the weights towards `base`. A source of weight 0 stays at 0
    unless its floor lifts it. The exponent is shifted by its max (the same after normalising) and held above -700,
    so a large eta never underflows a source of the mixture to 0, which its cap might need to give weight to."""
    scaled = weights * np.exp(np.maximum(eta * (excess - excess.max()), -700.0))
    w1 = scaled / scaled.sum()
    return within_bounds((1 - smoothing) * w1 + smoothing * base, floor, cap)


def within_bounds(w: np.ndarray, floor: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """clip(c * w, floor, cap) with the one scale c >= 0 that makes it sum to 1: the sources inside their bounds keep
    their ratios, the rest sit at a bound. The sum is non-decreasing and piecewise linear in c, so c is found exactly
    between two of its breakpoints (floor_i / w_i, cap_i / w_i): no iteration, so it always ends. Needs
    sum(floor) <= 1 <= sum(cap over sources of w > 0, floor over the rest), else ValueError."""
    def total(c: float) -> float:
        return float(np.clip(c * w, floor, cap).sum())

    if total(0.0) > 1 + 1e-9:
        raise ValueError(f"the floors sum to {floor.sum():.6g}, above 1")
    pos = w > 0
    points = np.unique(np.concatenate([[0.0], floor[pos] / w[pos], cap[pos] / w[pos]]))
    sums = np.array([total(c) for c in points])
    if sums[-1] < 1 - 1e-9:
        raise ValueError(f"the caps of the sources with weight sum to {sums[-1]:.6g}, below 1")
    k = int(np.searchsorted(sums, 1.0 - 1e-12))  # the first breakpoint whose sum reaches 1
    if k == 0:
        c = 0.0
    else:
        a, b = points[k - 1], points[k]
        c = a + (1.0 - sums[k - 1]) * (b - a) / (sums[k] - sums[k - 1])
    return np.clip(c * w, floor, cap)


def excess_losses(losses: np.ndarray, reference: np.ndarray, early: bool, used: np.ndarray) -> np.ndarray:
    """Each source's clipped excess (the module docstring): over the reference run's loss, or, against the run's own
    early losses, its change since then over the mean change of the sources in the mixture (`used`)."""
    gap = losses - reference
    if early:
        gap = gap - gap[used].mean()
    return np.where(used, np.maximum(0.0, gap), 0.0)


def _per_source(value: float | dict[str, float], names: list[str], default: float) -> np.ndarray:
    if isinstance(value, dict):
        return np.array([float(value.get(n, default)) for n in names])
    return np.full(len(names), float(value))


def reference_losses(where: str, names: list[str], used: np.ndarray) -> list[dict]:
    """The validation records of a reference run (a run folder or its metrics.jsonl): [{"tokens", "losses"}], each
    with a loss for every source of `names` in the mixture (`used`; 0 for the rest), or a one-line RainError."""
    path = Path(where).expanduser()
    metrics = path / "metrics.jsonl" if path.is_dir() else path
    if not metrics.is_file():
        raise RainError(f"data.reweight.reference {where}: no such run folder or metrics.jsonl (give \"early\" or "
                        "a finished reference run)")
    vals = [r for r in read_jsonl(metrics, torn_tail=True) if r.get("kind") == "val"]
    if not vals:
        raise RainError(f"data.reweight.reference {metrics}: no validation records")
    have = sorted(k.split("/", 1)[1] for k in vals[-1] if k.startswith("val_loss/"))
    missing = [n for n, u in zip(names, used) if u and n not in have]
    if missing:
        raise RainError(f"data.reweight.reference {metrics}: its validation has no loss for source {missing[0]!r} "
                        f"(it has: {', '.join(have) or 'none, one source'}); use a reference run on the same sources")
    needed = [n for n, u in zip(names, used) if u]
    return [{"tokens": r["tokens"], "losses": np.array([r.get(f"val_loss/{n}", 0.0) for n in names])}
            for r in vals if all(f"val_loss/{n}" in r for n in needed)]


class Reweighting:
    """The rule applied at each validation of a run, on a MixtureSchedule (its sources, base weights and length).
    Its state (early losses, validations seen, the updates) is a plain dict for state.json; the updates themselves
    go to the schedule's `reweights` as (first step, weights), where MixtureSchedule.weights_at reads them."""

    def __init__(self, cfg: RunConfig, schedule: MixtureSchedule):
        r, names = cfg.data.reweight, schedule.names
        self.cfg, self.names, self.base, self.total = r, names, schedule.base, schedule.total
        self.history = schedule.reweights  # the same list: appended to, refilled in place on a resume
        self.tokens_per_step = cfg.tokens_per_step()
        self.floor, self.cap = _per_source(r.floor, names, 0.0), _per_source(r.cap, names, 1.0)
        self.used = (self.base > 0) | (self.floor > 0)
        self.start = math.ceil(r.start * self.total - 1e-9)
        self.early = r.reference == "early"
        self.reference = None if self.early else reference_losses(r.reference, names, self.used)
        self.early_losses: list[list[float]] = []
        self.seen = 0  # validations at or after `start`, the early ones included
        self._check(cfg, names)

    def _check(self, cfg: RunConfig, names: list[str]) -> None:
        r, where = self.cfg, "data.reweight"
        for key in ("floor", "cap"):
            table = getattr(r, key)
            unknown = sorted(set(table) - set(names)) if isinstance(table, dict) else []
            if unknown:
                raise RainError(f"{where}.{key} names {unknown[0]!r}, not a source (the sources: {', '.join(names)})")
        above = [n for n, lo, hi in zip(names, self.floor, self.cap) if lo > hi]
        if above:
            raise RainError(f"{where}: the floor of {above[0]} is above its cap")
        if self.floor.sum() > 1 + 1e-9:
            raise RainError(f"{where}: the floors sum to {self.floor.sum():.6g}; they must leave room (sum <= 1)")
        reach = float(np.where(self.base > 0, self.cap, self.floor).sum())
        if reach < 1 - 1e-9:
            raise RainError(f"{where}: the caps of the sources in the mixture sum to {reach:.6g}; they must reach 1")
        if len(names) < 2:
            raise RainError(f"{where}: {cfg.data.dir} has one source; reweighting needs the validation loss of "
                            "several (prepare a mixture)")
        e = cfg.train.eval_every
        need = r.reference_evals + 1 if self.early else 1
        have = len(range(-(-self.start // e) * e, self.total, e))
        if have < need:
            raise RainError(f"{where}: {have} validation(s) between its start (step {self.start:,}) and the end (step "
                            f"{self.total:,}) and it needs {need} (every train.eval_every = {e} steps); lower "
                            "train.eval_every or data.reweight.start")

    def weights(self) -> np.ndarray:
        return self.history[-1][1] if self.history else self.base

    def _reference_at(self, step: int) -> np.ndarray:
        if self.early:
            return np.mean(self.early_losses, axis=0)
        if self.cfg.reference_at == "final":
            return self.reference[-1]["losses"]
        tokens = step * self.tokens_per_step
        before = [r for r in self.reference if r["tokens"] <= tokens]
        return (before or self.reference[:1])[-1]["losses"]

    def validated(self, step: int, report: dict) -> dict | None:
        """Take a validation at step `step` (steps done): a `mixture` record (excess and the new weights, in force
        from step `step` on) when it reweights, else None."""
        if step < self.start or step >= self.total:
            return None
        missing = [n for n, used in zip(self.names, self.used) if used and f"val_loss/{n}" not in report]
        if missing:
            raise RainError(f"data.reweight: the validation has no loss for source {missing[0]!r} (none of its "
                            "windows fell in it); raise train.eval_batches, or prepare more of it")
        losses = np.array([report.get(f"val_loss/{n}", 0.0) for n in self.names])  # sources out of the mixture: 0
        self.seen += 1
        if self.early and len(self.early_losses) < self.cfg.reference_evals:
            self.early_losses.append(losses.tolist())
            return None
        counted = self.seen - (self.cfg.reference_evals if self.early else 0)
        if (counted - 1) % self.cfg.every:
            return None
        reference = self._reference_at(step)
        excess = excess_losses(losses, reference, self.early, self.used)
        new = update(self.weights(), excess, self.base, self.cfg.eta, self.cfg.smoothing, self.floor, self.cap)
        self.history.append((step, new))
        def rounded(values, every=False):  # excess and reference of the sources in the mixture, every weight
            return {n: round(float(x), 6) for n, x, u in zip(self.names, values, self.used) if u or every}

        return {"kind": "mixture", "step": step, "tokens": step * self.tokens_per_step, "excess": rounded(excess),
                "reference": rounded(reference), "weights": rounded(new, every=True)}

    def state_dict(self) -> dict:
        return {"history": [[s, w.tolist()] for s, w in self.history], "early": self.early_losses, "seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        self.history[:] = [(int(s), np.array(w)) for s, w in state["history"]]
        self.early_losses, self.seen = [list(x) for x in state["early"]], int(state["seen"])
