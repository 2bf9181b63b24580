"""Preference tuning: Direct Preference Optimisation (and its IPO and SimPO variants) on prompt / chosen / rejected
pairs, from a fine-tuned checkpoint, trained by the pretraining loop (rain.train.trainer) with its own loss.

    DPO    -logsigmoid(beta * ((pc - rc) - (pr - rr)))      p/r: policy/reference log-prob of the whole response
    IPO    ((pc - rc) - (pr - rr) - 1 / (2 beta))^2          c/r: chosen/rejected
    SimPO  -logsigmoid(beta * (pc / |c| - pr / |r|) - gamma)  no reference; |c|: response tokens

A pair's chosen and rejected conversations are packed side by side in one window (as SFT packs conversations:
document masking, positions restarting, rain.posttrain.sft), chosen as document 2k and rejected as 2k + 1; only
the final assistant turn's tokens count in the log-probs (the prompt, earlier turns and role headers are -100).
The frozen reference's log-probs are computed once before training and kept in the run folder
(reference_logps.safetensors), so a resume reads them back instead of loading the reference again;
--reference-logps online computes them at every step instead (see docs/performance.md for the cost of each)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from rain import checkpoint as ckpt
from rain.config import load_config, overridden_keys, validate
from rain.data.tokenizer import Tokenizer
from rain.errors import RainError
from rain.posttrain.chat import (
    CHAT_TEMPLATE,
    Message,
    conversation_problem,
    encode_chat,
)
from rain.posttrain.chat_data import OASST_ROLES, _field, _records
from rain.posttrain.safety import is_builtin, safety_pairs
from rain.posttrain.sft import SFTData, conversation_hash, pack, sft_config
from rain.train.trainer import Trainer, build_model

LOSSES = ("dpo", "ipo", "simpo")
DEFAULT_BETA = {"dpo": 0.1, "ipo": 0.1, "simpo": 2.0}
REFERENCE_FILE = "reference_logps.safetensors"
PAIR_FORMATS = ("pairs", "oasst")


# ---- reading pairs -----------------------------------------------------------------------------------


@dataclass
class Pair:
    prompt: list[Message]  # the conversation before the compared reply
    chosen: str
    rejected: str


@dataclass
class PairData:
    pairs: list[Pair] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # reason -> pairs

    def add(self, prompt: list[Message], chosen: str, rejected: str) -> None:
        if chosen.strip() == rejected.strip():
            self.skipped["chosen_equals_rejected"] += 1
            return
        for reply in (chosen, rejected):
            problem = conversation_problem(prompt + [{"role": "assistant", "content": reply}])
            if problem:
                self.skipped[problem] += 1
                return
        self.pairs.append(Pair(prompt, chosen, rejected))


def _messages(where: str, value: Any, role: str) -> list[Message]:
    """A string (one `role` turn) or a list of {"role", "content"} as messages."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if not isinstance(value, list):
        raise RainError(f"preference data {where}: expected a string or a list of messages, got {type(value).__name__}")
    if value and not isinstance(value[0], dict):
        raise RainError(f"preference data {where}: expected messages ({{\"role\", \"content\"}}), got {type(value[0]).__name__}")
    return [{"role": _field(f"{where} message {i}", m, "role", str), "content": _field(f"{where} message {i}", m, "content", str)}
            for i, m in enumerate(value)]


def read_preference_pairs(path: str | Path) -> PairData:
    """jsonl/JSON records {"prompt", "chosen", "rejected"}: the prompt a string (one user turn), a message list or
    absent; chosen/rejected a string (the assistant's reply) or a message list ending with it, which may repeat
    the prompt's turns (UltraFeedback's layout) or hold the whole conversation without a prompt field."""
    data = PairData()
    for where, record in _records(Path(path)):
        _field(where, record, "chosen", object), _field(where, record, "rejected", object)  # both present
        prompt = _messages(f"{where} prompt", record.get("prompt", []), "user")
        chosen = _messages(f"{where} chosen", record["chosen"], "assistant")
        rejected = _messages(f"{where} rejected", record["rejected"], "assistant")
        convs = [c if prompt and c[: len(prompt)] == prompt else prompt + c for c in (chosen, rejected)]
        if not all(convs) or any(c[-1]["role"] != "assistant" for c in convs):
            data.skipped["no_assistant_turn"] += 1
        elif convs[0][:-1] != convs[1][:-1]:
            data.skipped["prompts_differ"] += 1
        else:
            data.add(convs[0][:-1], convs[0][-1]["content"], convs[1][-1]["content"])
    return data


