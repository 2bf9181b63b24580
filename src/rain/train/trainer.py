"""The Trainer: one object that owns a training run's state and its cadence.

    trainer = Trainer(cfg, "runs/mine")   # runtime, data, model, compile, DDP, optimizer; resumes if asked
    trainer.step()                        # one optimizer step (micro-batch accumulation, clip, update)
    trainer.evaluate()                    # validation loss overall and per source
    trainer.state_dict()                  # everything a resume needs besides the tensors
    trainer.fit()                         # log, evaluate, save and stop on schedule

One process, or several under `torchrun` (DDP or FSDP2, rain.train.parallel: each rank reads its own windows,
rank 0 writes)."""

from __future__ import annotations

import copy
import dataclasses
import gc
import math
import os
import shutil
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from rain.config import RunConfig, TrainConfig
from rain.errors import RainError
from rain.files import FolderLock, write_json_atomic
from rain.model.moe import router_stats, update_router_bias
from rain.model.transformer import Transformer
from rain.progress import progress
from rain.runtime import Ranks, autocast_for, computes_bf16, enable_tf32, pick_device
from rain import checkpoint as ckpt
from rain.train.batches import PretrainData, TrainData
from rain.train.distill import Distiller
from rain.train.gpu_guard import GpuGuard
from rain.train.hooks import IntervalHooks
from rain.train.metrics import (MetricsLog, active_params, compute_bill, flops_per_token, format_bill, gpu_of,
                                peak_flops, plot_losses, read_metrics,
                                truncate_after)
from rain.train.long_run import Deadline, DivergenceGuard, EarlyStopping, ends_epoch, epoch_windows, epochs_done, run_steps
from rain.train.optim import build_optimizer, set_lr, warmup_steps
from rain.train.parallel import gathered, gradient_sync, local, parallelize, sharded
from rain.train.precision import build_training_optimizer, checkpoint_weights, clip_params, restore_model
from rain.train.validation import format_validation, source_losses, validation_report

RUN_FILES = ("config.json", "metrics.jsonl", "run_summary.json", "loss.png")


class Prefetcher:
    """Hands out micro-batches already on the device. On CUDA the next one is read, pinned and copied
    (non-blocking) while the current one trains; state_dict() is the data position of the batches handed
    out so far, so a checkpoint resumes exactly although one batch is in flight."""

    def __init__(self, data: TrainData, device: torch.device, ahead: bool | None = None):
        self.data, self.device = data, device
        self.ahead = device.type == "cuda" if ahead is None else ahead
        self._pending = None  # (the data state before this batch, the batch on the device)

    def _to_device(self, batch):
        pin = self.device.type == "cuda"
        return tuple(None if b is None else (b.pin_memory() if pin else b).to(self.device, non_blocking=True)
                     for b in batch)

    def next_batch(self):
        if not self.ahead:
            return self._to_device(self.data.next_batch())
        if self._pending is None:
            self._pending = (copy.deepcopy(self.data.state_dict()), self._to_device(self.data.next_batch()))
        batch = self._pending[1]
        self._pending = (copy.deepcopy(self.data.state_dict()), self._to_device(self.data.next_batch()))
        return batch

    def state_dict(self) -> dict:
        return self._pending[0] if self._pending is not None else self.data.state_dict()

    def rewind(self) -> None:
        """Put the batch read ahead back: the data returns to its state before it and draws it again on the next
        call, so a change of how it draws (a reweighting at a validation) reaches that batch too."""
        if self._pending is not None:
            self.data.load_state_dict(self._pending[0])
            self._pending = None


@dataclass
class StepStats:
    step: int  # optimizer steps done, this one included
    lr: float
    grad_norm: torch.Tensor
    loss: float = math.nan  # the step's mean loss and gradient norm, as read in the step's one host sync
    norm: float = math.nan
    skipped: bool = False  # not applied: the loss or the gradient norm was not finite
    stop_voted: bool = False  # a process (of every rank) asked the run to stop after this step: --time-limit


def checkpoint_steps(total: int, n: int) -> set[int]:
    """n evenly spaced steps in (0, total]."""
    return {max(1, round(total * k / n)) for k in range(1, n + 1)} if n else set()


def weights_only_dtype(t: TrainConfig, device: torch.device) -> torch.dtype:
    """The dtype of weights-only checkpoints (train.intermediate_dtype): auto is bf16 when the run computes in
    bf16 (train.precision), where storing bf16 loses little; an fp32 run keeps fp32, so evaluating a step_N gives
    exactly the validation loss training recorded."""
    bf16 = t.intermediate_dtype == "bf16" or (t.intermediate_dtype == "auto" and computes_bf16(device, t.precision))
    return torch.bfloat16 if bf16 else torch.float32


def checkpoint_disk_plan(cfg: RunConfig, device: torch.device, tokenizer_path: Path | None = None,
                         total: int | None = None) -> ckpt.DiskPlan:
    """What the run's checkpoints will take on disk (rain.checkpoint.DiskPlan), from a model and optimizer built
    on the meta device: no memory, no data, no GPU. Without a tokenizer file its size is estimated; `total`: the
    run's steps (default: the config's)."""
    with torch.device("meta"):
        model = Transformer(cfg.model)
    optimizer, index = {}, 0
    for group in build_optimizer(model, cfg.train, "cpu").param_groups:  # state_dict numbers params in this order
        for p in group["params"]:
            slots = ("momentum_buffer",) if group.get("muon") else ("exp_avg", "exp_avg_sq")
            optimizer.update({f"{index}.{slot}": (tuple(p.shape), p.dtype) for slot in slots})
            if not group.get("muon"):
                optimizer[f"{index}.step"] = ((), torch.float32)
            index += 1
    optimizer["rng.cpu"] = (tuple(torch.get_rng_state().shape), torch.uint8)
    # A BPE tokenizer.json holds its vocabulary and merges: about 64 bytes per token.
    tokenizer_bytes = tokenizer_path.stat().st_size if tokenizer_path and tokenizer_path.is_file() else 64 * cfg.model.vocab_size
    steps = len(checkpoint_steps(total or cfg.total_steps(), cfg.train.checkpoints))
    return ckpt.disk_plan(cfg, model, optimizer, steps, weights_only_dtype(cfg.train, device), tokenizer_bytes)


