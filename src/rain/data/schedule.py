"""The mixture in force at each optimizer step, when training draws its windows by source (data.weights and
[[data.stage]] in the config; rain.data.loader.MixtureLoader draws them).

Before the first stage, the weights are data.weights, or each source's share of the prepared training tokens when
data.weights is empty (so a run with only a late stage trains on the prepared mixture until then). Stage k is in
force from its first step (rain.config.stage_start_steps) to the next stage's; a blended stage of n steps moves
from the weights before it to its own: its step i draws with prev + (i + 1) / n x (own - prev). The weights are
a pure function of the step, so a resumed run draws as a straight one.

With [data.reweight] (rain.data.reweight), each reweighting at a validation sets the weights from the next step on;
`reweights` holds them as (first step, weights), run state that a resume restores, so the weights stay a function
of the step and of that list."""

from __future__ import annotations

import numpy as np

from rain.config import RunConfig, mixture_problems, stage_start_steps
from rain.errors import RainError


class MixtureSchedule:
    def __init__(self, names: list[str], base: np.ndarray, starts: list[int], weights: list[np.ndarray],
                 blends: list[bool], total: int):
        self.names, self.base, self.starts, self.weights, self.blends = names, base, starts, weights, blends
        self.total = total
        self.reweights: list[tuple[int, np.ndarray]] = []  # (first step, weights) of each reweighting, in order

    @classmethod
    def from_config(cls, cfg: RunConfig, names: list[str], shares: dict[str, int], total: int) -> MixtureSchedule | None:
        """The schedule of cfg.data for a run of `total` steps over sources `names` (`shares`: each one's prepared
        training tokens); None when the config asks for no training-time mixing (uniform windows, as prepared)."""
        d = cfg.data
        if not d.weights and not d.stage and not d.reweight.reference:
            return None
        problems = mixture_problems(cfg, total)
        tables = [("data.weights", d.weights)] + [(f"data.stage[{i}].weights", s.weights) for i, s in enumerate(d.stage, 1)]
        for where, table in tables:
            unknown = sorted(set(table) - set(names))
            if unknown:
                problems.append(f"{where} names {unknown[0]!r}, not a source of {d.dir} (its sources: {', '.join(names)})")
        if problems:
            raise RainError("invalid config: " + "; ".join(problems))

        def vector(table: dict[str, float]) -> np.ndarray:
            return np.array([float(table.get(n, 0.0)) for n in names])

        tokens = vector({n: shares.get(n, 0) for n in names})
        base = vector(d.weights) if d.weights else tokens / tokens.sum()
        return cls(names, base, stage_start_steps(cfg, total), [vector(s.weights) for s in d.stage],
                   [s.blend for s in d.stage], total)

    def weights_at(self, step: int) -> np.ndarray:
        """The weight of each source (in `names` order) for the windows of optimizer step `step` (from 0)."""
        r = int(np.searchsorted([s for s, _ in self.reweights], step, "right"))  # reweightings in force by then
        if r:
            return self.reweights[r - 1][1]
        k = int(np.searchsorted(self.starts, step, "right"))  # stages begun by this step
        if k == 0:
            return self.base
        own = self.weights[k - 1]
        if not self.blends[k - 1]:
            return own
        prev = self.weights[k - 2] if k >= 2 else self.base
        a, b = self.starts[k - 1], self.starts[k] if k < len(self.starts) else self.total
        f = min(1.0, (step + 1 - a) / max(1, b - a))
        return prev + f * (own - prev)

    def used(self) -> np.ndarray:
        """Which sources are ever drawn from (a weight above 0 at some step)."""
        return np.any([self.base > 0] + [w > 0 for w in self.weights], axis=0)

    def as_dict(self, weights: np.ndarray) -> dict[str, float]:
        return {n: round(float(w), 6) for n, w in zip(self.names, weights)}

    def describe(self) -> list[dict]:
        """The stages as they fall in this run: where each starts (step), its weights and whether it blends."""
        first = [{"step": 0, "weights": self.as_dict(self.base), "blend": False}]
        return first + [{"step": s, "weights": self.as_dict(w), "blend": b}
                        for s, w, b in zip(self.starts, self.weights, self.blends)]
