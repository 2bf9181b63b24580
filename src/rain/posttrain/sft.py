"""Supervised fine-tuning: conversations packed into context-length windows, loss only on what the assistant
says, trained by the pretraining loop from a base checkpoint's weights.

A window holds several whole conversations; each one's tokens attend only within it (doc_ids) and its RoPE
positions restart at 0, so packing changes nothing but speed. Targets are -100 on system/user turns and role
headers (unless mask_prompt is off), and between conversations. An epoch is a shuffle of the training
conversations by (seed, epoch) packed greedily in that order; the data's whole state is one counter."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
from pathlib import Path
from typing import Iterator

import torch

from rain import checkpoint as ckpt
from rain.config import RunConfig, load_config, overridden_keys, validate
from rain.data.tokenizer import PAD, Tokenizer
from rain.errors import RainError
from rain.posttrain.chat import CHAT_TEMPLATE, Message
from rain.posttrain.chat_data import ChatData, read_chat_data, tokenize_conversations
from rain.posttrain.safety import is_builtin, safety_chat_data

Example = tuple[list[int], list[int]]  # token ids, loss mask


def conversation_hash(messages: list[Message]) -> float:
    """A stable number in [0, 1) from the conversation's text (the held-out split does not depend on order)."""
    digest = hashlib.sha256(json.dumps(messages, sort_keys=True, ensure_ascii=False).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_conversations(conversations: list[list[Message]], val_fraction: float):
    """(train, val) by hash; at least one conversation is held out when there are two or more."""
    keys = [conversation_hash(c) for c in conversations]
    val = [c for c, k in zip(conversations, keys) if k < val_fraction]
    train = [c for c, k in zip(conversations, keys) if k >= val_fraction]
    if not val and len(train) > 1:
        lowest = min(range(len(conversations)), key=keys.__getitem__)
        val, train = [conversations[lowest]], [c for i, c in enumerate(conversations) if i != lowest]
    return train, val


def pack(lengths: list[int], order: list[int], context: int) -> list[list[int]]:
    """Greedily fill windows of `context` positions with examples taking length - 1 positions each
    (inputs ids[:-1], targets ids[1:]), in the given order. Returns example indices per window."""
    windows, current, used = [], [], 0
    for i in order:
        need = lengths[i] - 1
        if current and used + need > context:
            windows.append(current)
            current, used = [], 0
        current.append(i)
        used += need
    if current:
        windows.append(current)
    return windows


def read_conversations(paths: list[str | Path], fmt: str = "auto") -> ChatData:
    data = ChatData()
    for path in paths:
        part = safety_chat_data() if is_builtin(path) else read_chat_data(path, fmt)
        data.conversations += part.conversations
        data.skipped.update(part.skipped)
    return data


class SFTData:
    """The TrainData of SFT (see rain.train.batches): packed windows of tokenised conversations."""

    def __init__(self, tokenizer_path: str | Path, paths: list[str | Path], *, context: int, micro_batch: int,
                 seed: int = 0, eval_batches: int = 20, val_fraction: float = 0.05, overflow: str = "drop",
                 mask_prompt: bool = True, fmt: str = "auto", rank: int = 0, world: int = 1):
        self._settings(tokenizer_path, context, micro_batch, seed, eval_batches, val_fraction, mask_prompt, rank, world)

        chats = read_conversations(paths, fmt)
        skipped = ", ".join(f"{reason} {n}" for reason, n in chats.skipped.most_common())
        if not chats.conversations:
            raise RainError(f"no usable conversation in {', '.join(map(str, paths))}"
                            + (f" (skipped: {skipped})" if skipped else ""))
        train_convs, val_convs = split_conversations(chats.conversations, val_fraction)
        train = tokenize_conversations(self.tokenizer, train_convs, context + 1, overflow)
        val = tokenize_conversations(self.tokenizer, val_convs, context + 1, overflow)
        self.train = list(zip(train.ids, train.loss_masks))
        self.val = list(zip(val.ids, val.loss_masks))
        if not self.train or not self.val:
            raise RainError(f"after dropping conversations longer than the context ({context} tokens) no "
                            f"{'training' if not self.train else 'held-out'} conversation is left: "
                            "use --overflow truncate, shorter data or a model with a longer context")
        self.stats = {
            "data": [str(p) for p in paths], "format": fmt, "overflow": overflow, "mask_prompt": mask_prompt,
            "conversations": {"train": len(self.train), "val": len(self.val)},
            "skipped": dict(chats.skipped), "dropped_too_long": train.dropped + val.dropped,
            "truncated": train.truncated + val.truncated,
            "tokens": {"train": sum(len(ids) for ids, _ in self.train), "val": sum(len(ids) for ids, _ in self.val)},
            "trained_tokens_per_epoch": sum(sum(m[1:]) if mask_prompt else len(m) - 1 for _, m in self.train),
        }
        self.fingerprint = hashlib.sha256(json.dumps([self.train, self.val, context, seed, mask_prompt]).encode()).hexdigest()
        self.val_windows = pack([len(ids) for ids, _ in self.val], list(range(len(self.val))), context)
        self.consumed = 0  # windows this rank has taken
        self._epoch_sizes: list[int] = []
        self._epoch, self._windows = -1, []

    def _settings(self, tokenizer_path, context, micro_batch, seed, eval_batches, val_fraction, mask_prompt, rank,
                  world) -> None:
        """What SFT's and preference tuning's data share: the tokenizer and its pad id, the window settings."""
        if not 0 < val_fraction < 0.5:
            raise RainError(f"the held-out fraction must be in (0, 0.5), got {val_fraction}")
        self.tokenizer_path = Path(tokenizer_path)
        self.tokenizer = Tokenizer.from_file(self.tokenizer_path)
        self.context, self.micro_batch, self.seed, self.eval_batches = context, micro_batch, seed, eval_batches
        self.mask_prompt, self.rank, self.world = mask_prompt, rank, world
        pad = self.tokenizer.token_id(PAD)
        self.pad_id = pad if pad is not None else self.tokenizer.eot_id

    # --- the training order ---

    def _pack_epoch(self, epoch: int) -> list[list[int]]:
        order = list(range(len(self.train)))
        random.Random(f"{self.seed}-{epoch}").shuffle(order)
        return pack([len(ids) for ids, _ in self.train], order, self.context)

    def windows_per_epoch(self, epoch: int = 0) -> int:
        while len(self._epoch_sizes) <= epoch:
            self._epoch_sizes.append(len(self._pack_epoch(len(self._epoch_sizes))))
        return self._epoch_sizes[epoch]

    def _window(self, index: int) -> list[int]:
        epoch = 0
        while index >= self.windows_per_epoch(epoch):
            index -= self.windows_per_epoch(epoch)
            epoch += 1
        if epoch != self._epoch:
            self._epoch, self._windows = epoch, self._pack_epoch(epoch)
        return self._windows[index]

    # --- tensors ---

    def _row(self, examples: list[Example]) -> tuple[list[int], list[int], list[int]]:
        x, y, doc = [], [], []
        for d, (ids, mask) in enumerate(examples):
            x += ids[:-1]
            y += [t if (m or not self.mask_prompt) else -100 for t, m in zip(ids[1:], mask[1:])]
            doc += [d] * (len(ids) - 1)
        pad = self.context - len(x)
        return x + [self.pad_id] * pad, y + [-100] * pad, doc + [len(examples)] * pad

    def _batch(self, windows: list[list[Example]]):
        rows = [self._row(w) for w in windows]
        x, y, doc = (torch.tensor([r[i] for r in rows], dtype=torch.long) for i in range(3))
        return x, y, doc

    def next_batch(self):
        windows = [self._window((self.consumed + i) * self.world + self.rank) for i in range(self.micro_batch)]
        self.consumed += self.micro_batch
        return self._batch([[self.train[i] for i in w] for w in windows])

    def val_batches(self) -> Iterator:
        windows = self.val_windows[: self.eval_batches * self.micro_batch]
        for start in range(0, len(windows), self.micro_batch):
            yield *self._batch([[self.val[i] for i in w] for w in windows[start : start + self.micro_batch]]), None

    # --- the TrainData protocol's records ---

    def state_dict(self) -> dict:
        return {"consumed": self.consumed, "world": self.world, "fingerprint": self.fingerprint}

    def load_state_dict(self, state: dict) -> None:
        if state.get("fingerprint") != self.fingerprint:
            raise RainError("cannot resume: the SFT data or its settings differ from the interrupted run's "
                            "(resume with the same --data, --overflow, --val-fraction and masking)")
        self.consumed = int(state["consumed"]) * int(state.get("world", self.world)) // self.world

    def describe(self) -> dict:
        return {"sft": self.stats, "chat_template": CHAT_TEMPLATE}

    def val_sources(self) -> list[str]:
        return []

    def val_counts(self) -> dict:
        return {}  # bits per byte would need the bytes of only the assistant tokens


def sft_config(base: RunConfig, *, lr: float | None, batch: int) -> RunConfig:
    """The base run's config with SFT hyper-parameters: a tenth of the base's peak learning rate, a short
    warm-up, cosine decay, no weight decay, only best/last checkpoints. max_steps is set from the data later."""
    cfg = copy.deepcopy(base)
    t = cfg.train
    micro = max(d for d in range(1, batch + 1) if batch % d == 0 and d <= t.micro_batch)
    t.lr = lr if lr is not None else t.lr / 10
    t.min_lr, t.warmup, t.schedule, t.weight_decay = t.lr / 10, 0.03, "cosine", 0.0
    t.batch_size, t.micro_batch, t.total_tokens, t.max_steps = batch, micro, 0, 1
    t.checkpoints, t.save_every = 0, 0
    t.teacher = ""  # the base run's teacher is not the fine-tune's: rain sft --teacher chooses one
    return cfg


def run_sft(base: str | Path, data: list[str | Path], out: str | Path, *, fmt: str = "auto", epochs: float = 2.0,
            steps: int | None = None, lr: float | None = None, batch: int = 16, overflow: str = "drop",
            mask_prompt: bool = True, val_fraction: float = 0.05, overrides: list[str] = (), resume: bool = False,
            overwrite: bool = False, stop_after: int | None = None, time_limit: float | None = None,
            log=print) -> dict:
    """Fine-tune the checkpoint `base` on chat data into the run folder `out` (see `rain sft --help`);
    time_limit: seconds, as rain train's."""
    from rain.train.trainer import train

    checkpoint = ckpt.find(base)  # refuses a Hugging Face folder: SFT starts from a rain run
    folder = checkpoint.folder
    run_config = Path(out) / "config.json"
    if resume and run_config.is_file():
        source = run_config  # the interrupted run's own config, like `rain train --resume`
    else:
        source = sft_config(checkpoint.config, lr=lr, batch=batch)
    overridden = overridden_keys(overrides)  # the user's choices win over the SFT defaults set below

    def min_lr_follows_lr(cfg: RunConfig) -> None:
        if not resume and "train.min_lr" not in overridden:
            cfg.train.min_lr = cfg.train.lr / 10

    cfg = load_config(source, overrides, derive=min_lr_follows_lr)
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    sft_data = SFTData(folder / "tokenizer.json", data, context=cfg.model.context, micro_batch=cfg.train.micro_batch,
                       seed=cfg.train.seed, eval_batches=cfg.train.eval_batches, val_fraction=val_fraction,
                       overflow=overflow, mask_prompt=mask_prompt, fmt=fmt, rank=rank, world=world)
    if sft_data.tokenizer.vocab_size > cfg.model.vocab_size:
        raise RainError(f"{folder}/tokenizer.json has more tokens than the model's vocab_size")
    if not resume:
        if steps is None and "train.max_steps" not in overridden:
            steps = math.ceil(epochs * sft_data.windows_per_epoch() / cfg.train.batch_size)
        cfg.train.max_steps = steps or cfg.train.max_steps
        total = cfg.train.max_steps
        if "train.eval_every" not in overridden:
            cfg.train.eval_every = max(1, total // 5)
        if "train.log_every" not in overridden:
            cfg.train.log_every = max(1, min(10, total // 10))
    validate(cfg)
    s = sft_data.stats
    log(f"SFT data: {s['conversations']['train']:,} training and {s['conversations']['val']:,} held-out conversations, "
        f"{sft_data.windows_per_epoch():,} windows of {cfg.model.context} tokens per epoch, "
        f"{s['trained_tokens_per_epoch']:,} trained tokens per epoch")
    if s["skipped"] or s["dropped_too_long"] or s["truncated"]:
        log(f"  skipped {sum(s['skipped'].values()):,} ({', '.join(f'{k} {v}' for k, v in s['skipped'].items()) or '-'}); "
            f"longer than the context: dropped {s['dropped_too_long']:,}, truncated {s['truncated']:,}")
    return train(cfg, out, resume=resume, overwrite=overwrite, init_from=folder.resolve(), stop_after=stop_after,
                 time_limit=time_limit, data=sft_data, log=log)
