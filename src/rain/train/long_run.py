"""What keeps a long unattended run (rain-v2 trains for 40 hours) from wasting itself, read by Trainer.fit:

    DivergenceGuard   a step whose loss or gradient norm is not finite never reaches the weights: it is skipped and
                      counted. train.max_bad_steps such steps in a row, or a logged loss above train.spike_factor x
                      the median of the recent logged ones, call for train.on_divergence: roll back to the newest
                      checkpoint (past the data it diverged on, at a lower learning rate for a while) or stop.
    EarlyStopping     train.early_stop_patience validations without an improvement end the run.
    Deadline          --time-limit: stop, saving `last`, while there is still time for the save.
    run_steps         the length of a run, train.epochs included.

The state a resume needs (DivergenceGuard, EarlyStopping) is in their state_dict(), which the Trainer keeps in
each checkpoint's state.json, so a run that rolled back still resumes bit-exactly."""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from contextlib import contextmanager

from rain.config import RunConfig, TrainConfig
from rain.errors import RainError


def now() -> float:
    """The clock Deadline reads (tests replace it)."""
    return time.monotonic()


# ---- the length of a run ------------------------------------------------------------------------------


def epoch_windows(data) -> int | None:
    """Training windows in one epoch of `data` (a TrainData), or None when it cannot say."""
    return int(data.windows_per_epoch()) if hasattr(data, "windows_per_epoch") else None


def run_steps(cfg: RunConfig, data) -> int:
    """Optimizer steps of the run: train.max_steps if set, else train.epochs x windows per epoch / batch_size
    (rounded up: the last epoch is trained whole), else train.total_tokens / tokens per step."""
    t = cfg.train
    if not t.epochs or t.max_steps:
        return cfg.total_steps()
    windows = epoch_windows(data)
    if not windows:
        raise RainError("train.epochs needs training data that knows how many windows an epoch has; set "
                        "train.max_steps or train.total_tokens instead")
    return max(1, math.ceil(t.epochs * windows / t.batch_size - 1e-9))  # 1e-9: 0.1 x 600 / 4 is 15.000000000000002


def epochs_done(step: int, batch_size: int, windows: int) -> float:
    return step * batch_size / windows


def ends_epoch(step: int, batch_size: int, windows: int) -> int | None:
    """The epoch (1, 2, ...) that optimizer step `step` completes, or None."""
    done = step * batch_size // windows
    return done if step > 0 and done > (step - 1) * batch_size // windows else None


# ---- divergence -----------------------------------------------------------------------------------------


class DivergenceGuard:
    """Counts skipped (non-finite) steps, watches the logged losses for a spike, and holds what a rollback changes:
    the lowered learning rate and the steps it has left, and the record of every rollback."""

    def __init__(self, t: TrainConfig):
        self.t = t
        self.bad_in_row = 0
        self.skipped = 0  # steps skipped for a non-finite loss or gradient norm
        self.recent: deque[float] = deque(maxlen=t.spike_window)  # the last logged losses
        self.lr_steps_left = 0  # steps that still train at rollback_lr_factor x the schedule's LR
        self.rollbacks: list[dict] = []  # the guard records of the rollbacks so far

    def lr_factor(self) -> float:
        return self.t.rollback_lr_factor if self.lr_steps_left > 0 else 1.0

    def step_taken(self) -> None:
        self.lr_steps_left = max(0, self.lr_steps_left - 1)

    def check_step(self, step: int, skipped: bool, loss: float, grad_norm: float) -> tuple[dict | None, str | None]:
        """(the guard record of a skipped step, why the run diverged) after step `step`; Nones when it went well."""
        if not skipped:
            self.bad_in_row = 0
            return None, None
        self.bad_in_row += 1
        self.skipped += 1
        bad = [name for name, v in (("loss", loss), ("grad_norm", grad_norm)) if not math.isfinite(v)]
        record = {"kind": "guard", "event": "skip", "step": step, "non_finite": bad, "in_a_row": self.bad_in_row}
        k = self.t.max_bad_steps
        why = f"{k} steps in a row with a non-finite loss or gradient norm" if k and self.bad_in_row >= k else None
        return record, why

    def check_loss(self, loss: float) -> str | None:
        """Why a logged training loss is a divergence (a spike), or None; an ordinary one joins the recent losses."""
        full = len(self.recent) == self.recent.maxlen
        median = statistics.median(self.recent) if full else math.nan
        if self.t.spike_factor and full and loss > self.t.spike_factor * median:
            return (f"a loss spike: logged loss {loss:.4f} > {self.t.spike_factor:g} x {median:.4f}, the median of "
                    f"the last {len(self.recent)} logged losses")
        self.recent.append(loss)
        return None

    def rolled_back(self, rollbacks: list[dict], record: dict) -> None:
        """After the reload of a checkpoint (which brought back its own guard state): keep the run's rollbacks,
        add this one, and train at the lower learning rate for train.rollback_lr_steps steps."""
        self.rollbacks = [*rollbacks, record]
        self.bad_in_row = 0
        self.lr_steps_left = self.t.rollback_lr_steps

    def can_roll_back(self) -> bool:
        return self.t.on_divergence == "rollback" and len(self.rollbacks) < self.t.max_rollbacks

    def summary(self) -> dict:
        return {"skipped_steps": self.skipped, "rollbacks": self.rollbacks}

    def state_dict(self) -> dict:
        return {"bad_in_row": self.bad_in_row, "skipped": self.skipped, "recent": list(self.recent),
                "lr_steps_left": self.lr_steps_left, "rollbacks": self.rollbacks}

    def load_state_dict(self, state: dict) -> None:
        self.bad_in_row, self.skipped = state.get("bad_in_row", 0), state.get("skipped", 0)
        self.recent = deque(state.get("recent", []), maxlen=self.t.spike_window)
        self.lr_steps_left, self.rollbacks = state.get("lr_steps_left", 0), list(state.get("rollbacks", []))