def check_free_space(run_dir: Path, plan: ckpt.DiskPlan) -> None:
    """Refuse, before anything is written, a run whose checkpoints will not fit on its folder's file system (the
    checkpoints already there count as room: --overwrite replaces them, --resume goes on from them)."""
    needed = plan.peak - ckpt.folder_bytes(run_dir / "checkpoints")
    folder = next(p for p in (run_dir, *run_dir.parents) if p.exists())
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise RainError(f"{run_dir}: its checkpoints need about {ckpt.format_size(needed)} ({plan.describe()}; and room "
                        f"for a new last beside the old) but {folder} has {ckpt.format_size(free)} free: free space, "
                        "keep fewer (train.checkpoints, train.keep_full, train.intermediate_dtype=bf16), or go on "
                        "anyway with --set train.ignore_disk_check=true")


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool, log=print, began: bool = False) -> None:
    """Check the run folder against --resume / --overwrite and clear what a fresh start replaces. Resuming a run
    that stopped before its first complete checkpoint starts it again from step 0: nothing is lost. `began`: a
    run already took the folder's lock, so one began here even if it was stopped before writing anything."""
    has_run = began or (run_dir / "config.json").exists() or (run_dir / "checkpoints").exists()
    if resume:
        if not has_run:
            raise RainError(f"{run_dir}: nothing to resume (no run there); start it without --resume")
        ckpt.remove_temporaries(run_dir)
        if ckpt.newest_complete(run_dir) is not None:
            return
        damaged = sorted(p.name for p in (run_dir / "checkpoints").glob("*")) if (run_dir / "checkpoints").is_dir() else []
        if damaged:  # never delete them: they may be mended by hand, or hold weights a new run can start from
            raise ckpt.not_resumable(run_dir, damaged)
        log(f"{run_dir}: no complete checkpoint to resume from yet; starting the run again from step 0")
    elif has_run and not overwrite:
        raise RainError(f"{run_dir}: already holds a run; pass --resume to continue it or --overwrite to replace it")
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for name in ("checkpoints", "tensorboard", "eval"):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)


def check_not_parent(run_dir: Path, init_from: str | Path | None) -> None:
    """Refuse an output folder that is, holds or sits inside the checkpoint it starts from: --overwrite would
    delete the parent before it is read."""
    if init_from is None:
        return
    out, parent = run_dir.resolve(), Path(init_from).resolve()
    if out == parent or out in parent.parents or parent in out.parents:
        raise RainError(f"--out {run_dir} overlaps --init-from {init_from} (the run would replace its own parent); "
                        "choose another --out")


def build_model(cfg: RunConfig, device: torch.device, init_from: str | Path | None,
                tokenizer_path: Path | None = None) -> Transformer:
    """A fresh model, or one holding the weights of init_from: a rain checkpoint/run folder or a Hugging Face
    Qwen3/Llama folder, whose shape must match cfg.model and whose tokenizer.json must match tokenizer_path."""
    model = Transformer(cfg.model)
    if init_from is not None:
        folder, state = ckpt.parent_weights(Path(init_from), cfg.model, tokenizer_path)
        ckpt.load_model_state(model, state, str(folder))
    return model.to(device)


def schedule_warnings(cfg: RunConfig, total: int) -> list[str]:
    """Settings that make the schedule not do what the config says, each one line."""
    t = cfg.train
    warmups = {"warmup": warmup_steps(t, total)}
    if t.optimizer == "muon":
        warmups["muon_warmup"] = warmup_steps(dataclasses.replace(t, warmup=t.muon_warmup), total)
    out = []
    for name, warm in warmups.items():
        if total > 1 and warm >= total:
            out.append(f"warning: train.{name} is {warm} steps but the run has {total}: the learning rate never "
                       f"reaches its peak; set a shorter warm-up, e.g. --set train.{name}={max(1, total // 10)}")
    return out


