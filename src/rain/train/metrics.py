"""Run records: metrics.jsonl (always), optional live trackers (trackio, TensorBoard), the loss plot,
and the FLOPs arithmetic behind MFU."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rain.config import ModelConfig, RunConfig
from rain.errors import RainError
from rain.files import read_jsonl, write_atomic
from rain.train.gpus import Gpu, gpu_for_device


def active_params(cfg: ModelConfig, n_params: int) -> int:
    """The parameters one token uses: n_params less the experts it is not routed to (all of them if dense)."""
    idle_experts = cfg.n_experts - cfg.experts_per_token if cfg.n_experts else 0
    return n_params - idle_experts * 3 * cfg.d_model * cfg.d_expert * cfg.n_layer


def flops_per_token(cfg: ModelConfig, n_params: int) -> float:
    """Training FLOPs per token: 6 x (active non-embedding params + LM head) + 12 x layers x d_model x context."""
    head = cfg.vocab_size * cfg.d_model
    matmul_params = active_params(cfg, n_params) - head + (head if cfg.tie_embeddings else 0)
    return 6 * matmul_params + 12 * cfg.n_layer * cfg.d_model * cfg.context


def gpu_of(device: torch.device) -> Gpu | None:
    """The GPU table's entry (rain.train.gpus) for a CUDA device; None on a CPU or an unknown GPU."""
    return gpu_for_device(torch.cuda.get_device_name(device)) if device.type == "cuda" else None


def peak_flops(device: torch.device) -> float | None:
    """The MFU denominator: the device's bf16 dense peak FLOP/s from rain.train.gpus, None where unknown."""
    gpu = gpu_of(device)
    return gpu.peak_flops if gpu else None


class MetricsLog:
    """Appends one JSON object per record to metrics.jsonl and forwards scalars to the chosen tracker."""

    def __init__(self, run_dir: Path, cfg: RunConfig, run_name: str):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tracker = cfg.train.tracker
        self._tb = None
        if self.tracker == "trackio":
            try:
                import trackio
            except ImportError:
                raise RainError("train.tracker = 'trackio' needs the extra: pip install 'rain[trackio]'") from None
            self._trackio = trackio
            trackio.init(project="rain", name=run_name, config=cfg.to_dict())
        elif self.tracker == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise RainError("train.tracker = 'tensorboard' needs the extra: pip install 'rain[tensorboard]'") from None
            self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def log(self, record: dict) -> None:
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as exc:  # a torn last line is dropped on the next read (read_metrics)
            raise RainError(f"could not append to {self.path}: {exc.strerror or exc}; free space and continue "
                            "with --resume") from None
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if self.tracker == "trackio":
            self._trackio.log(scalars, step=record.get("step"))
        elif self._tb is not None:
            kind = record.get("kind", "train")
            for k, v in scalars.items():  # "eval/hellaswag/acc" stays itself, not eval/eval/...
                self._tb.add_scalar(k if k.startswith(f"{kind}/") else f"{kind}/{k}", v, record.get("step"))

    def close(self) -> None:
        if self.tracker == "trackio":
            self._trackio.finish()
        elif self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: Path) -> list[dict]:
    """The run's records; a last line cut off by a crash or a full disk is dropped with a warning."""
    return read_jsonl(Path(run_dir) / "metrics.jsonl", torn_tail=True)


def truncate_after(run_dir: Path, step: int) -> None:
    """Drop records past `step` (a resumed run re-logs them) so the file reads as one uninterrupted run."""
    records = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step]
    write_atomic(Path(run_dir) / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records).encode())


def smooth(values, half_window: int) -> list[float]:
    """A centred moving average of `values`: each point is the mean of itself and up to `half_window` neighbours
    on each side, the window shrinking near the ends so that it stays centred. Unlike a running (exponential)
    average it does not lag: a straight line comes back unchanged, a constant stays constant, and every point is
    a mean of logged ones, so it never leaves their range. Non-finite values (a diverged step) are skipped."""
    import numpy as np

    y = np.asarray(values, dtype=float)
    n = len(y)
    finite = np.isfinite(y)
    sums = np.concatenate([[0.0], np.cumsum(np.where(finite, y, 0.0))])
    counts = np.concatenate([[0], np.cumsum(finite)])
    i = np.arange(n)
    k = np.minimum(half_window, np.minimum(i, n - 1 - i))  # the widest centred window that fits
    count = counts[i + k + 1] - counts[i - k]
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((sums[i + k + 1] - sums[i - k]) / count).tolist()


