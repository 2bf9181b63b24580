"""Knowledge distillation: a frozen teacher's next-token distributions as a second target for the student.

    loss     = cross-entropy(student, data) + distill_weight x distill_loss      (what the gradient follows)
    distill  = T^2 x KL(p_teacher || q_student), both softmaxes at temperature T, averaged over the positions the
               cross-entropy counts (targets != -100: SFT's prompt tokens and padding are out of both)

The T^2 keeps the KL's gradient on the same scale as the cross-entropy's whatever T is (Hinton et al., 2015):
d(T^2 KL)/d(logits) = T (q - p). metrics.jsonl's `loss` stays the cross-entropy alone, so a distilled run's curve
reads against a plain one's; `distill_loss` beside it is the KL term before its weight.

Memory. The teacher runs under no_grad (bf16 weights on CUDA, fp32 on CPU) and its logits for a micro-batch are
B x T x V numbers (bf16 on CUDA: 2 bytes each, e.g. 8 x 2048 x 151,936 = 5.0 GB; fp32 on CPU), held through the
student's forward pass (the KL's gradients are worked out there, so the backward pass no longer needs them). With
train.distill_top_k = k only the teacher's k largest logits and their ids are kept (B x T x k x (2 + 8) bytes; k = 64:
10 MB for the same batch), the full logits being freed before the student runs; the teacher's forward pass still
makes them once, so its own peak is unchanged. train.auto_micro_batch does not count the teacher.

Top-k is an approximation. The rest of the teacher's probability is either dropped and the k renormalised to sum to
1 (train.distill_rest = renormalise, the default): the student is pulled only towards the teacher's head and told
nothing of its tail; or kept as one more outcome (bucket), matched against the student's own mass outside the k:
the KL between the two distributions coarsened to k + 1 outcomes, never above the full KL (merging outcomes cannot
raise a KL) and equal to it when the teacher's tail is shaped like the student's, for one more number a position
(the log-sum-exp of the teacher's logits). docs/performance.md measures both against the full KL.

The student's own logits are never held whole: the KL and its gradient are computed `chunk` rows at a time, as the
cross-entropy is (rain.model.transformer.LinearCrossEntropy).

The teacher is loaded once from train.teacher (so --resume loads it again from the same path), is not part of the
model and is never saved in a checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from rain import checkpoint as ckpt
from rain.config import ModelConfig, TrainConfig
from rain.errors import RainError
from rain.model.transformer import Transformer, chunked_linear_grads


def _chunk_kl(h, w, teacher, index, lse, valid, temperature: float):
    """One chunk's summed KL(p || q) over its valid rows and d(T^2 KL)/d(logits) (zero on other rows)."""
    logq = torch.log_softmax((h @ w.T).float() / temperature, dim=-1)
    if lse is None:  # over V, or over the k kept (renormalised)
        logp = torch.log_softmax(teacher.float() / temperature, dim=-1)
    else:  # the k kept at their true probabilities; the rest of the mass is one more bucket
        logp = teacher.float() / temperature - lse[:, None]
    p = logp.exp()
    q = logq.exp()
    if index is None:
        return _valid_rows((p * (logp - logq)).sum(-1), q - p, valid, temperature)
    rows = (p * (logp - logq.gather(1, index))).sum(-1)
    if lse is not None:
        p_rest = (1 - p.sum(-1)).clamp(min=0)
        logq_rest = torch.logsumexp(logq.scatter(1, index, -torch.inf), dim=-1)
        rows = rows + torch.xlogy(p_rest, p_rest) - p_rest * logq_rest
        # outside the k: q_j - p_rest x q_j / q_rest (the teacher's rest spread as the student spreads its own)
        tail = torch.exp(logq + (torch.log(p_rest) - logq_rest)[:, None]).scatter_(1, index, 0.0)
    grad = q.scatter_add_(1, index, -p)  # inside the k: q_j - p_j
    return _valid_rows(rows, grad if lse is None else grad - tail, valid, temperature)


def _valid_rows(rows, grad, valid, temperature: float):
    rows = torch.where(valid, rows, 0.0)
    grad = torch.where(valid[:, None], grad * temperature, 0.0)
    return rows.sum(), grad


class LinearKL(torch.autograd.Function):
    """T^2 x mean KL(softmax(teacher / T) || softmax(h @ weight.T / T)) over rows where `valid`, with its gradients
    worked out in the forward pass `chunk` rows at a time, so neither the student's (N, V) logits nor their softmax
    are ever held whole. teacher: (N, V) logits, or (N, k) logits at the vocabulary ids `index` (N, k)."""

    @staticmethod
    def forward(ctx, h, weight, teacher, index, lse, valid, temperature: float, chunk: int, dtype: torch.dtype):
        def loss_and_grad(s, hc, w):
            part = None if index is None else index[s : s + chunk]
            rest = None if lse is None else lse[s : s + chunk]
            return _chunk_kl(hc, w, teacher[s : s + chunk], part, rest, valid[s : s + chunk], temperature)

        total, grad_h, grad_w = chunked_linear_grads(h, weight, chunk, dtype, loss_and_grad)
        count = valid.sum()
        # d(T^2 KL)/d(logits) = T^2 x (1/T) x (q - p): the T from the chain rule through logits / T
        ctx.save_for_backward(grad_h / count, grad_w / count)
        return total * temperature**2 / count

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_out, grad_w * grad_out, None, None, None, None, None, None, None