class Trainer:
    """Owns a run: builds everything in __init__ (resuming from checkpoints/last when asked) and keeps the state
    that a checkpoint must carry on the object, where state_dict() reads it."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
                 init_from: str | Path | None = None, data: TrainData | None = None,
                 model: torch.nn.Module | None = None, log=print):
        self.cfg, self.run_dir, self.log = cfg, Path(run_dir), log
        t = cfg.train
        self.hooks = IntervalHooks.build(cfg, log)  # first: a bad train.eval_tasks stops the run before anything is built
        self.device = pick_device(t.device)
        self.ranks = Ranks.from_env(self.device.type)
        if self.ranks.world > 1:
            self.device = pick_device(t.device, self.ranks.local)
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
        self.data = data or PretrainData(cfg, self.ranks.rank, self.ranks.world, self._micro_batch())
        self.micro_batch = self.data.micro_batch  # fitted or configured; cfg.train keeps what the user asked
        if t.batch_size % (self.micro_batch * self.ranks.world):
            raise RainError(f"train.batch_size ({t.batch_size}) must be a multiple of micro_batch x processes "
                            f"({self.micro_batch} x {self.ranks.world})")
        self.grad_accum = t.batch_size // (self.micro_batch * self.ranks.world)
        self.total = run_steps(cfg, self.data)  # max_steps, epochs or total_tokens
        self.tokens_per_step = t.batch_size * cfg.model.context
        # train.teacher (loaded again from the config's path on --resume), before the run folder is touched: a teacher
        # that cannot serve is refused without leaving a folder that "already holds a run"
        self.distiller = self._distiller()
        self.lock = None
        self.weights_dtype = weights_only_dtype(t, self.device)
        self.disk_plan = checkpoint_disk_plan(cfg, self.device, self.data.tokenizer_path, self.total)
        if self.ranks.main:
            check_not_parent(self.run_dir, None if resume else init_from)
            if not t.ignore_disk_check:
                check_free_space(self.run_dir, self.disk_plan)
            began = (self.run_dir / FolderLock.NAME).exists()
            self.lock = FolderLock(self.run_dir, "rain train")  # two runs in one folder would mix their records
            prepare_run_dir(self.run_dir, resume, overwrite, log, began)
            for warning in schedule_warnings(cfg, self.total):
                log(warning)
        if self.ranks.world > 1:
            dist.barrier()
        self._build_model(None if resume else init_from, model)  # a resumed run's weights come from its checkpoint
        self.lineage = {**self._lineage(init_from), **(self.distiller.describe() if self.distiller else {})}
        # The loop state a checkpoint carries (see state_dict).
        self.step_count, self.best_val, self.wall_before, self.window_steps = 0, math.inf, 0.0, 0
        self.loss_sum = torch.zeros((), device=self.device)  # the running loss of the current log window
        self.divergence, self.early_stop = DivergenceGuard(t), EarlyStopping(t)  # long-run state (rain.train.long_run)
        self.batches = Prefetcher(self.data, self.device)
        self._started = time.time()
        self.guard = GpuGuard.start(t, self.device, log)  # GPU readings for the records; pauses when too hot
        self.resumed: tuple[Path | None, dict] = (None, {})  # the checkpoint resumed from, its validation
        source = ckpt.newest_complete(self.run_dir) if resume else None
        if source is not None:
            self._resume(source)

    def _micro_batch(self) -> int:
        if not self.cfg.train.auto_micro_batch:
            return self.cfg.train.micro_batch
        from rain.train.micro_batch import fit_micro_batch

        return fit_micro_batch(self.cfg, self.device, self.ranks.world, self.log)

    def _build_model(self, init_from, model: torch.nn.Module | None = None) -> None:
        t = self.cfg.train
        torch.manual_seed(t.seed)
        enable_tf32(self.device)
        self.autocast = autocast_for(self.device, t.precision)
        if model is None:
            model = build_model(self.cfg, self.device, init_from, self.data.tokenizer_path)
        # A given model is trained instead, called as model(x, y, doc_ids=) -> loss (rain bench's transformers model)
        self.model = model.to(self.device)
        self.model.checkpoint_layers = t.checkpoint_layers
        self.model.attention = t.attention
        self.n_params = self.model.num_params()
        self.flops_per_token = flops_per_token(self.cfg.model, self.n_params)
        self.peak_flops = peak_flops(self.device)
        # compile, then DDP or FSDP2 (train.parallel), with the optimizer built where each needs it: before compile
        # and DDP (bf16-master turns the parameters bf16: rain.train.precision), after FSDP2 shards them.
        self.step_model, self.optimizer = parallelize(self.model, t, self.device, self.ranks.world,
                                                      build_training_optimizer)

    def _distiller(self) -> Distiller | None:
        if not self.cfg.train.teacher:
            return None
        if type(self).micro_loss is not Trainer.micro_loss:  # a stage with its own loss would ignore the teacher
            raise RainError("train.teacher: distillation works in rain train and rain sft, not with this stage's loss")
        return Distiller(self.cfg.train, self.cfg.model, self.data.tokenizer_path, self.device)

    def _lineage(self, init_from) -> dict:
        hardware = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
        lineage = {"init_from": str(Path(init_from).resolve())} if init_from else {}
        lineage["hardware"] = f"{self.ranks.world} x {hardware}" if self.ranks.world > 1 else hardware
        return lineage

    # ---- one step, one evaluation ------------------------------------------------------------------

    def step(self, stop_vote: bool = False) -> StepStats:
        """One optimizer step: grad_accum micro-batches (gradients synchronised across ranks on the last), clip,
        update. A step whose loss or gradient norm is not finite is skipped: its update never reaches the weights.
        stop_vote: this process wants the run to end after this step (--time-limit); under DDP every rank learns
        of it in the same step (StepStats.stop_voted), so they all stop together."""
        t = self.cfg.train
        lr = set_lr(self.optimizer, self.step_count, self.total, t)
        if self.divergence.lr_factor() != 1.0:  # lowered for a while after a rollback
            lr *= self.divergence.lr_factor()
            for group in self.optimizer.param_groups:
                group["lr"] *= self.divergence.lr_factor()
        step_loss = torch.zeros((), device=self.device)
        for micro in range(self.grad_accum):
            batch = self.batches.next_batch()
            self.phase_done("data")
            sync = self.ranks.world == 1 or micro == self.grad_accum - 1
            with gradient_sync(self.step_model, sync):
                with self.autocast:
                    loss = self.micro_loss(batch) / self.grad_accum
                loss.backward()
            step_loss += loss.detach()
        self.phase_done("forward_backward")
        params = clip_params(self.model, self.optimizer)  # bf16-master: the fp32 masters, their gradients moved on
        grad_norm = local(torch.nn.utils.clip_grad_norm_(params, t.grad_clip if t.grad_clip > 0 else math.inf))
        loss_value, norm, stop_voted = self._read_step(step_loss, grad_norm, stop_vote)
        skipped = not (math.isfinite(loss_value) and math.isfinite(norm))
        if not skipped:
            self.optimizer.step()
            update_router_bias(self.model, dist.all_reduce if self.ranks.world > 1 else None)
            self.loss_sum += step_loss
            self.window_steps += 1
        if self.distiller is not None:
            self.distiller.step_done(skipped)
        self.optimizer.zero_grad(set_to_none=True)
        # A skipped step still counts: the step number, the LR schedule and the data move on as if it were taken, so
        # the run keeps its planned length and cadence (validations, checkpoints, its end) and resumes exactly; only
        # the batch is lost. Holding the schedule back instead would stretch the run and repeat its step numbers.
        self.step_count += 1
        self.divergence.step_taken()
        return StepStats(self.step_count, lr, grad_norm, loss_value, norm, skipped, stop_voted)

    def micro_loss(self, batch: tuple) -> torch.Tensor:
        """The mean loss of one micro-batch (on the device), through step_model: next-token cross-entropy here;
        a stage with another objective (rain.posttrain.dpo) overrides it and its data's batches carry what it needs."""
        if self.distiller is not None:  # the same cross-entropy, plus the KL term's gradient (rain.train.distill)
            return self.distiller.micro_loss(self.step_model, self.model, batch, self.grad_accum)
        x, y, doc = batch[:3]
        return self.step_model(x, y, doc_ids=doc)

    def _read_step(self, step_loss: torch.Tensor, grad_norm: torch.Tensor, stop_vote: bool) -> tuple[float, float, bool]:
        """The step's loss and gradient norm on the host: the one wait for the GPU in a step, and one it needs,
        since whether the update may be applied depends on them (checked only at log steps, a NaN would reach the
        weights first). Under DDP they are summed over the ranks in the same transfer, with the stop votes: a
        non-finite value on any rank makes every rank skip the step, and one vote stops them all, so the ranks
        never drift apart."""
        values = torch.stack([step_loss.float(), grad_norm.float()])
        if self.ranks.world == 1:
            loss, norm = values.tolist()
            return loss, norm, stop_vote
        values = torch.cat([values, torch.full((1,), float(stop_vote), device=values.device)])
        dist.all_reduce(values)
        loss, norm, votes = values.tolist()
        return loss / self.ranks.world, norm / self.ranks.world, votes > 0  # every rank has the same norm

    def phase_done(self, phase: str) -> None:
        """Called in step() as each phase ends: "data" (a micro-batch is on the device) and "forward_backward"
        (all gradients are in). Does nothing: it is where `rain bench` marks the step's time split."""

    def evaluate(self) -> dict:
        """Validation loss, perplexity and bits per byte on the data's fixed validation windows, per source too."""
        sums = source_losses(self.model, self.data.val_batches(), self.device, self.autocast)
        return validation_report(sums, self.data.val_sources(), self.data.val_counts())

    # ---- state -----------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """The JSON part of a checkpoint (weights, optimizer and RNG are tensors, saved beside it)."""
        return {"step": self.step_count, "tokens": self.step_count * self.tokens_per_step,
                "loader": self.batches.state_dict(), "best_val": self.best_val,
                "loss_window": [float(self.loss_sum), self.window_steps], "wall_seconds": self.wall_seconds(),
                "micro_batch": self.micro_batch, "divergence": self.divergence.state_dict(),
                "early_stop": self.early_stop.state_dict(), **self.data.describe(), **self.lineage}

    def load_state_dict(self, state: dict) -> None:
        self.step_count, self.best_val = state["step"], state["best_val"]
        self.wall_before, self._started = state.get("wall_seconds", 0.0), time.time()
        self.loss_sum.fill_(state["loss_window"][0])
        self.window_steps = state["loss_window"][1]
        self.lineage.update({k: state[k] for k in ("init_from",) if k in state})
        self.data.load_state_dict(state["loader"])
        self.divergence.load_state_dict(state.get("divergence", {}))  # absent in checkpoints of older rain
        self.early_stop.load_state_dict(state.get("early_stop", {}))

    def wall_seconds(self) -> float:
        return self.wall_before + time.time() - self._started

    def _resume(self, source: Path) -> None:
        """Continue from `source` (checkpoints/last, or the newest complete checkpoint when last is missing)."""
        if ckpt.load_config(source).model != self.cfg.model:
            raise RainError(f"{self.run_dir}: the checkpoint's model shape differs from the config; "
                            "resume with the run's own config")
        state, rng = ckpt.load_training_state(source, *sharded(checkpoint_weights(self.model, self.optimizer),
                                                               self.optimizer))  # FSDP2: each rank's shard
        restore_model(self.optimizer)  # bf16-master: the bf16 model from the fp32 masters just loaded
        self.load_state_dict(state)
        self.resumed = (source, {k: v for k, v in state.items() if k.startswith("val_")})
        torch.set_rng_state(rng["cpu"])
        if self.ranks.main:
            truncate_after(self.run_dir, self.step_count)
        where = "" if source.name == "last" else f" from checkpoints/{source.name} (checkpoints/last was incomplete)"
        self.log(f"resumed {self.run_dir}{where} at step {self.step_count}/{self.total}")

    def save(self, name: str, val: dict | None = None) -> None:
        """Save checkpoint `name`: whole (optimizer and RNG state too) when train.keep_full keeps it so (`last`
        always), else its weights only, in self.weights_dtype. Every rank calls it: FSDP2 gathers the shards."""
        full = ckpt.keeps_optimizer(name, self.cfg.train.keep_full)
        weights = checkpoint_weights(self.model, self.optimizer)  # bf16-master: the fp32 masters
        weights, optimizer = gathered(weights, self.optimizer if full else None)
        if self.ranks.main:
            ckpt.save_checkpoint(self.run_dir / "checkpoints" / name, weights, optimizer,
                                 {**self.state_dict(), **(val or {})}, self.cfg, self.data.tokenizer_path,
                                 extra_tensors={"cpu": torch.get_rng_state()},
                                 weights_dtype=None if full else self.weights_dtype)

    # ---- the run ---------------------------------------------------------------------------------

    def fit(self, stop_after: int | None = None, deadline: Deadline | None = None) -> dict:
        """Step until the end of the schedule (or stop_after, the `deadline` of --time-limit, early stopping, or
        Ctrl-C / SIGTERM, which stop at a step boundary and save `last` so the run resumes exactly), logging,
        evaluating and saving on the config's cadence, and acting on a divergence (rain.train.long_run).
        The run folder stays locked to this process until its summary is written, or fit fails."""
        with closing_all(self.lock):
            return self._fit(stop_after, deadline or Deadline())

    def _fit(self, stop_after: int | None, deadline: Deadline) -> dict:
        t, main = self.cfg.train, self.ranks.main
        keep = checkpoint_steps(self.total, t.checkpoints)
        metrics = MetricsLog(self.run_dir, self.cfg, self.run_dir.name) if main else None
        if main:
            write_json_atomic(self.run_dir / "config.json", self.cfg.to_dict())
        bar = progress(total=self.total, initial=self.step_count, desc="train", unit="step", disable=None if main else True)
        self.lines = LineLog(self.log, bar)
        self.deadline, self.epoch_windows, self.stop_reason = deadline, epoch_windows(self.data), None
        if self.step_count == 0:
            with deadline.timing("eval"):
                self._validate(metrics)
                self.hooks.run_due(self, 0, metrics, validated=True)
        self.model.train()
        self._complete_saves(keep)
        self._relog_rollbacks(metrics)
        self.meter = ThroughputMeter(self)
        with closing_all(bar, metrics), quiet_gc(), stop_signals() as stop:
            while self.step_count < self.total:
                deadline.step_began()
                must_be_last = deadline.no_room(self._evaluates(self.step_count + 1), self._evaluates(self.step_count + 2))
                stats = self.step(stop_vote=must_be_last)
                bar.update(1)
                diverged = self._check_step(stats, metrics)
                if (stats.step % t.log_every == 0 or stats.step == self.total) and self.window_steps and not stats.skipped:
                    entry = self._log_train(stats, metrics, bar)
                    diverged = diverged or self.divergence.check_loss(entry["loss"])
                deadline.step_ended()  # the step's time: its validation and saves are measured apart
                self.guard.between_steps(stats.step, metrics, stop)  # a pause while the GPU is over a limit
                if diverged:
                    self._diverged(diverged, metrics, bar)  # back to a checkpoint, and on from there; or it raises
                    continue
                self._mark_epoch(stats.step, metrics)
                self._mark_stage(stats.step, metrics)
                stopping = self._why_stop(stats, stop.requested, stop_after) if stats.step < self.total else None
                ended = self._validate_and_save(stats.step, metrics, keep, stopping is not None)
                if ended:
                    self.stop_reason = ended
                    self.log(f"stopped after step {stats.step}, {ended}; saved checkpoints/last, kept checkpoints/best")
                    break
                if stopping:
                    said, self.stop_reason = stopping
                    self.log(f"{said} after step {stats.step}; saved checkpoints/last, continue with --resume")
                    break
        if stop.requested and self.step_count < self.total:
            raise KeyboardInterrupt  # the CLI exits 130; the run is saved
        return self._finish() if main else {}

    def _complete_saves(self, keep: set[int]) -> None:
        """After a resume from a checkpoint other than `last` (a crash during this step's saves), write this step's
        missing checkpoints: its kept step_N, then `last`."""
        source, val = self.resumed
        if source is None or source.name == "last":
            return
        step_n = self.run_dir / "checkpoints" / f"step_{self.step_count:07d}"
        if self.step_count in keep and not all((step_n / f).is_file() for f in ckpt.WEIGHT_FILES):
            self.save(step_n.name, val)
        self.save("last", val)

    def _validate_and_save(self, step: int, metrics, keep: set[int], stopping: bool) -> str | None:
        """Validate on the cadence, then save this step's checkpoints: `best` (a new lowest validation loss), a kept
        `step_N`, then `last`. `last` is written last: a crash before it resumes from the previous `last` and
        saves this step's checkpoints again, so a kept step_N can never be skipped. Returns why the run ends here
        (early stopping), or None."""
        t = self.cfg.train
        evaluated = self._evaluates(step)
        with self.deadline.timing("eval", evaluated):
            val = self._validate(metrics) if evaluated else None
            self.hooks.run_due(self, step, metrics, evaluated)  # benchmarks on the live model (train.eval_tasks)
        ended = self.early_stop.validated(step, val["val_loss"]) if val is not None and step < self.total else None
        names = []
        if val is not None and val["val_loss"] < self.best_val:
            self.best_val = val["val_loss"]
            names.append("best")
        if step in keep:
            names.append(f"step_{step:07d}")
        if (evaluated and not t.save_every) or (t.save_every and step % t.save_every == 0) or step == self.total \
                or stopping or ended:
            names.append("last")
        with self.deadline.timing("save", bool(names)):
            for name in names:
                self.save(name, val)
        return ended

    def _validate(self, metrics) -> dict:
        report = self.evaluate()
        record = {"kind": "val", "step": self.step_count, "tokens": self.step_count * self.tokens_per_step,
                  **self._epoch(self.step_count), **report}
        if metrics is not None:
            metrics.log(record)
            self.lines.log(format_validation(self.step_count, report))
        self._reweight(report, metrics)
        return report

    def _reweight(self, report: dict, metrics) -> None:
        """data.reweight: hand this validation's per-source losses to the data (rain.data.reweight), which may move
        the mixture from the next step on; a `mixture` record says so. The batch read ahead is drawn again first,
        with the weights in force; under DDP every rank takes rank 0's losses, so they all draw alike."""
        reweighting = getattr(self.data, "reweighting", None)
        if reweighting is None:
            return
        self.batches.rewind()
        if self.ranks.world > 1:
            keys = sorted(k for k in report if k.startswith("val_loss/"))
            values = torch.tensor([report[k] for k in keys], dtype=torch.float64, device=self.device)
            dist.broadcast(values, 0)
            report = {**report, **dict(zip(keys, values.tolist()))}
        record = reweighting.validated(self.step_count, report)
        if record is not None and metrics is not None:
            metrics.log(record)
            self.lines.log(f"step {self.step_count}: mixture reweighted to "
                           + ", ".join(f"{n} {w:.3f}" for n, w in record["weights"].items()))

    def _log_train(self, stats: StepStats, metrics, bar) -> dict:
        window_loss = self.loss_sum.clone()
        if self.ranks.world > 1:
            dist.all_reduce(window_loss, op=dist.ReduceOp.AVG)
        tok_s = self.meter.tokens_per_second()
        entry = {"kind": "train", "step": stats.step, "tokens": stats.step * self.tokens_per_step,
                 "loss": round(float(window_loss) / self.window_steps, 5), "lr": stats.lr,
                 "grad_norm": round(float(stats.grad_norm), 4), "tokens_per_s": round(tok_s, 1),
                 "flops_per_s": round(tok_s * self.flops_per_token, 1)}
        if self.peak_flops:
            entry["mfu"] = round(tok_s * self.flops_per_token / self.peak_flops, 4)
        entry.update(router_stats(self.model))
        entry.update(self._mixture_in_force())
        entry.update(self.guard.read(stats.step))
        entry.update(self.distiller.log_entry(self.ranks.world) if self.distiller else {})
        if metrics is not None:
            metrics.log(entry)
            bar.set_postfix(loss=f"{entry['loss']:.3f}", tok_s=f"{tok_s:,.0f}")
            self.lines.train(entry, self.meter.eta(stats.step))
        self.loss_sum.zero_()
        self.window_steps = 0
        gc.collect()
        return entry

    def _finish(self) -> dict:
        summary = {**summarize(self, read_metrics(self.run_dir)), **self._long_run_summary()}
        write_json_atomic(self.run_dir / "run_summary.json", summary)
        plot_losses(self.run_dir)
        self.log(format_summary(summary))
        for line in long_run_lines(summary):
            self.log(line)
        return summary

    # ---- the long run (rain.train.long_run) ------------------------------------------------------------

    def _evaluates(self, step: int) -> bool:
        """Whether step `step` validates: every eval_every steps, at the end, and at each epoch's end in a run
        measured in epochs (train.epochs)."""
        t = self.cfg.train
        epoch_end = t.epochs > 0 and self.epoch_windows and ends_epoch(step, t.batch_size, self.epoch_windows)
        return step % t.eval_every == 0 or step == self.total or bool(epoch_end)

    def _epoch(self, step: int) -> dict:
        """{"epoch": epochs trained by step `step`}, where the data says how long an epoch is."""
        windows = getattr(self, "epoch_windows", None)
        return {"epoch": round(epochs_done(step, self.cfg.train.batch_size, windows), 4)} if windows else {}

    def _mark_epoch(self, step: int, metrics) -> None:
        """An epoch record at the step that ends an epoch (loss.png draws it as a vertical line)."""
        epoch = self.epoch_windows and ends_epoch(step, self.cfg.train.batch_size, self.epoch_windows)
        if epoch and metrics is not None:
            metrics.log({"kind": "epoch", "step": step, "tokens": step * self.tokens_per_step, "epoch": epoch})

    def _mixture_in_force(self) -> dict:
        """{"mixture": weights by source} of the data just trained on, when the data draws by source (data.stage)."""
        in_force = getattr(self.data, "mixture_in_force", None)
        return in_force(self.batches.state_dict()) if in_force else {}

    def _mark_stage(self, step: int, metrics) -> None:
        """A stage record at the step after which a data.stage begins (loss.png draws it as a vertical line)."""
        for stage in getattr(self.data, "stage_starts", list)():
            if stage["step"] == step and step > 0 and metrics is not None:
                metrics.log({"kind": "stage", "tokens": step * self.tokens_per_step, **stage})

    def _why_stop(self, stats: StepStats, signal_name: str | None, stop_after: int | None) -> tuple[str, str] | None:
        """(what the log says, what the summary says) when the run stops after this step, saving `last`."""
        if signal_name:
            return f"stopped by {signal_name}", f"stopped by {signal_name}"
        if stats.stop_voted:
            return f"stopped for the time limit ({self.deadline.seconds / 3600:g} h)", self.deadline.reason()
        if stop_after and stop_after <= stats.step:
            return "stopped", f"--stop-after {stop_after}"
        return None

    def _check_step(self, stats: StepStats, metrics) -> str | None:
        """Record a skipped step; why the run diverged (too many in a row), or None."""
        record, why = self.divergence.check_step(stats.step, stats.skipped, stats.loss, stats.norm)
        if record is not None and metrics is not None:
            metrics.log({**record, "tokens": stats.step * self.tokens_per_step})
            self.lines.log(f"step {stats.step}: skipped, the weights unchanged (non-finite "
                           f"{' and '.join(record['non_finite'])}; {record['in_a_row']} in a row)")
        return why

    def _diverged(self, why: str, metrics, bar) -> None:
        """Act on a divergence after this step (train.on_divergence): roll back to the newest complete checkpoint
        and go on from there, or stop. Neither saves the diverged state."""
        source = ckpt.newest_complete(self.run_dir) if self.divergence.can_roll_back() else None
        if source is None:
            self._stop_diverged(why, metrics)
        self._roll_back(source, why, metrics)
        bar.n = self.step_count
        bar.refresh()
        self.meter = ThroughputMeter(self)

    def _roll_back(self, source: Path, why: str, metrics) -> None:
        """Reload `source` through the resume path; skip the data trained on since (what the run diverged on among
        it) and train at train.rollback_lr_factor x the learning rate for train.rollback_lr_steps steps. `last` is
        saved at once, before the record is logged: a kill from then on resumes after the rollback, and one before
        it repeats the same steps, diverges the same way and rolls back again."""
        t, diverged_at = self.cfg.train, self.step_count
        data_at, rollbacks, wall = copy.deepcopy(self.batches.state_dict()), self.divergence.rollbacks, self.wall_seconds()
        self._resume(source)  # weights, optimizer, RNG and loop state; metrics.jsonl cut back to its step
        data_from = copy.deepcopy(self.data.state_dict())
        self.data.load_state_dict(data_at)
        self.batches = Prefetcher(self.data, self.device, self.batches.ahead)
        self.wall_before, self._started = wall, time.time()  # the time spent on the abandoned steps counts
        skipped = ({"from": data_from["consumed"], "to": data_at["consumed"]}
                   if "consumed" in data_from and "consumed" in data_at else {"from": data_from, "to": data_at})
        record = {"kind": "guard", "event": "rollback", "step": self.step_count,
                  "tokens": self.step_count * self.tokens_per_step, "from_step": diverged_at, "checkpoint": source.name,
                  "reason": why, "skipped_windows": skipped, "lr_factor": t.rollback_lr_factor,
                  "lr_steps": t.rollback_lr_steps}
        self.divergence.rolled_back(rollbacks, record)
        self.save("last", self.resumed[1])
        if metrics is not None:
            metrics.log(record)
        self.lines.log(f"step {diverged_at}: training diverged ({why}); rolled back to step {self.step_count} "
                       f"(checkpoints/{source.name}), past the data trained on since, at {t.rollback_lr_factor:g} x the "
                       f"learning rate for {t.rollback_lr_steps} steps")

    def _stop_diverged(self, why: str, metrics) -> None:
        """Stop a diverged run: a guard record, the run summary, and one line (RainError); nothing is saved."""
        t, step = self.cfg.train, self.step_count
        how = ("train.on_divergence = stop" if t.on_divergence == "stop" else
               f"train.max_rollbacks ({t.max_rollbacks}) reached" if self.divergence.rollbacks else
               "no complete checkpoint to roll back to yet")
        if metrics is not None:
            metrics.log({"kind": "guard", "event": "stop", "step": step, "tokens": step * self.tokens_per_step,
                         "reason": why})
        self.stop_reason = f"diverged at step {step}: {why} ({how})"
        if self.ranks.main:
            self._finish()
        last = ckpt.newest_complete(self.run_dir)
        where = (f"the newest checkpoint is checkpoints/{last.name}: --resume goes on from it (a lower train.lr can "
                 "be given with --set)" if last else "no checkpoint was saved yet")
        raise RainError(f"training diverged at step {step}: {why}; stopped ({how}) without saving; {where}")

    def _relog_rollbacks(self, metrics) -> None:
        """Log the rollbacks this run's state holds but metrics.jsonl lacks: a kill between a rollback's save of
        `last` and the logging of its record."""
        if metrics is None or not self.divergence.rollbacks:
            return
        logged = sum(r.get("kind") == "guard" and r.get("event") == "rollback" for r in read_metrics(self.run_dir))
        for record in self.divergence.rollbacks[logged:]:
            metrics.log(record)

    def _long_run_summary(self) -> dict:
        """What the run summary says of its stop, the divergence guard and its epochs."""
        epochs = self._epoch(self.step_count).get("epoch")
        return {"stop_reason": self.stop_reason, **self.divergence.summary(),
                **({"epochs": epochs} if epochs is not None else {})}