def read_oasst_pairs(path: str | Path) -> PairData:
    """OpenAssistant trees: at every prompter message with two or more ranked assistant replies (rank 0 best),
    the best reply is chosen against each lower-ranked one, the conversation so far as the prompt. Deleted
    messages prune their subtree; unranked replies are not compared."""
    data = PairData()

    def walk(node: Any, path: list[Message], where: str) -> None:
        if node.get("deleted"):
            return
        text, role = _field(where, node, "text", str), _field(where, node, "role", str)
        if role not in OASST_ROLES:
            raise RainError(f"preference data {where}: unknown role {role!r} (expected prompter or assistant)")
        path = path + [{"role": OASST_ROLES[role], "content": text}]
        replies = [r for r in _field(where, node, "replies", list, default=[]) if isinstance(r, dict)]
        ranked = sorted((r for r in replies if r.get("role") == "assistant" and not r.get("deleted")
                         and isinstance(r.get("rank"), int)), key=lambda r: r["rank"])
        if role == "prompter" and len(ranked) >= 2:
            best = _field(where, ranked[0], "text", str)
            for worse in ranked[1:]:
                data.add(path, best, _field(where, worse, "text", str))
        for reply in replies:
            walk(reply, path, where)

    for where, record in _records(Path(path)):
        walk(_field(where, record, "prompt", dict), [], where)
    return data


def detect_pair_format(path: str | Path) -> str:
    for where, record in _records(Path(path)):
        if isinstance(record, dict) and "chosen" in record:
            return "pairs"
        if isinstance(record, dict) and "prompt" in record and "message_tree_id" in record:
            return "oasst"
        raise RainError(f"preference data {where}: unknown format (expected chosen/rejected fields, with an optional "
                        "prompt, or an OpenAssistant tree with message_tree_id/prompt and ranked replies)")
    raise RainError(f"preference data {path}: the file has no records")


def read_pairs(paths: list[str | Path], fmt: str = "auto") -> PairData:
    data = PairData()
    for path in paths:
        if is_builtin(path):  # builtin:safety (rain.posttrain.safety)
            for prompt, chosen, rejected in safety_pairs():
                data.add(prompt, chosen, rejected)
            continue
        kind = detect_pair_format(path) if fmt == "auto" else fmt
        if kind not in PAIR_FORMATS:
            raise RainError(f"preference data format {kind!r}: expected auto or one of {', '.join(PAIR_FORMATS)}")
        part = (read_preference_pairs if kind == "pairs" else read_oasst_pairs)(path)
        data.pairs += part.pairs
        data.skipped.update(part.skipped)
    return data


# ---- tokens ------------------------------------------------------------------------------------------

Example = tuple[list[int], list[int]]  # ids, loss mask (1 on the final reply's tokens)


def encode_reply(tokenizer: Tokenizer, prompt: list[Message], reply: str) -> Example:
    """The conversation prompt + reply with a loss mask on the reply only (its content and closing <|im_end|>),
    not on the assistant turns inside the prompt."""
    ids, mask, turn_ends = encode_chat(tokenizer, prompt + [{"role": "assistant", "content": reply}])
    reply_start = turn_ends[-2] if len(turn_ends) > 1 else 0
    return ids, [m if i >= reply_start else 0 for i, m in enumerate(mask)]