def distill_kl(h: torch.Tensor, weight: torch.Tensor, teacher: torch.Tensor, index: torch.Tensor | None,
               valid: torch.Tensor, temperature: float, chunk: int, lse: torch.Tensor | None = None) -> torch.Tensor:
    """h (N, d) the student's final hidden states, weight (V, d) its lm_head, teacher (N, V) or (N, k) logits with
    index (N, k), valid (N,) bool -> T^2 x the mean KL over the valid rows; matmuls in the autocast dtype if on.
    lse (N,), with top-k: logsumexp(all the teacher's logits / T), for the rest-bucket form (train.distill_rest)."""
    dev = h.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else h.dtype
    with torch.autocast(dev, enabled=False):
        return LinearKL.apply(h, weight, teacher, index, lse, valid, temperature, chunk, dtype)


def load_teacher(path: str | Path, student: ModelConfig, tokenizer_path: Path | None,
                 device: torch.device) -> tuple[Transformer, Path]:
    """(the teacher in eval mode, frozen, bf16 on CUDA / fp32 elsewhere; the folder read) from a rain run or
    checkpoint folder or a Hugging Face Qwen3/Llama folder. Its tokenizer.json must be the run's and its vocabulary
    and context cover the student's; each refusal is one line."""
    path = Path(path)
    if not path.exists():
        raise RainError(f"train.teacher {path}: no such folder (give a rain run or checkpoint folder, or a Hugging "
                        "Face model folder)")
    source = path if ckpt.is_hf_folder(path) else ckpt.find(path)
    folder = path if source is path else source.folder
    if tokenizer_path is not None:
        theirs = folder / "tokenizer.json"
        if not theirs.is_file() or not ckpt.same_tokenizer(theirs, Path(tokenizer_path)):
            raise RainError(f"teacher {folder}: its tokenizer is not this run's ({tokenizer_path}); distillation "
                            "compares next-token distributions id by id, so the teacher must use the same tokenizer")
    model, cfg = ckpt.load_model(source, "cpu")  # an architecture it cannot read is a one-line RainError
    if cfg.model.vocab_size != student.vocab_size:
        raise RainError(f"teacher {folder}: vocab_size {cfg.model.vocab_size} vs the student's {student.vocab_size}; "
                        "distillation needs the same vocabulary (--set model.vocab_size="
                        f"{cfg.model.vocab_size})")
    if cfg.model.context < student.context:
        raise RainError(f"teacher {folder}: context {cfg.model.context} is shorter than the student's "
                        f"{student.context}; use a shorter model.context for the student")
    model = model.to(device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), folder.resolve()


class Distiller:
    """The teacher of a run and its KL term; Trainer.micro_loss hands it each micro-batch, Trainer.step each step's
    outcome, and the log reads its window (distill_loss)."""

    def __init__(self, t: TrainConfig, student: ModelConfig, tokenizer_path: Path | None, device: torch.device):
        self.teacher, self.folder = load_teacher(t.teacher, student, tokenizer_path, device)
        self.teacher.attention = t.attention
        self.weight, self.temperature, self.top_k = t.distill_weight, t.distill_temperature, t.distill_top_k
        self.rest = t.distill_rest
        self.step_sum = torch.zeros((), device=device)  # this step's distill loss (mean over its micro-batches)
        self.window_sum = torch.zeros((), device=device)  # summed over the log window's applied steps
        self.window_steps = 0

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor, doc: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """The teacher's (B*T, V) logits; or its top-k (values, ids) with the full logits freed at once, and with
        train.distill_rest = bucket the log-sum-exp of all of them / T (what the kept tokens' true probabilities
        need)."""
        logits = self.teacher(x, doc_ids=doc).flatten(0, 1)
        if not 0 < self.top_k < logits.shape[-1]:
            return logits, None, None
        values, index = logits.topk(self.top_k, dim=-1)
        lse = torch.logsumexp(logits.float() / self.temperature, dim=-1) if self.rest == "bucket" else None
        return values, index, lse

    def micro_loss(self, step_model, model: Transformer, batch: tuple, grad_accum: int) -> torch.Tensor:
        """The student's cross-entropy, carrying the gradient of weight x the distill loss but not its value (so
        `loss` stays comparable with a plain run's and weight 0 changes nothing, bit for bit)."""
        x, y, doc = batch[:3]
        teacher, index, lse = self.teacher_logits(x, doc)  # first: with top-k, only (B*T, k) is held from here on
        ce, h = step_model(x, y, doc_ids=doc, hidden=True)
        kl = distill_kl(h.flatten(0, 1), model.lm_head.weight, teacher, index, y.flatten() != -100,
                        self.temperature, model.loss_chunk, lse)
        self.step_sum += kl.detach() / grad_accum
        return ce + self.weight * (kl - kl.detach())

    def step_done(self, skipped: bool) -> None:
        """A skipped step's distill loss (maybe NaN) stays out of the log, as its cross-entropy does."""
        if not skipped:
            self.window_sum += self.step_sum
            self.window_steps += 1
        self.step_sum.zero_()

    def log_entry(self, world: int) -> dict:
        """{"distill_loss": the mean over the steps since the last log}, averaged over ranks; starts a new window."""
        if not self.window_steps:
            return {}
        value = self.window_sum / self.window_steps
        if world > 1:
            dist.all_reduce(value, op=dist.ReduceOp.AVG)
        self.window_sum.zero_()
        self.window_steps = 0
        return {"distill_loss": round(float(value), 5)}

    def describe(self) -> dict:
        """What the run's lineage (state.json, run_summary.json, the model card) records of the teacher."""
        return {"teacher": str(self.folder), "distill": {"weight": self.weight, "temperature": self.temperature,
                                                         "top_k": self.top_k, "rest": self.rest}}