# ---- early stopping --------------------------------------------------------------------------------------


class EarlyStopping:
    """Ends the run after train.early_stop_patience validations in a row that did not lower the best validation
    loss by at least train.early_stop_min_delta (the best is only moved by such an improvement, so a slow creep
    of smaller ones does not keep a run going forever)."""

    def __init__(self, t: TrainConfig):
        self.patience, self.min_delta = t.early_stop_patience, t.early_stop_min_delta
        self.best: float | None = None
        self.best_step = 0
        self.stale = 0  # validations since the last improvement

    def validated(self, step: int, val_loss: float) -> str | None:
        """Why the run ends after this validation, or None."""
        if not self.patience:
            return None
        if self.best is None or val_loss < self.best - self.min_delta:
            self.best, self.best_step, self.stale = val_loss, step, 0
            return None
        self.stale += 1
        if self.stale < self.patience:
            return None
        return (f"early stopping: the validation loss has not improved by at least {self.min_delta:g} in "
                f"{self.stale} validations (best {self.best:.4f} at step {self.best_step})")

    def state_dict(self) -> dict:
        return {"best": self.best, "best_step": self.best_step, "stale": self.stale}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_step, self.stale = state.get("best"), state.get("best_step", 0), state.get("stale", 0)


# ---- the time limit --------------------------------------------------------------------------------------


class Deadline:
    """--time-limit: before each step, whether the run must stop after it to still have time to save `last`.
    The estimate uses the longest of the recent steps, the last validation and the last save, all measured; until
    a save has been measured one is assumed to take `first_save` seconds."""

    RECENT = 20  # steps the step time is the longest of

    def __init__(self, seconds: float | None = None, first_save: float = 30.0):
        self.seconds = seconds
        self.end = math.inf if seconds is None else now() + seconds
        self.steps: deque[float] = deque(maxlen=self.RECENT)
        self.took = {"eval": 0.0, "save": first_save}
        self._began = now()

    def step_began(self) -> None:
        self._began = now()

    def step_ended(self) -> None:
        self.steps.append(now() - self._began)

    @contextmanager
    def timing(self, what: str, measure: bool = True):
        """Measure one validation ("eval") or one step's saves ("save"), when `measure` (something was done)."""
        began = now()
        yield
        if measure:
            self.took[what] = now() - began

    def no_room(self, next_evaluates: bool, after_evaluates: bool) -> bool:
        """True when the next step must be the last: after it (and its validation and saves), one more step, its
        validation and a save of `last` would not end before the deadline."""
        if self.seconds is None:
            return False
        step = max(self.steps, default=0.0)
        this = step + (self.took["eval"] + self.took["save"] if next_evaluates else 0.0)
        more = step + (self.took["eval"] if after_evaluates else 0.0) + self.took["save"]
        return now() + this + more > self.end

    def reason(self) -> str:
        return f"the time limit ({self.seconds / 3600:g} h): stopped with time left to save"
