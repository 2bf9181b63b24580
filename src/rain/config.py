"""Typed run configuration: TOML presets in configs/, `--set section.key=value` overrides, checked up front."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import sys
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from rain.errors import RainError

PRESET_DIR = Path(__file__).resolve().parents[2] / "configs"


@dataclass
class ModelConfig:
    vocab_size: int = 16384
    n_layer: int = 32
    d_model: int = 512
    n_head: int = 8
    n_kv_head: int = 4
    head_dim: int = 0  # 0: d_model // n_head
    d_ff: int = 2048
    context: int = 1024
    rope_theta: float = 10000.0
    qk_norm: bool = True
    tie_embeddings: bool = True
    norm_eps: float = 1e-6
    init_std: float = 0.02
    n_experts: int = 0  # > 0: every block's MLP is a mixture of this many SwiGLU experts (rain.model.moe)
    experts_per_token: int = 2  # top-k experts each token is routed to
    expert_d_ff: int = 0  # an expert's hidden width (0: d_ff)
    capacity_factor: float = 1.25  # training: tokens an expert takes, x its fair share (0: dropless, slower)
    router_aux_coef: float = 0.01  # weight of the load-balancing loss in training
    # DeepSeek-style options (rain.model.moe); the defaults are Qwen3-MoE's routing.
    n_shared_experts: int = 0  # SwiGLU experts of width d_expert that every token uses, added to the routed output
    router_score: str = "softmax"  # "softmax" over all experts, or "sigmoid" per expert (DeepSeek-V3)
    router_bias_rate: float = 0.0  # > 0: auxiliary-loss-free balancing, a per-expert bias moved by this each step
    router_z_coef: float = 0.0  # weight of the router z-loss (ST-MoE): mean squared logsumexp of router logits

    @property
    def dim_head(self) -> int:
        return self.head_dim or self.d_model // self.n_head

    @property
    def d_expert(self) -> int:
        return self.expert_d_ff or self.d_ff


@dataclass
class TrainConfig:
    total_tokens: int = 0  # token budget; steps = total_tokens // tokens_per_step (max_steps wins if set)
    max_steps: int = 0
    # Passes over the training windows: steps = epochs x windows per epoch / batch_size, rounded up; the run also
    # validates at the end of each epoch. max_steps wins over it, and it over total_tokens.
    epochs: float = 0.0
    batch_size: int = 64  # sequences per optimizer step
    micro_batch: int = 64  # sequences per forward/backward; the rest is gradient accumulation
    lr: float = 3e-4
    min_lr: float = 0.0
    warmup: float = 0.01  # < 1: a fraction of the steps; >= 1: a number of steps
    schedule: str = "cosine"  # cosine | wsd | constant
    decay_frac: float = 0.2  # wsd: share of steps spent decaying at the end
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 (autocast over fp32 weights) | bf16-master (bf16 weights and
    # activations, fp32 master weights and optimizer state: rain.train.precision). Formerly train.dtype.
    precision: str = "auto"
    compile: bool = False
    # Under torchrun: ddp (a whole model per process) | fsdp (FSDP2: weights, gradients and optimizer state sharded
    # per block; rain.train.parallel). Checkpoints are the same either way, so a run may resume under the other.
    parallel: str = "ddp"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 1337
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 20
    # Benchmarks on the live model during training (rain.eval.live), into metrics.jsonl as "eval" records: these
    # tasks (empty: none), every eval_every_tokens tokens (0: at each validation), on a fixed seeded subset of
    # eval_limit items per task (0: all), eval_shots-shot, read from eval_data (empty: as `rain eval` looks).
    eval_tasks: list[str] = field(default_factory=list)
    eval_every_tokens: int = 0
    eval_limit: int = 200
    eval_shots: int = 0
    eval_data: str = ""
    checkpoints: int = 100  # evenly spaced intermediate checkpoints kept over the run
    save_every: int = 0  # refresh `last` every N steps (0: at each evaluation)
    # The divergence guard (rain.train.long_run). A step whose loss or gradient norm is not finite is skipped: the
    # weights never see it. These call for on_divergence: max_bad_steps skipped steps in a row (0: never), or a
    # logged loss above spike_factor x the median of the last spike_window logged losses (0: no spike check).
    max_bad_steps: int = 5
    spike_factor: float = 3.0
    spike_window: int = 20  # the spike check starts once this many losses are logged
    # rollback: reload the newest complete checkpoint, skip the data trained on since, and train at
    # rollback_lr_factor x the learning rate for rollback_lr_steps steps; after max_rollbacks, or before any
    # checkpoint, it stops. stop: end at once (exit 2), saving nothing new.
    on_divergence: str = "rollback"  # rollback | stop
    rollback_lr_factor: float = 0.5
    rollback_lr_steps: int = 1000
    max_rollbacks: int = 5
    # Early stopping: end the run (saving last, keeping best) after this many validations in a row without an
    # improvement of at least early_stop_min_delta in the validation loss (0: never).
    early_stop_patience: int = 0
    early_stop_min_delta: float = 0.0
    tracker: str = "none"  # none | trackio | tensorboard
    doc_mask: bool = False
    # The kernel of document masking: auto (FlexAttention on CUDA, else SDPA with a dense mask), flex or sdpa (the
    # fallback where a GPU's flex kernel fails).
    attention: str = "auto"
    optimizer: str = "adamw"  # adamw | muon (Muon for the hidden 2-D matrices, AdamW for embeddings and norms)
    muon_lr: float = 0.02  # Muon's own peak LR, warm-up and schedule; it decays to muon_lr * min_lr / lr
    muon_warmup: float = 0.0
    muon_schedule: str = "wsd"  # cosine | wsd | constant
    muon_momentum: float = 0.95
    muon_weight_decay: float = 0.0
    checkpoint_layers: int = 0  # the first N blocks recompute activations in backward (less memory, ~+1/3 compute)
    auto_micro_batch: bool = False  # CUDA: use the largest micro_batch (<= micro_batch) that fits; accumulate the rest
    # The GPU guard (rain.train.gpu_guard, through NVML: pip install 'rain[gpu]'): between steps, pause while the GPU
    # is hotter or draws more than these limits (0: no limit), re-reading it until it is back under them.
    gpu_max_temp: float = 0.0  # °C
    gpu_resume_temp: float = 0.0  # °C a pause must cool below (0: 5 °C under gpu_max_temp)
    gpu_max_power: float = 0.0  # W; a pause ends when the draw is under it again
    gpu_check_every: int = 10  # with a limit set, read the GPU every N steps (else only at log steps)
    # Seconds: a longer pause ends with a warning, cooled or not (a limit below idle). Under torchrun the other ranks
    # wait in their next all-reduce, so it stays well below the NCCL timeout (10 min).
    gpu_max_pause: float = 300.0
    gpu_power_limit: float = 0.0  # W: set the board's power limit at the start, where permitted (0: leave it)
    gpu_price_per_hour: float = 0.0  # what one GPU-hour costs (any currency): the run summary's bill (0: no cost)
    # Which checkpoints keep the optimizer state a resume needs: "last" (always), "last,best" or "all" (every step_N
    # too, as before: ~3x the disk of weights only with AdamW). The others hold weights only, for eval, export, sample
    # and --init-from.
    keep_full: str = "last,best"
    # The weights of weights-only checkpoints: auto (bf16 when training computes in bf16: train.precision bf16 or
    # bf16-master, or auto on a GPU; else fp32) | bf16 (half the disk; read back into fp32) | fp32. Full checkpoints
    # keep the weights exact.
    intermediate_dtype: str = "auto"
    ignore_disk_check: bool = False  # start even when the run folder's disk has less free space than its checkpoints need
    # Distillation (rain.train.distill): a frozen teacher (a rain run or checkpoint, or a Hugging Face folder, with this
    # run's tokenizer) adds distill_weight x T^2 x KL(teacher || student) at temperature T over the next-token
    # distributions; distill_top_k > 0 keeps only the teacher's k most likely tokens (renormalised) to save memory.
    teacher: str = ""
    distill_weight: float = 1.0
    distill_temperature: float = 1.0
    distill_top_k: int = 0
    # With top-k, the teacher's probability outside its k tokens: "renormalise" (dropped; the k renormalised to sum to
    # 1) or "bucket" (kept as one more outcome against the student's own mass outside them: exact at the coarser
    # grain, one more number a position; docs/performance.md compares the two).
    distill_rest: str = "renormalise"


@dataclass
class StageConfig:
    """One [[data.stage]] of a mixture that changes during training: from `start` (a fraction of the run's steps,
    in [0, 1)) or `start_tokens` (tokens trained) on, training windows are drawn by source in `weights` (sources
    left out get 0; they sum to 1). With `blend`, the weights move linearly from the previous stage's (or
    data.weights) to these over the stage's steps: its step i of n draws with prev + (i + 1) / n x (these - prev),
    so its last step draws with these. See rain.data.schedule."""
    start: float | None = None
    start_tokens: int | None = None
    weights: dict[str, float] = field(default_factory=dict)
    blend: bool = False


@dataclass
class ReweightConfig:
    """[data.reweight]: the mixture moves during training by the per-source validation loss (DoReMi-style; the rule
    and what each key means: rain.data.reweight). Off while `reference` is empty."""
    reference: str = ""  # "early" (the run's own losses), or a reference run (its folder or metrics.jsonl)
    reference_evals: int = 1  # "early": the mean of this many validations from `start` on is the reference
    reference_at: str = "same"  # a reference run: its validation at the same tokens (same) or its last (final)
    eta: float = 1.0  # step size: w <- w x exp(eta x excess), normalised
    smoothing: float = 0.1  # then w <- (1 - smoothing) x w + smoothing x data.weights
    floor: float | dict[str, float] = 0.0  # each source's least weight (one number: every source)
    cap: float | dict[str, float] = 1.0  # each source's greatest weight
    start: float = 0.1  # no reweighting before this fraction of the run's steps
    every: int = 1  # reweight at every n-th validation


@dataclass
class DataConfig:
    dir: str = ""  # the prepared data folder (shards + manifest.json) that `rain train` reads
    paths: list[str] = field(default_factory=list)  # empty: the built-in corpus (see rain.data.builtin)
    tokenizer: str = "train"  # "train", or an existing tokenizer.json, or GPT-2's vocab.json (merges.txt beside it)
    # A trained tokenizer (rain.data.tokenizer): its kind, "bytelevel-bpe" (GPT-2 style), "unigram"
    # (SentencePiece-style) or "bpe-byte-fallback" (character BPE); the last two spell unknown characters as bytes.
    tokenizer_kind: str = "bytelevel-bpe"
    # "none", or "nfkc": compatibility characters are folded before tokenising ("\ufb01" -> "fi", full-width -> ASCII),
    # so decode(encode(text)) gives the NFKC form of the text, not the text itself.
    normalization: str = "none"
    # "none"; "cjk-chars": every Han/Hiragana/Katakana character is its own pre-token; "korean-morphemes": text is cut
    # at Korean morpheme boundaries (kiwipiepy: pip install 'rain[korean]') before training and every encode.
    pretokenize: str = "none"
    val_fraction: float = 0.005  # share of documents held out for validation
    shard_tokens: int = 50_000_000
    max_docs: int = 0  # 0: all
    seed: int = 1234
    mixture: str = ""  # a mixture TOML (or a preset name in data/: rain-v2, cpt-mix); wins over paths
    workers: int = 0  # tokenising processes for `rain prepare` (0: one per CPU core)
    tokenizer_sample_bytes: int = 256_000_000  # text from the mixture (in its shares) to train the BPE on
    # A longer record (file, line, JSON text...) is cut at whitespace into pieces of at most this many characters,
    # each a document, so memory stays bounded whatever the input (0: no cap).
    max_doc_chars: int = 1_000_000
    # Training-time mixing (rain.data.schedule): each training window is drawn from one source in these shares
    # (source names of the prepared folder; sources left out get 0; they sum to 1). Empty, with no stages: windows
    # are drawn uniformly over the prepared tokens, so each source's share is its share of the tokens (as prepared).
    weights: dict[str, float] = field(default_factory=dict)
    stage: list[StageConfig] = field(default_factory=list)  # [[data.stage]]: the weights change during training
    reweight: ReweightConfig = field(default_factory=ReweightConfig)  # [data.reweight]: by validation loss


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def tokens_per_step(self) -> int:
        return self.train.batch_size * self.model.context

    def total_steps(self) -> int:
        if self.train.max_steps:
            return self.train.max_steps
        return max(1, self.train.total_tokens // self.tokens_per_step())


SECTIONS = {"model": ModelConfig, "train": TrainConfig, "data": DataConfig}


def _check_type(where: str, value: Any, hint: Any) -> Any:
    """Return value coerced to hint (int -> float only), or raise a RainError naming the key."""
    origin = typing.get_origin(hint)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if dataclasses.is_dataclass(hint):  # a table, e.g. one [[data.stage]]
        if not isinstance(value, dict):
            raise RainError(f"config {where}: expected a table, got {value!r}")
        hints = typing.get_type_hints(hint)
        unknown = sorted(set(value) - set(hints))
        if unknown:
            raise RainError(f"config {where}: unknown key {unknown[0]!r} (known: {', '.join(hints)})")
        return hint(**{k: _check_type(f"{where}.{k}", v, hints[k]) for k, v in value.items()})
    if origin is dict:
        key_hint, item = typing.get_args(hint)
        if not isinstance(value, dict):
            raise RainError(f"config {where}: expected a table of {item.__name__} values, got {value!r}")
        return {_check_type(where, k, key_hint): _check_type(f"{where}.{k}", v, item) for k, v in value.items()}
    if origin in (list,):
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise RainError(f"config {where}: expected a list, got {value!r}")
        return [_check_type(f"{where}[{i}]", v, item) for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _check_type(where, value, option)
            except RainError:
                pass
        raise RainError(f"config {where}: {value!r} is not a {hint}")
    if hint is type(None):
        if value is None:
            return None
        raise RainError(f"config {where}: expected nothing, got {value!r}")
    ok = isinstance(value, hint) and not (hint is int and isinstance(value, bool))
    if not ok:
        raise RainError(f"config {where}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


# Keys renamed since: the old name is still read as the new one (the one place an alias is mapped); files and --set
# the user writes get a one-line notice, a saved run's config.json none (it is read as it was written).
RENAMED = {("train", "dtype"): "precision"}


def _current_name(section: str, key: str) -> str:
    return RENAMED.get((section, key), key)


def _apply(cfg: RunConfig, section: str, key: str, value: Any, origin: str, notice: bool = True) -> None:
    if _current_name(section, key) != key:
        if notice:
            print(f"note: {section}.{key} (in {origin}) is now {section}.{_current_name(section, key)}; the old name "
                  "still works for now", file=sys.stderr)
        key = _current_name(section, key)
    if section not in SECTIONS:
        raise RainError(f"{origin}: unknown config section [{section}] (known: {', '.join(SECTIONS)})")
    obj = getattr(cfg, section)
    hints = typing.get_type_hints(type(obj))
    if key not in hints:
        known = ", ".join(f.name for f in dataclasses.fields(obj))
        raise RainError(f"{origin}: unknown key {section}.{key} (known: {known})")
    setattr(obj, key, _check_type(f"{section}.{key} in {origin}", value, hints[key]))


def preset_names(folder: Path = PRESET_DIR) -> str:
    return ", ".join(sorted(p.stem for p in folder.glob("*.toml"))) or "none found"


def find_preset(name_or_path: str | Path, folder: Path = PRESET_DIR, what: str = "config") -> Path:
    """A path to a TOML file, or the name of a preset in `folder` (configs/: 'tiny', 'rain-v2', ...; the mixtures
    in data/: 'rain-v2', 'cpt-mix')."""
    path = Path(name_or_path).expanduser()
    for candidate in (path, folder / path, folder / f"{path}.toml"):
        if candidate.is_file():
            return candidate
    raise RainError(f"{what} {name_or_path}: no such file or preset (presets: {preset_names(folder)})")


def parse_override(text: str) -> tuple[str, str, Any]:
    """'train.lr=1e-3' -> ('train', 'lr', 0.001); values are TOML literals, bare words are strings."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise RainError(f"--set {text!r}: expected section.key=value, e.g. train.lr=1e-3")
    dotted, raw = text.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return section, key, value