def train(cfg: RunConfig, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
          init_from: str | Path | None = None, stop_after: int | None = None, time_limit: float | None = None,
          data: TrainData | None = None, log=print) -> dict:
    """Train per cfg into run_dir and return the run summary. stop_after: save and return after that step (a
    pre-emptible slot); time_limit: seconds from now, by which the run has saved `last` and returned;
    `resume=True` continues from checkpoints/last exactly where the interrupted run was."""
    deadline = Deadline(time_limit)  # counted from here: building the run (compiling, fitting a micro-batch) takes time too
    trainer = Trainer(cfg, run_dir, resume=resume, overwrite=overwrite, init_from=init_from, data=data, log=log)
    return trainer.fit(stop_after, deadline)


# ---- around the loop ---------------------------------------------------------------------------------


class ThroughputMeter:
    """Tokens per second over the current log window, and the time left at the whole run's pace so far."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.first_step, self.first_time = trainer.step_count, time.time()
        self.window_step, self.window_time = trainer.step_count, time.time()

    def tokens_per_second(self) -> float:
        if self.trainer.device.type == "cuda":
            torch.cuda.synchronize(self.trainer.device)
        now, step = time.time(), self.trainer.step_count
        rate = (step - self.window_step) * self.trainer.tokens_per_step / max(now - self.window_time, 1e-9)
        self.window_step, self.window_time = step, now
        return rate

    def eta(self, step: int) -> float:
        done = step - self.first_step
        return (time.time() - self.first_time) / done * (self.trainer.total - step) if done else math.nan


class LineLog:
    """Plain log lines: validations always, and training lines when no progress bar is drawn (a log file,
    nohup, CI), one per log interval as nanoGPT prints them."""

    def __init__(self, log, bar):
        self._log, self.bar = log, bar
        self.print_train = bar.disable or not sys.stdout.isatty()
        self.eta_said = False

    def log(self, text: str) -> None:
        if self._log is print and not self.bar.disable:
            self.bar.write(text)  # above the bar, not through it
        else:
            self._log(text)

    def train(self, entry: dict, eta: float) -> None:
        if not self.print_train:  # the bar shows the pace; say once, early, how long the run will take
            if not self.eta_said:
                self.eta_said = True
                self.log(f"step {entry['step']}: {entry['tokens_per_s']:,.0f} tokens/s, about {format_duration(eta)} "
                         "left at this pace")
            return
        mfu = f" | mfu {entry['mfu']:.1%}" if "mfu" in entry else ""
        self._log(f"step {entry['step']} | loss {entry['loss']:.4f} | lr {entry['lr']:.2e} | grad norm "
                  f"{entry['grad_norm']:.3f} | {entry['tokens_per_s']:,.0f} tok/s{mfu} | eta {format_duration(eta)}")


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


@contextmanager
def closing_all(*things):
    """Close each (None skipped) when the block ends, however it ends."""
    try:
        yield
    finally:
        for thing in things:
            if thing is not None:
                thing.close()


@contextmanager
def quiet_gc():
    """Python's cyclic GC stays out of the steps: what exists now is frozen, the rest collected at log intervals."""
    gc.collect()
    gc.freeze()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()
        if was_enabled:
            gc.enable()