def plot_losses(run_dir: Path, out: Path | None = None) -> Path | None:
    """Training loss (as logged, and smoothed by `smooth`) and validation loss against tokens seen, with a dashed
    vertical line where each epoch ended and a dotted one, labelled, where each data.stage began."""
    records = read_metrics(run_dir)
    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    stages = [r for r in records if r.get("kind") == "stage"]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    x = [r["tokens"] for r in train]
    y = [r["loss"] for r in train]
    curves = benchmark_curves(records)
    fig, axes = plt.subplots(1, 2 if curves else 1, figsize=(14 if curves else 8, 4.5), squeeze=False)
    ax = axes[0, 0]
    if curves:
        draw_benchmarks(axes[0, 1], curves)
    if len(y) >= 5:  # fewer points are drawn as they are
        h = max(1, len(y) // 40)  # a window of about 5% of the run
        ax.plot(x, smooth(y, h), color="navy", lw=2.5, label=f"train (centred mean of {2 * h + 1} logs)")
    # On top of the smoothed curve, so that it shows even where the two coincide.
    ax.plot(x, y, color="tab:blue", alpha=0.6, lw=1, label="train (as logged)")
    if val:
        ax.plot([r["tokens"] for r in val], [r["val_loss"] for r in val], "o-", color="tab:orange", label="validation")
    for i, r in enumerate(epochs):
        ax.axvline(r["tokens"], color="gray", ls="--", lw=1, label="end of an epoch" if i == 0 else None)
    for i, r in enumerate(stages):
        ax.axvline(r["tokens"], color="tab:green", ls=":", lw=1.5, label="a data stage begins" if i == 0 else None)
        ax.annotate(f" stage {r['stage']}", (r["tokens"], 1), xycoords=("data", "axes fraction"), va="top",
                    fontsize=8, color="tab:green")
    tokens_axis(ax)
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = out or Path(run_dir) / "loss.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def benchmark_curves(records: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """{"hellaswag acc_norm": (tokens, values)} from the "eval" records of benchmarks during training
    (train.eval_tasks), in the order the metrics first appear."""
    curves: dict[str, tuple[list[int], list[float]]] = {}
    for r in records:
        if r.get("kind") != "eval":
            continue
        for key, value in r.items():
            if key.startswith("eval/") and isinstance(value, (int, float)):
                tokens, values = curves.setdefault(" ".join(key.split("/")[1:]), ([], []))
                tokens.append(r["tokens"])
                values.append(value)
    return curves


def draw_benchmarks(ax, curves: dict[str, tuple[list[int], list[float]]]) -> None:
    for label, (tokens, values) in curves.items():
        ax.plot(tokens, values, "o-", ms=3, label=label)
    tokens_axis(ax)
    ax.set_title("benchmarks during training (train.eval_tasks)")
    ax.set_ylabel("score")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def human_tokens(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def tokens_axis(ax) -> None:
    """Label an x axis of tokens seen, with ticks as 10K, 2.5M, 1B rather than an offset in a corner."""
    from matplotlib.ticker import FuncFormatter

    ax.set_xlabel("tokens seen")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: human_tokens(int(v)) if v >= 0 else ""))


def compute_bill(flops_per_token: float, tokens: int, wall_seconds: float, world: int, records: list[dict],
                 gpu: Gpu | None, price_per_gpu_hour: float = 0.0) -> dict:
    """What a run cost: total training FLOPs (FLOPs per token x tokens seen), GPU-hours (wall time x processes),
    the mean of the logged MFU where the GPU is in the table, and with a price the cost; with NVML power readings
    in the records (rain.train.gpu_guard), the energy at their mean draw over the wall time, per GPU."""
    trains = [r for r in records if r.get("kind") == "train"]
    gpu_hours = wall_seconds / 3600 * world
    bill = {"training_flops": float(flops_per_token * tokens), "gpu_hours": round(gpu_hours, 4),
            "gpu": gpu.label if gpu else None, "gpus": world}
    mfus = [r["mfu"] for r in trains if "mfu" in r]
    if mfus:
        bill["mean_mfu"] = round(sum(mfus) / len(mfus), 4)
    if price_per_gpu_hour:
        bill["price_per_gpu_hour"] = price_per_gpu_hour
        bill["cost"] = round(gpu_hours * price_per_gpu_hour, 2)
    watts = [r["gpu_power_w"] for r in trains if "gpu_power_w" in r]
    if watts:
        bill["mean_power_w"] = round(sum(watts) / len(watts), 1)
        bill["energy_kwh"] = round(bill["mean_power_w"] * gpu_hours / 1000, 3)
    return bill


def format_bill(bill: dict) -> str:
    """One line for the end-of-run summary and the model card."""
    parts = [f"{bill['training_flops']:.3g} training FLOPs", f"{bill['gpu_hours']:.2f} GPU-hours"
             + (f" on {bill['gpus']} x {bill['gpu']}" if bill.get("gpu") else "")]
    if "mean_mfu" in bill:
        parts.append(f"mean MFU {bill['mean_mfu']:.1%}")
    if "cost" in bill:
        parts.append(f"cost {bill['cost']:,.2f} at {bill['price_per_gpu_hour']:g} a GPU-hour")
    if "energy_kwh" in bill:
        parts.append(f"{bill['energy_kwh']:.3g} kWh at a mean {bill['mean_power_w']:g} W per GPU (NVML)")
    return ", ".join(parts)