def load_config(source: str | Path | RunConfig | None = None, overrides: Sequence[str] | None = (), *,
                derive: Callable[[RunConfig], None] | None = None) -> RunConfig:
    """The one way a command resolves its config (train, prepare, demo, bench, sft): `source` is a preset
    name in configs/ or a TOML file, a saved run's config.json, or a RunConfig already built (copied, not
    changed); then each `--set section.key=value` in order; then `derive(cfg)`, for values that follow others
    unless the user set them (see overridden_keys); then validation, so a bad value stops the command before
    any work starts."""
    cfg = _base_config(source)
    for text in overrides or ():
        _apply(cfg, *parse_override(text), origin=f"--set {text}")
    if derive is not None:
        derive(cfg)
    validate(cfg)
    return cfg


def overridden_keys(overrides: Sequence[str]) -> set[str]:
    """The 'section.key' names the `--set` overrides change, for defaults that give way to the user's choice."""
    return {f"{section}.{_current_name(section, key)}" for section, key, _ in map(parse_override, overrides)}


def _base_config(source: str | Path | RunConfig | None) -> RunConfig:
    if source is None:
        return RunConfig()
    if isinstance(source, RunConfig):
        return copy.deepcopy(source)
    path = find_preset(source)
    if path.suffix == ".json":
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise RainError(f"config {path}: not valid JSON ({exc})") from None
    else:
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise RainError(f"config {path}: not valid TOML ({exc})") from None
    return _from_sections(raw, str(path), notice=path.suffix != ".json")  # not a saved run's config.json


