"""The training loop: wires data, model, optimizer, schedule, checkpoints and run records together.
One process, or several under `torchrun` (DDP: each rank reads its own windows, rank 0 writes)."""

from __future__ import annotations

import copy
import gc
import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from rain.config import RunConfig
from rain.errors import RainError
from rain.eval.loss import loss_report, validation_loss
from rain.model.moe import router_stats
from rain.model.transformer import Transformer
from rain.progress import progress
from rain.train import checkpoint as ckpt
from rain.train.data import PretrainData, TrainData
from rain.train.metrics import (MetricsLog, active_params, flops_per_token, peak_flops, plot_losses, read_metrics,
                                truncate_after)
from rain.train.optim import build_optimizer, set_lr

RUN_FILES = ("config.json", "metrics.jsonl", "run_summary.json", "loss.png")


@dataclass
class Ranks:
    rank: int = 0
    world: int = 1
    local: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device_type: str) -> "Ranks":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        return cls(dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RainError(f"train.device = {name!r} but no CUDA GPU is visible; use train.device=cpu")
    return torch.device(name)


def autocast_for(device: torch.device, dtype: str):
    if dtype == "bf16" or (dtype == "auto" and device.type == "cuda"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


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


def checkpoint_steps(total: int, n: int) -> set[int]:
    """n evenly spaced steps in (0, total]."""
    return {max(1, round(total * k / n)) for k in range(1, n + 1)} if n else set()


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    has_run = (run_dir / "config.json").exists() or (run_dir / "checkpoints").exists()
    if resume:
        if not ckpt.resolve(run_dir / "checkpoints" / "last").exists():
            raise RainError(f"{run_dir}: nothing to resume (no checkpoints/last); start it without --resume")
        return
    if has_run and not overwrite:
        raise RainError(f"{run_dir}: already holds a run; pass --resume to continue it or --overwrite to replace it")
    if has_run:
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
        for name in ("checkpoints", "tensorboard", "eval"):
            shutil.rmtree(run_dir / name, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)


def build_model(cfg: RunConfig, device: torch.device, init_from: str | Path | None,
                tokenizer_path: Path | None = None) -> Transformer:
    """A fresh model, or one holding the weights of init_from: a rain checkpoint/run folder or a Hugging Face
    Qwen3/Llama folder, whose shape must match cfg.model and whose tokenizer.json must match tokenizer_path."""
    from tokenizers import Tokenizer as HFTokenizer

    from rain.export.hf import load_hf_checkpoint

    # What the weights' meaning depends on (context and init_std may differ from the parent's).
    shape_fields = ("vocab_size", "n_layer", "d_model", "n_head", "n_kv_head", "dim_head", "d_ff", "rope_theta",
                    "qk_norm", "tie_embeddings", "norm_eps")
    model = Transformer(cfg.model)
    if init_from is None:
        return model.to(device)
    folder = Path(init_from)
    try:
        config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    except json.JSONDecodeError as exc:
        raise RainError(f"{folder}/config.json: not valid JSON ({exc})") from None
    if isinstance(config, dict) and {"model_type", "architectures"} & set(config):  # a Hugging Face folder
        parent_model, state = load_hf_checkpoint(folder)
    else:
        folder = ckpt.check_complete(ckpt.find_checkpoint(folder), ckpt.WEIGHT_FILES)
        parent_model, state = ckpt.load_config(folder).model, ckpt.load_file(str(folder / "model.safetensors"))
    diff = [(k, getattr(parent_model, k), getattr(cfg.model, k)) for k in shape_fields
            if getattr(parent_model, k) != getattr(cfg.model, k)]
    if diff:
        sets = " ".join(f"--set model.{'head_dim' if k == 'dim_head' else k}={str(a).lower() if isinstance(a, bool) else a}"
                        for k, a, _ in diff)
        raise RainError(f"{folder}: its model shape differs from this run's [model] "
                        f"({', '.join(f'{k} {a} vs {b}' for k, a, b in diff)}); use the same shape: {sets}")
    if tokenizer_path is not None:
        parent_tok = folder / "tokenizer.json"
        if not parent_tok.is_file():
            raise RainError(f"{folder}: no tokenizer.json, so its tokenizer cannot be checked against {tokenizer_path}")
        same = parent_tok.read_bytes() == Path(tokenizer_path).read_bytes() or \
            HFTokenizer.from_file(str(parent_tok)).to_str() == HFTokenizer.from_file(str(tokenizer_path)).to_str()
        if not same:
            raise RainError(f"{tokenizer_path} differs from {parent_tok}: the new data must be tokenised with the parent's "
                            f"tokenizer (rain prepare --set data.tokenizer={parent_tok})")
    ckpt.load_model_state(model, state, str(folder))
    return model.to(device)


def train(cfg: RunConfig, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
          init_from: str | Path | None = None, stop_after: int | None = None, data: TrainData | None = None,
          log=print) -> dict:
    """Train per cfg into run_dir. stop_after: save and return after that step (a pre-emptible slot);
    `resume=True` continues from checkpoints/last exactly where the interrupted run was."""
    run_dir = Path(run_dir)
    t, m = cfg.train, cfg.model
    device = pick_device(t.device)
    ranks = Ranks.from_env(device.type)
    if ranks.world > 1:
        device = pick_device(t.device, ranks.local)
        if device.type == "cuda":
            torch.cuda.set_device(device)
    if t.auto_micro_batch:
        from rain.train.bench import fit_micro_batch

        t.micro_batch = fit_micro_batch(cfg, device, ranks.world, log)
    if t.batch_size % (t.micro_batch * ranks.world):
        raise RainError(f"train.batch_size ({t.batch_size}) must be a multiple of micro_batch x processes "
                        f"({t.micro_batch} x {ranks.world})")
    grad_accum = t.batch_size // (t.micro_batch * ranks.world)
    data = data or PretrainData(cfg, ranks.rank, ranks.world)
    if ranks.main:
        prepare_run_dir(run_dir, resume, overwrite)
    if ranks.world > 1:
        dist.barrier()

    torch.manual_seed(t.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    autocast = autocast_for(device, t.dtype)
    # On resume the weights come from the run's own checkpoint; the parent may be gone by then.
    model = build_model(cfg, device, None if resume else init_from, data.tokenizer_path)
    model.checkpoint_layers = t.checkpoint_layers
    n_params = model.num_params()
    fpt = flops_per_token(m, n_params)
    peak = peak_flops(device)
    step_model = torch.compile(model) if t.compile else model
    if ranks.world > 1:
        step_model = DistributedDataParallel(step_model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = build_optimizer(model, t, device.type)
    total = cfg.total_steps()
    keep_steps = checkpoint_steps(total, t.checkpoints)
    tokens_per_step = t.batch_size * m.context
    lineage = {"init_from": str(Path(init_from).resolve())} if init_from else {}
    lineage["hardware"] = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    if ranks.world > 1:
        lineage["hardware"] = f"{ranks.world} x {lineage['hardware']}"

    step, best_val, wall_before, loss_window = 0, math.inf, 0.0, [0.0, 0]
    if resume:
        last = run_dir / "checkpoints" / "last"
        if ckpt.load_config(last).model != m:
            raise RainError(f"{run_dir}: the checkpoint's model shape differs from the config; resume with the run's own config")
        state, rng = ckpt.load_training_state(last, model, optimizer)
        step, best_val, wall_before = state["step"], state["best_val"], state.get("wall_seconds", 0.0)
        loss_window = state["loss_window"]
        lineage.update({k: state[k] for k in ("init_from",) if k in state})
        data.load_state_dict(state["loader"])
        torch.set_rng_state(rng["cpu"])
        if ranks.main:
            truncate_after(run_dir, step)
        log(f"resumed {run_dir} at step {step}/{total}")
    metrics = None
    if ranks.main:
        cfg.save(run_dir / "config.json")
        metrics = MetricsLog(run_dir, cfg, run_dir.name)
    val_counts = data.val_bytes_per_token() or (None, None)

    def evaluate() -> dict:
        return loss_report(validation_loss(model, data.val_batches(), device, autocast), *val_counts)

    def record(entry: dict) -> None:
        if metrics is not None:
            metrics.log(entry)

    # The running loss sum of the current log window (restored on resume so logged means match exactly).
    loss_acc = torch.tensor(loss_window[0], device=device)
    window_steps = loss_window[1]

    batches = Prefetcher(data, device)

    def save(name: str, val: dict | None = None) -> None:
        if not ranks.main:
            return
        state = {"step": step, "tokens": step * tokens_per_step, "loader": batches.state_dict(), "best_val": best_val,
                 "loss_window": [float(loss_acc), window_steps], "wall_seconds": wall_before + time.time() - t_start,
                 **data.describe(), **lineage, **(val or {})}
        ckpt.save_checkpoint(run_dir / "checkpoints" / name, model, optimizer, state, cfg, data.tokenizer_path,
                             extra_tensors={"cpu": torch.get_rng_state()})

    t_start = time.time()
    if step == 0:
        first = evaluate()
        record({"kind": "val", "step": 0, "tokens": 0, **first})
        log(f"step 0: validation loss {first['val_loss']:.4f}")
    model.train()
    bar = progress(total=total, initial=step, desc="train", unit="step", disable=None if ranks.main else True)
    window_start, window_tokens = time.time(), 0
    last_val = None
    # Python's cyclic GC stays out of the steps: what exists now is frozen, the rest collected at log intervals.
    gc.collect()
    gc.freeze()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        while step < total:
            lr = set_lr(optimizer, step, total, t)
            for micro in range(grad_accum):
                x, y, doc = batches.next_batch()
                sync = ranks.world == 1 or micro == grad_accum - 1
                with nullcontext() if sync else step_model.no_sync():
                    with autocast:
                        loss = step_model(x, y, doc_ids=doc) / grad_accum
                    loss.backward()
                loss_acc += loss.detach()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip if t.grad_clip > 0 else math.inf)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            window_steps += 1
            window_tokens += tokens_per_step
            bar.update(1)
            if step % t.log_every == 0 or step == total:
                window_loss = loss_acc.clone()
                if ranks.world > 1:
                    dist.all_reduce(window_loss, op=dist.ReduceOp.AVG)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                tok_s = window_tokens / (time.time() - window_start)
                entry = {"kind": "train", "step": step, "tokens": step * tokens_per_step,
                         "loss": round(float(window_loss) / window_steps, 5), "lr": lr,
                         "grad_norm": round(float(grad_norm), 4), "tokens_per_s": round(tok_s, 1),
                         "flops_per_s": round(tok_s * fpt, 1)}
                if peak:
                    entry["mfu"] = round(tok_s * fpt / peak, 4)
                entry.update(router_stats(model))
                record(entry)
                bar.set_postfix(loss=f"{entry['loss']:.3f}", tok_s=f"{tok_s:,.0f}")
                loss_acc.zero_()
                window_steps = 0
                gc.collect()
                window_start, window_tokens = time.time(), 0
            if step % t.eval_every == 0 or step == total:
                last_val = evaluate()
                record({"kind": "val", "step": step, "tokens": step * tokens_per_step, **last_val})
                if last_val["val_loss"] < best_val:
                    best_val = last_val["val_loss"]
                    save("best", last_val)
                if not t.save_every or step == total:
                    save("last", last_val)
            if t.save_every and step % t.save_every == 0:
                save("last")
            if step in keep_steps:
                save(f"step_{step:07d}", last_val if step % t.eval_every == 0 or step == total else None)
            if stop_after is not None and step >= stop_after and step < total:
                save("last")
                log(f"stopped after step {step}; continue with --resume")
                break
    except KeyboardInterrupt:
        save("last")
        log(f"\ninterrupted at step {step}; saved checkpoints/last, continue with --resume")
        raise
    finally:
        gc.unfreeze()
        if gc_was_enabled:
            gc.enable()
        bar.close()
        if metrics is not None:
            metrics.close()
    if not ranks.main:
        return {}
    summary = summarize(run_dir, cfg, n_params, fpt, step, total, tokens_per_step, wall_before + time.time() - t_start,
                        best_val, {**data.describe(), **lineage})
    plot_losses(run_dir)
    log(format_summary(summary))
    return summary


def summarize(run_dir: Path, cfg: RunConfig, n_params: int, fpt: float, step: int, total: int, tokens_per_step: int,
              wall: float, best_val: float, extra: dict) -> dict:
    records = read_metrics(run_dir)
    vals = [r for r in records if r.get("kind") == "val"]
    trains = [r for r in records if r.get("kind") == "train"]
    summary = {
        "run_dir": str(run_dir), "config": cfg.to_dict(), "parameters": n_params,
        "active_parameters": active_params(cfg.model, n_params), "flops_per_token": fpt, "steps": step, "total_steps": total, "tokens_seen": step * tokens_per_step, "wall_seconds": round(wall, 2),
        "first_val_loss": vals[0]["val_loss"] if vals and vals[0]["step"] == 0 else None,
        "final_val_loss": vals[-1]["val_loss"] if vals else None,
        "final_val_bpb": vals[-1].get("val_bpb") if vals else None,
        "best_val_loss": best_val if math.isfinite(best_val) else None,
        "tokens_per_s": round(sum(r["tokens_per_s"] for r in trains) / len(trains), 1) if trains else None,
        **extra,
    }
    (run_dir / "run_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


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
    return "\n".join(lines)