def encode_pairs(tokenizer: Tokenizer, pairs: list[Pair], context: int, skipped: Counter) -> list[tuple[Example, Example]]:
    """Both sides of each pair, which must fit one window together; a pair that does not is skipped and counted
    (its prompt alone longer than the context, or prompt and replies)."""
    out = []
    for pair in pairs:
        chosen, rejected = encode_reply(tokenizer, pair.prompt, pair.chosen), encode_reply(tokenizer, pair.prompt, pair.rejected)
        if len(chosen[0]) - 1 + len(rejected[0]) - 1 > context:
            prompt_tokens = chosen[1].index(1) if 1 in chosen[1] else len(chosen[0])
            skipped["prompt_longer_than_context" if prompt_tokens >= context else "pair_longer_than_context"] += 1
            continue
        out.append((chosen, rejected))
    return out


def split_pairs(pairs: list[Pair], val_fraction: float) -> tuple[list[Pair], list[Pair]]:
    """(train, val) by a hash of the prompt, so the pairs of one prompt (OASST ranks) stay on one side."""
    keys = [conversation_hash(p.prompt) for p in pairs]
    val = [p for p, k in zip(pairs, keys) if k < val_fraction]
    train = [p for p, k in zip(pairs, keys) if k >= val_fraction]
    if not val and len(train) > 1:
        lowest = min(keys)
        val, train = [p for p, k in zip(pairs, keys) if k == lowest], [p for p, k in zip(pairs, keys) if k != lowest]
    return train, val


class PreferenceData(SFTData):
    """The TrainData of DPO: windows of whole pairs (chosen, rejected side by side), packed and masked as SFT's
    (its epoch order, windows and resume state are SFTData's). Batches are (x, y, doc_ids, pair_ids): pair_ids
    (B, P) the index of each row's pairs in train/val, -1 after a row's last."""

    def __init__(self, tokenizer_path: str | Path, paths: list[str | Path], *, context: int, micro_batch: int,
                 seed: int = 0, eval_batches: int = 20, val_fraction: float = 0.05, fmt: str = "auto",
                 rank: int = 0, world: int = 1):
        self._settings(tokenizer_path, context, micro_batch, seed, eval_batches, val_fraction, True, rank, world)

        read = read_pairs(paths, fmt)
        skipped = Counter(read.skipped)
        train_pairs, val_pairs = split_pairs(read.pairs, val_fraction)
        self.train = encode_pairs(self.tokenizer, train_pairs, context, skipped)
        self.val = encode_pairs(self.tokenizer, val_pairs, context, skipped)
        if not self.train or not self.val:
            why = ", ".join(f"{k} {v}" for k, v in skipped.most_common()) or "none"
            raise RainError(f"no {'training' if not self.train else 'held-out'} preference pair is left in "
                            f"{', '.join(map(str, paths))} (skipped: {why}); give more pairs or shorter ones")
        self.stats = {
            "data": [str(p) for p in paths], "format": fmt, "pairs": {"train": len(self.train), "val": len(self.val)},
            "skipped": dict(skipped),
            "tokens": {"train": sum(len(c[0]) + len(r[0]) for c, r in self.train),
                       "val": sum(len(c[0]) + len(r[0]) for c, r in self.val)},
        }
        self.fingerprint = hashlib.sha256(json.dumps([self.train, self.val, context, seed]).encode()).hexdigest()
        self.val_windows = pack(self._lengths(self.val), list(range(len(self.val))), context)
        self.settings: dict = {}  # the loss and reference, set by run_dpo
        self.consumed = 0
        self._epoch_sizes: list[int] = []
        self._epoch, self._windows = -1, []

    @staticmethod
    def _lengths(pairs) -> list[int]:
        """A pair as pack() counts an example: it takes (chosen - 1) + (rejected - 1) positions."""
        return [len(c[0]) + len(r[0]) - 1 for c, r in pairs]

    def _pack_epoch(self, epoch: int) -> list[list[int]]:
        order = list(range(len(self.train)))
        random.Random(f"{self.seed}-{epoch}").shuffle(order)
        return pack(self._lengths(self.train), order, self.context)

    def _pair_batch(self, pairs, windows: list[list[int]]):
        x, y, doc = self._batch([[side for i in w for side in pairs[i]] for w in windows])
        width = max(len(w) for w in windows)
        pair_ids = torch.tensor([w + [-1] * (width - len(w)) for w in windows], dtype=torch.long)
        return x, y, doc, pair_ids

    def next_batch(self):
        windows = [self._window((self.consumed + i) * self.world + self.rank) for i in range(self.micro_batch)]
        self.consumed += self.micro_batch
        return self._pair_batch(self.train, windows)

    def val_batches(self) -> Iterator:
        windows = self.val_windows[: self.eval_batches * self.micro_batch]
        for start in range(0, len(windows), self.micro_batch):
            yield self._pair_batch(self.val, windows[start : start + self.micro_batch])

    def all_batches(self, split: str) -> Iterator:
        """Every pair of `split` once, in windows (to precompute the reference's log-probs)."""
        pairs = self.train if split == "train" else self.val
        windows = pack(self._lengths(pairs), list(range(len(pairs))), self.context)
        for start in range(0, len(windows), self.micro_batch):
            yield self._pair_batch(pairs, windows[start : start + self.micro_batch])

    def load_state_dict(self, state: dict) -> None:
        if state.get("fingerprint") != self.fingerprint:
            raise RainError("cannot resume: the preference data or its settings differ from the interrupted run's "
                            "(resume with the same --data and --val-fraction)")
        self.consumed = int(state["consumed"]) * int(state.get("world", self.world)) // self.world

    def describe(self) -> dict:
        """The stage's record (state.json, run_summary.json, the model card): the data and the loss settings."""
        return {"dpo": {**self.stats, **self.settings}, "chat_template": CHAT_TEMPLATE}