def _from_sections(raw: dict[str, Any], origin: str, notice: bool = True) -> RunConfig:
    cfg = RunConfig()
    for section, values in raw.items():
        if not isinstance(values, dict):
            raise RainError(f"config {origin}: top-level key {section!r} must be a [section]")
        for key, value in values.items():
            _apply(cfg, section, key, value, origin, notice)
    return cfg


def config_from_dict(raw: dict[str, Any], origin: str = "config.json") -> RunConfig:
    cfg = _from_sections(raw, origin, notice=False)
    validate(cfg)
    return cfg


# The allowed range of each number, an interval: ( or [ says whether the end is excluded or included. Every float
# must also be finite: an inf or nan learning rate makes every step NaN.
RANGES = {
    "model.head_dim": "[0, inf)", "model.rope_theta": "(0, inf)", "model.norm_eps": "(0, 1)",
    "model.init_std": "(0, inf)", "model.capacity_factor": "[0, inf)", "model.router_aux_coef": "[0, inf)",
    "model.n_shared_experts": "[0, inf)", "model.router_bias_rate": "[0, inf)", "model.router_z_coef": "[0, inf)",
    "train.total_tokens": "[0, inf)", "train.max_steps": "[0, inf)", "train.lr": "(0, inf)",
    "train.min_lr": "[0, inf)", "train.decay_frac": "[0, 1]", "train.weight_decay": "[0, inf)",
    "train.beta1": "[0, 1)", "train.beta2": "[0, 1)", "train.eps": "(0, inf)", "train.grad_clip": "[0, inf)",
    "train.seed": f"[0, {2**32 - 1}]", "train.eval_batches": "[1, inf)", "train.eval_every_tokens": "[0, inf)",
    "train.eval_limit": "[0, inf)", "train.eval_shots": "[0, inf)", "train.save_every": "[0, inf)",
    "train.epochs": "[0, inf)", "train.max_bad_steps": "[0, inf)", "train.spike_factor": "[0, inf)",
    "train.spike_window": "[1, inf)", "train.rollback_lr_factor": "(0, 1]", "train.rollback_lr_steps": "[0, inf)",
    "train.max_rollbacks": "[0, inf)", "train.early_stop_patience": "[0, inf)", "train.early_stop_min_delta": "[0, inf)",
    "train.gpu_max_temp": "[0, 150]", "train.gpu_resume_temp": "[0, 150]", "train.gpu_max_power": "[0, inf)",
    "train.gpu_check_every": "[1, inf)", "train.gpu_max_pause": "(0, inf)", "train.gpu_power_limit": "[0, inf)",
    "train.gpu_price_per_hour": "[0, inf)", "train.distill_weight": "[0, inf)", "train.distill_temperature": "(0, inf)",
    "train.distill_top_k": "[0, inf)",
    "data.val_fraction": "[0, 0.5)", "data.shard_tokens": "[1, inf)", "data.max_docs": "[0, inf)",
    "data.seed": f"[0, {2**32 - 1}]", "data.workers": "[0, inf)", "data.tokenizer_sample_bytes": "[1, inf)",
    "data.max_doc_chars": "[0, inf)",
}
PRECISIONS = ("auto", "fp32", "bf16", "bf16-master")  # train.precision
KEEP_FULL = ("last", "last,best", "all")  # train.keep_full: the checkpoints that keep the optimizer state
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _out_of_range(name: str, value: float, allowed: str) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name} = {value} must be a finite number in {allowed}"
    low, high = (float(x) for x in allowed[1:-1].split(","))
    below = value < low or (allowed[0] == "(" and value == low)
    above = value > high or (allowed[-1] == ")" and value == high)
    return f"{name} = {value} must be in {allowed}" if below or above else None