class _StopRequest:
    requested: str | None = None


@contextmanager
def stop_signals():
    """Ctrl-C and SIGTERM ask the loop to stop at the next step boundary (a second Ctrl-C stops at once).
    A signal in the middle of a step would save a half-taken step, which no resume can reproduce."""
    stop = _StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def ask(signum, frame):
        if stop.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.requested = signal.Signals(signum).name
        print(f"\n{stop.requested}: stopping after this step (Ctrl-C again to stop at once)", file=sys.stderr)

    previous = {s: signal.signal(s, ask) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def summarize(trainer: Trainer, records: list[dict]) -> dict:
    vals = [r for r in records if r.get("kind") == "val"]
    trains = [r for r in records if r.get("kind") == "train"]
    cfg = trainer.cfg
    return {
        "run_dir": str(trainer.run_dir), "config": cfg.to_dict(), "parameters": trainer.n_params,
        "active_parameters": active_params(cfg.model, trainer.n_params), "flops_per_token": trainer.flops_per_token,
        "steps": trainer.step_count, "total_steps": trainer.total, "micro_batch": trainer.micro_batch,
        "tokens_seen": trainer.step_count * trainer.tokens_per_step, "wall_seconds": round(trainer.wall_seconds(), 2),
        "first_val_loss": vals[0]["val_loss"] if vals and vals[0]["step"] == 0 else None,
        "final_val_loss": vals[-1]["val_loss"] if vals else None,
        "final_val_bpb": vals[-1].get("val_bpb") if vals else None,
        "best_val_loss": trainer.best_val if math.isfinite(trainer.best_val) else None,
        "tokens_per_s": round(sum(r["tokens_per_s"] for r in trains) / len(trains), 1) if trains else None,
        "checkpoint_bytes": ckpt.folder_bytes(trainer.run_dir / "checkpoints"),  # what the checkpoints take on disk
        "checkpoint_bytes_projected": trainer.disk_plan.total,  # what the run's plan said they would, at its end
        **trainer.data.describe(), **trainer.lineage,
        **source_windows(trainer.batches.state_dict()),
        "bill": compute_bill(trainer.flops_per_token, trainer.step_count * trainer.tokens_per_step,
                             trainer.wall_seconds(), trainer.ranks.world, records, gpu_of(trainer.device),
                             cfg.train.gpu_price_per_hour),
    }


def source_windows(loader_state: dict) -> dict:
    """{"source_windows": windows each source has given} when the data draws by source (realised, not planned)."""
    return {"source_windows": loader_state["source_windows"]} if "source_windows" in loader_state else {}


def long_run_lines(s: dict) -> list[str]:
    """The summary's lines on why the run stopped early and what the divergence guard did."""
    lines = [f"  stopped before the end of the schedule: {s['stop_reason']}"] if s.get("stop_reason") else []
    if s.get("skipped_steps") or s.get("rollbacks"):
        rolled = ", ".join(f"from step {r['from_step']} to {r['step']}" for r in s["rollbacks"]) or "none"
        lines.append(f"  divergence guard: {s['skipped_steps']} steps skipped (non-finite loss or gradient norm); "
                     f"rollbacks: {rolled}")
    return lines


def format_summary(s: dict) -> str:
    active = s.get("active_parameters", s["parameters"])
    per_token = f" ({active:,} per token)" if active != s["parameters"] else ""
    lines = [f"run {s['run_dir']}: {s['parameters']:,} parameters{per_token}, {s['steps']}/{s['total_steps']} steps, "
             f"{s['tokens_seen']:,} tokens in {s['wall_seconds']:.0f} s"]
    if s.get("tokens_per_s"):
        lines.append(f"  throughput {s['tokens_per_s']:,.0f} tokens/s")
    if s.get("final_val_loss") is not None:
        first = f"{s['first_val_loss']:.4f} -> " if s.get("first_val_loss") is not None else ""
        best = f" (best {s['best_val_loss']:.4f})" if s.get("best_val_loss") is not None else ""
        lines.append(f"  validation loss {first}{s['final_val_loss']:.4f}{best}")
    if s.get("source_windows"):
        n = max(1, sum(s["source_windows"].values()))
        drawn = ", ".join(f"{k} {v / n:.1%}" for k, v in s["source_windows"].items())
        lines.append(f"  windows by source: {drawn} (of {n:,})")
    if s.get("checkpoint_bytes") is not None:
        lines.append(f"  checkpoints {ckpt.format_size(s['checkpoint_bytes'])} on disk ({s['checkpoint_bytes']:,} bytes)")
    if s.get("bill"):
        lines.append(f"  compute bill {format_bill(s['bill'])}")
    return "\n".join(lines)