# ---- the loss ----------------------------------------------------------------------------------------


def sequence_logps(logits: torch.Tensor, y: torch.Tensor, doc: torch.Tensor, pair_ids: torch.Tensor):
    """(log-prob sums, token counts), each (B, P, 2): per pair and side (0 chosen, 1 rejected), the sum of
    log p(y_t) over the targets that are not -100 in that document (2k chosen, 2k + 1 rejected)."""
    B, P = pair_ids.shape
    logp = torch.log_softmax(logits, dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32)).gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    counted = (y != -100).to(logp.dtype)
    slot = doc.clamp(max=2 * P)  # documents past the row's pairs (the padding) go to one discarded slot
    sums = logp.new_zeros(B, 2 * P + 1).scatter_add(1, slot, logp * counted)
    counts = logp.new_zeros(B, 2 * P + 1).scatter_add(1, slot, counted)
    return sums[:, : 2 * P].view(B, P, 2), counts[:, : 2 * P].view(B, P, 2)


@dataclass
class PreferenceLoss:
    kind: str = "dpo"
    beta: float = 0.1
    gamma: float = 0.5  # SimPO's target margin

    def __call__(self, policy: torch.Tensor, reference: torch.Tensor | None, counts: torch.Tensor):
        """policy/reference log-prob sums and counts (..., 2) -> (per-pair losses, chosen rewards, rejected rewards)."""
        if self.kind == "simpo":
            rewards = self.beta * policy / counts.clamp(min=1)
            losses = -F.logsigmoid(rewards[..., 0] - rewards[..., 1] - self.gamma)
            return losses, rewards[..., 0], rewards[..., 1]
        ratios = policy - reference
        h = ratios[..., 0] - ratios[..., 1]
        losses = (h - 1 / (2 * self.beta)) ** 2 if self.kind == "ipo" else -F.logsigmoid(self.beta * h)
        rewards = self.beta * ratios.detach()
        return losses, rewards[..., 0], rewards[..., 1]


# ---- the trainer -------------------------------------------------------------------------------------