def range_problems(cfg: RunConfig) -> list[str]:
    """Every number outside its allowed range (RANGES), every non-finite float, and an unknown device."""
    problems = []
    for section in SECTIONS:
        for f in dataclasses.fields(getattr(cfg, section)):
            name, value = f"{section}.{f.name}", getattr(getattr(cfg, section), f.name)
            if isinstance(value, float) or name in RANGES:
                problem = _out_of_range(name, value, RANGES.get(name, "(-inf, inf)"))
                problems += [problem] if problem else []
    if not DEVICE.fullmatch(cfg.train.device):
        problems.append(f"train.device {cfg.train.device!r} must be auto, cpu, mps, cuda or cuda:N")
    return problems


def stage_start_steps(cfg: RunConfig, total: int) -> list[int]:
    """The first optimizer step (counted from 0) of each data.stage in a run of `total` steps: the first step that
    begins at or past its fraction of the run (`start`), or after at least `start_tokens` trained tokens."""
    per_step = cfg.tokens_per_step()
    return [math.ceil(st.start * total - 1e-9) if st.start is not None else -(-st.start_tokens // per_step)
            for st in cfg.data.stage]


def _weight_problems(where: str, weights: dict[str, float]) -> list[str]:
    if not weights:
        return [f"{where}: no weights (give each source its share, e.g. {{ web = 0.8, math = 0.2 }})"]
    for name, w in weights.items():
        if not (math.isfinite(w) and w >= 0):
            return [f"{where}: the weight of {name} is {w}; a weight must be a finite number >= 0"]
    total = sum(weights.values())
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        return [f"{where}: the weights must sum to 1 (these sum to {total:.6g})"]
    return []


def mixture_problems(cfg: RunConfig, total: int | None = None) -> list[str]:
    """What is wrong in data.weights and data.stage; with the run's steps known (`total`), a stage that starts past
    the end of training or not after the one before too. Source names are checked when the data is opened."""
    d = cfg.data
    problems = _weight_problems("data.weights", d.weights) if d.weights else []
    for i, st in enumerate(d.stage, 1):
        where = f"data.stage[{i}]"
        if (st.start is None) == (st.start_tokens is None):
            problems.append(f"{where}: give start (a fraction of training) or start_tokens, one of the two")
        elif st.start is not None and not (math.isfinite(st.start) and 0 <= st.start < 1):
            problems.append(f"{where}.start = {st.start} must be in [0, 1): a fraction of training, before its end")
        elif st.start_tokens is not None and st.start_tokens < 0:
            problems.append(f"{where}.start_tokens = {st.start_tokens} must be >= 0")
        problems += _weight_problems(f"{where}.weights", st.weights)
    if total is None or problems:
        return problems
    steps, per_step = stage_start_steps(cfg, total), cfg.tokens_per_step()
    for i, (st, step) in enumerate(zip(d.stage, steps), 1):
        start = f"start = {st.start}" if st.start is not None else f"start_tokens = {st.start_tokens:,}"
        if step >= total:
            problems.append(f"data.stage[{i}] ({start}) starts at step {step:,}, past the end of training ({total:,} "
                            f"steps, {total * per_step:,} tokens)")
        elif i > 1 and step <= steps[i - 2]:
            problems.append(f"data.stage[{i}] ({start}) starts at step {step:,}, not after data.stage[{i - 1}] (step "
                            f"{steps[i - 2]:,}): list the stages in the order they start, at least a step apart")
    return problems


def _bounds(value: float | dict[str, float]) -> list[float]:
    return list(value.values()) if isinstance(value, dict) else [value]


def reweight_problems(cfg: RunConfig) -> list[str]:
    """What is wrong in data.reweight, each source's bounds apart (rain.data.reweight checks those against the
    sources when the data is opened)."""
    r, problems = cfg.data.reweight, []
    if not r.reference:
        return []
    if cfg.data.stage:
        problems.append("data.reweight and [[data.stage]] together: choose one (reweighting moves the weights from "
                        "data.weights itself)")
    if not (math.isfinite(r.eta) and r.eta >= 0):
        problems.append(f"data.reweight.eta = {r.eta} must be a finite number >= 0 (a negative step would favour "
                        "the sources that are already best)")
    if not 0 <= r.smoothing <= 1:
        problems.append(f"data.reweight.smoothing = {r.smoothing} must be in [0, 1]")
    if not 0 <= r.start < 1:
        problems.append(f"data.reweight.start = {r.start} must be in [0, 1): a fraction of training, before its end")
    if r.every < 1 or r.reference_evals < 1:
        problems.append("data.reweight.every and data.reweight.reference_evals must be at least 1")
    if r.reference_at not in ("same", "final"):
        problems.append(f"data.reweight.reference_at {r.reference_at!r} must be same or final")
    bad = [v for v in _bounds(r.floor) + _bounds(r.cap) if not (math.isfinite(v) and 0 <= v <= 1)]
    if bad:
        problems.append(f"data.reweight: a floor or cap of {bad[0]}; each must be in [0, 1]")
    elif not isinstance(r.floor, dict) and not isinstance(r.cap, dict) and r.floor > r.cap:
        problems.append(f"data.reweight.floor ({r.floor}) is above data.reweight.cap ({r.cap})")
    return problems


# The tokenizer choices (rain.data.tokenizer explains each).
TOKENIZER_KINDS = ("bytelevel-bpe", "unigram", "bpe-byte-fallback")
NORMALIZATIONS = ("none", "nfkc")
PRETOKENIZE = ("none", "korean-morphemes", "cjk-chars")


def validate(cfg: RunConfig) -> None:
    m, t = cfg.model, cfg.train
    problems = range_problems(cfg)
    for name in ("vocab_size", "n_layer", "d_model", "n_head", "n_kv_head", "d_ff", "context"):
        if getattr(m, name) <= 0:
            problems.append(f"model.{name} must be positive")
    if m.n_head > 0 and m.n_kv_head > 0 and m.n_head % m.n_kv_head:
        problems.append(f"model.n_head ({m.n_head}) must be a multiple of model.n_kv_head ({m.n_kv_head})")
    if not m.head_dim and m.n_head > 0 and m.d_model % m.n_head:
        problems.append(f"model.d_model ({m.d_model}) must be divisible by model.n_head ({m.n_head}), or set head_dim")
    if m.dim_head % 2:
        problems.append(f"head dim {m.dim_head} must be even for RoPE")
    if m.n_experts < 0 or m.expert_d_ff < 0 or m.capacity_factor < 0 or m.router_aux_coef < 0:
        problems.append("model.n_experts, expert_d_ff, capacity_factor and router_aux_coef must be >= 0")
    elif m.n_experts and not 1 <= m.experts_per_token <= m.n_experts:
        problems.append(f"model.experts_per_token ({m.experts_per_token}) must be between 1 and model.n_experts ({m.n_experts})")
    if m.router_score not in ("softmax", "sigmoid"):
        problems.append(f"model.router_score must be 'softmax' or 'sigmoid', not {m.router_score!r}")
    if t.micro_batch <= 0 or t.batch_size <= 0:
        problems.append("train.batch_size and train.micro_batch must be positive")
    elif t.batch_size % t.micro_batch:
        problems.append(f"train.batch_size ({t.batch_size}) must be a multiple of train.micro_batch ({t.micro_batch})")
    if t.max_steps <= 0 and t.total_tokens <= 0 and t.epochs <= 0:
        problems.append("set train.max_steps, train.total_tokens or train.epochs")
    if t.on_divergence not in ("rollback", "stop"):
        problems.append(f"train.on_divergence {t.on_divergence!r} must be rollback or stop")
    if 0 < t.spike_factor <= 1:
        problems.append(f"train.spike_factor ({t.spike_factor}) must be 0 (off) or above 1: a loss at or under the median is no spike")
    if t.schedule not in ("cosine", "wsd", "constant"):
        problems.append(f"train.schedule {t.schedule!r} must be cosine, wsd or constant")
    if t.attention not in ("auto", "flex", "sdpa"):
        problems.append(f"train.attention {t.attention!r} must be auto, flex or sdpa")
    if t.precision not in PRECISIONS:
        problems.append(f"train.precision {t.precision!r} must be {', '.join(PRECISIONS[:-1])} or {PRECISIONS[-1]}")
    if t.parallel not in ("ddp", "fsdp"):
        problems.append(f"train.parallel {t.parallel!r} must be ddp or fsdp")
    if t.tracker not in ("none", "trackio", "tensorboard"):
        problems.append(f"train.tracker {t.tracker!r} must be none, trackio or tensorboard")
    if t.lr > 0 and t.min_lr > t.lr:  # the ranges themselves are checked by range_problems
        problems.append(f"train.min_lr ({t.min_lr}) must not exceed train.lr ({t.lr})")
    if t.warmup < 0 or t.checkpoints < 0 or t.log_every <= 0 or t.eval_every <= 0:
        problems.append("train.warmup and train.checkpoints must be >= 0, log_every and eval_every > 0")
    if t.optimizer not in ("adamw", "muon"):
        problems.append(f"train.optimizer {t.optimizer!r} must be adamw or muon")
    if t.muon_schedule not in ("cosine", "wsd", "constant"):
        problems.append(f"train.muon_schedule {t.muon_schedule!r} must be cosine, wsd or constant")
    if t.muon_lr <= 0 or t.muon_warmup < 0 or t.muon_weight_decay < 0 or not 0 <= t.muon_momentum < 1:
        problems.append("train.muon_lr must be positive, muon_warmup and muon_weight_decay >= 0, 0 <= muon_momentum < 1")
    if t.keep_full not in KEEP_FULL:
        problems.append(f"train.keep_full {t.keep_full!r} must be {', '.join(KEEP_FULL[:-1])} or {KEEP_FULL[-1]}")
    if t.distill_rest not in ("renormalise", "bucket"):
        problems.append(f"train.distill_rest {t.distill_rest!r} must be renormalise or bucket")
    if t.intermediate_dtype not in ("auto", "bf16", "fp32"):
        problems.append(f"train.intermediate_dtype {t.intermediate_dtype!r} must be auto, bf16 or fp32")
    if not 0 <= t.checkpoint_layers <= m.n_layer:
        problems.append(f"train.checkpoint_layers ({t.checkpoint_layers}) must be between 0 and model.n_layer ({m.n_layer})")
    d = cfg.data
    for name, value, known in (("tokenizer_kind", d.tokenizer_kind, TOKENIZER_KINDS),
                               ("normalization", d.normalization, NORMALIZATIONS), ("pretokenize", d.pretokenize, PRETOKENIZE)):
        if value not in known:
            problems.append(f"data.{name} {value!r} must be {', '.join(known[:-1])} or {known[-1]}")
    if t.gpu_max_temp and t.gpu_resume_temp and t.gpu_resume_temp >= t.gpu_max_temp:
        problems.append(f"train.gpu_resume_temp ({t.gpu_resume_temp}) must be below train.gpu_max_temp ({t.gpu_max_temp})")
    # The run's steps are known here unless they depend on the data (train.epochs); then the data checks them.
    steps_known = cfg.tokens_per_step() > 0 and (t.max_steps > 0 or (not t.epochs and t.total_tokens > 0))
    problems += mixture_problems(cfg, cfg.total_steps() if steps_known else None)
    problems += reweight_problems(cfg)
    if problems:
        raise RainError("invalid config: " + "; ".join(problems))