class DPOTrainer(Trainer):
    """rain.train's Trainer with the preference loss (micro_loss) and held-out reward accuracy and margin
    (evaluate); the reference's log-probs are precomputed into the run folder or computed online."""

    def __init__(self, cfg, run_dir, *, data: PreferenceData, loss: PreferenceLoss, reference: Path,
                 reference_logps: str = "precompute", resume: bool = False, overwrite: bool = False,
                 init_from: Path | None = None, log=print):
        self.loss_fn, self.reference_path, self.reference_mode = loss, Path(reference), reference_logps
        super().__init__(cfg, run_dir, resume=resume, overwrite=overwrite, init_from=init_from, data=data, log=log)
        self.reference, self.reference_table = None, {}
        if loss.kind == "simpo":
            return
        if reference_logps == "online":
            self.reference = self._reference_model()
        else:
            self.reference_table = self._precomputed(resume)

    def _reference_model(self):
        model = build_model(self.cfg, self.device, self.reference_path, self.data.tokenizer_path).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return model

    @torch.no_grad()
    def _logps(self, model, batch):
        x, y, doc, pair_ids = batch
        with self.autocast:
            logits = model(x, doc_ids=doc)
        return sequence_logps(logits, y, doc, pair_ids)

    def _precomputed(self, resume: bool) -> dict[str, torch.Tensor]:
        """{"train": (pairs, 2), "val": (pairs, 2)} reference log-probs: read back on resume, else computed once with
        the reference model and written to the run folder (rank 0) for a resume to read."""
        path = self.run_dir / REFERENCE_FILE
        key = hashlib.sha256(f"{self.data.fingerprint}|{self.reference_path.resolve()}".encode()).hexdigest()
        if resume and path.is_file():
            tensors = load_file(path)
            if tensors.get("key") is not None and bytes(tensors["key"].tolist()).hex() == key:
                return {k: tensors[k].to(self.device) for k in ("train", "val")}
        model = self._reference_model()
        table = {}
        for split in ("train", "val"):
            pairs = self.data.train if split == "train" else self.data.val
            values = torch.zeros(len(pairs), 2, device=self.device)
            for batch in self.data.all_batches(split):
                batch = tuple(t.to(self.device) for t in batch)
                sums, _ = self._logps(model, batch)
                used = batch[3] >= 0
                values[batch[3][used]] = sums[used]
            table[split] = values
        del model
        if self.ranks.main:
            tmp = path.with_suffix(".tmp")
            save_file({**{k: v.cpu() for k, v in table.items()},
                       "key": torch.tensor(list(bytes.fromhex(key)), dtype=torch.uint8)}, tmp)
            os.replace(tmp, path)
        return table

    def _pair_losses(self, model, batch, split: str):
        x, y, doc, pair_ids = batch
        policy, counts = sequence_logps(model(x, doc_ids=doc), y, doc, pair_ids)
        if self.loss_fn.kind == "simpo":
            reference = None
        elif self.reference is not None:
            reference, _ = self._logps(self.reference, batch)
        else:
            reference = self.reference_table[split][pair_ids.clamp(min=0)]
        losses, chosen, rejected = self.loss_fn(policy, reference, counts)
        return losses, chosen, rejected, pair_ids >= 0

    def micro_loss(self, batch: tuple) -> torch.Tensor:
        losses, _, _, used = self._pair_losses(self.step_model, batch, "train")
        return losses[used].mean()

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Held-out preference loss, reward accuracy (chosen's reward above rejected's) and margins, over the
        data's fixed validation windows."""
        was_training = self.model.training
        self.model.eval()
        parts = []
        for batch in self.data.val_batches():
            batch = tuple(t.to(self.device) for t in batch)
            with self.autocast:
                losses, chosen, rejected, used = self._pair_losses(self.model, batch, "val")
            parts.append(torch.stack([losses[used].float(), chosen[used].float(), rejected[used].float()]))
        self.model.train(was_training)
        loss, chosen, rejected = torch.cat(parts, dim=1).double()
        margin = chosen - rejected
        return {"val_loss": loss.mean().item(), "val_reward_accuracy": (margin > 0).double().mean().item(),
                "val_reward_margin": margin.mean().item(), "val_chosen_reward": chosen.mean().item(),
                "val_rejected_reward": rejected.mean().item(), "val_pairs": int(margin.numel())}



def run_dpo(run: str | Path, data: list[str | Path], out: str | Path, *, fmt: str = "auto", loss: str = "dpo",
            beta: float | None = None, gamma: float = 0.5, reference: str | Path | None = None,
            reference_logps: str = "precompute", epochs: float = 1.0, steps: int | None = None, lr: float | None = None,
            batch: int = 16, val_fraction: float = 0.05, overrides: list[str] = (), resume: bool = False,
            overwrite: bool = False, stop_after: int | None = None, time_limit: float | None = None,
            log=print) -> dict:
    """Preference-tune the checkpoint `run` (an SFT run or checkpoint) on pairs into the run folder `out`
    (see `rain dpo --help`); the reference is `run` itself unless given."""
    from rain.train.long_run import Deadline

    if loss not in LOSSES:
        raise RainError(f"--loss {loss!r}: expected one of {', '.join(LOSSES)}")
    if reference_logps not in ("precompute", "online"):
        raise RainError(f"--reference-logps {reference_logps!r}: expected precompute or online")
    beta = DEFAULT_BETA[loss] if beta is None else beta
    if not beta > 0:
        raise RainError(f"--beta must be positive, got {beta}")
    deadline = Deadline(time_limit)
    checkpoint = ckpt.find(run)
    folder = checkpoint.folder
    if checkpoint.chat_template is None:
        log(f"warning: {folder} is a base model without a chat template; DPO trains it on the chat template "
            "anyway (the result carries it), but a model fine-tuned with `rain sft` first learns from pairs far better")
    run_config = Path(out) / "config.json"
    source = run_config if resume and run_config.is_file() else sft_config(checkpoint.config, lr=lr, batch=batch)
    overridden = overridden_keys(overrides)

    def min_lr_follows_lr(cfg) -> None:
        if not resume and "train.min_lr" not in overridden:
            cfg.train.min_lr = cfg.train.lr / 10

    cfg = load_config(source, overrides, derive=min_lr_follows_lr)
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    pairs = PreferenceData(folder / "tokenizer.json", data, context=cfg.model.context, micro_batch=cfg.train.micro_batch,
                           seed=cfg.train.seed, eval_batches=cfg.train.eval_batches, val_fraction=val_fraction,
                           fmt=fmt, rank=rank, world=world)
    if not resume:
        if steps is None and "train.max_steps" not in overridden:
            steps = math.ceil(epochs * pairs.windows_per_epoch() / cfg.train.batch_size)
        cfg.train.max_steps = steps or cfg.train.max_steps
        if "train.eval_every" not in overridden:
            cfg.train.eval_every = max(1, cfg.train.max_steps // 5)
        if "train.log_every" not in overridden:
            cfg.train.log_every = max(1, min(10, cfg.train.max_steps // 10))
    validate(cfg)
    s = pairs.stats
    log(f"preference data: {s['pairs']['train']:,} training and {s['pairs']['val']:,} held-out pairs, "
        f"{pairs.windows_per_epoch():,} windows of {cfg.model.context} tokens per epoch"
        + (f"; skipped {sum(s['skipped'].values()):,} ({', '.join(f'{k} {v}' for k, v in s['skipped'].items())})"
           if s["skipped"] else ""))
    reference = Path(reference) if reference else folder
    pairs.settings = {"loss": loss, "beta": beta, **({"gamma": gamma} if loss == "simpo" else
                      {"reference": str(reference.resolve()), "reference_logps": reference_logps})}
    trainer = DPOTrainer(cfg, out, data=pairs, loss=PreferenceLoss(loss, beta, gamma),
                         reference=reference, reference_logps=reference_logps,
                         resume=resume, overwrite=overwrite, init_from=folder.resolve(), log=log)
    return trainer.fit(stop_after, deadline)
