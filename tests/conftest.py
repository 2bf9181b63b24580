import atexit
import os
import json
import random
import shutil
import tempfile
from pathlib import Path

# A private TorchInductor cache per test session, set before torch compiles anything: a machine-wide cache that
# another process (or another torch version) writes to can hand a compiled test a corrupt or stale kernel.
# A cache the user chose on purpose is kept.
if not os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="rain-tests-inductor-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)

import pytest
import torch
from safetensors.torch import load_file

from rain.config import ModelConfig, RunConfig


def shared_data_folder() -> Path:
    """The benchmark and corpus samples: ../shared/data beside the clone, or $RAIN_SHARED_DATA when set
    (pointing it at a missing folder shows what a fresh clone with nothing beside it sees)."""
    override = os.environ.get("RAIN_SHARED_DATA")
    return Path(override) if override else Path(__file__).resolve().parents[2] / "shared" / "data"


SHARED_DATA = shared_data_folder()


def pytest_collection_modifyitems(config, items):
    # The one place that decides whether tests marked shared_data run: a fresh clone has no ../shared.
    if SHARED_DATA.is_dir():
        return
    reason = f"no shared data at {SHARED_DATA} (../shared/data beside the clone, or set RAIN_SHARED_DATA)"
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if item.get_closest_marker("shared_data"):
            item.add_marker(skip)


def small_model_config(**kw) -> ModelConfig:
    base = dict(vocab_size=512, n_layer=2, d_model=64, n_head=4, n_kv_head=2, d_ff=128, context=64, qk_norm=True)
    return ModelConfig(**{**base, **kw})


def synthetic_documents(n: int = 400, seed: int = 0):
    """Learnable text: short templated sentences and tiny programs."""
    rng = random.Random(seed)
    names = ["alice", "bob", "carol", "dave", "erin", "frank"]
    things = ["apples", "books", "cars", "stones", "lamps"]
    docs = []
    for i in range(n):
        if i % 3 == 0:
            a, b = rng.randint(1, 50), rng.randint(1, 50)
            docs.append(("math", f"Q: What is {a} + {b}?\nA: {a + b}.\n" * 3))
        elif i % 3 == 1:
            who, what = rng.choice(names), rng.choice(things)
            docs.append(("prose", f"{who} has {rng.randint(2, 9)} {what}. {who} likes {what} very much. " * 4))
        else:
            fn = rng.choice(names)
            docs.append(("code", f"def {fn}(x):\n    return x * {rng.randint(2, 9)}\n\n\nprint({fn}(3))\n"))
    return docs


def tiny_run_config(data_dir: Path | None = None, **train) -> RunConfig:
    cfg = RunConfig(model=small_model_config())
    cfg.train.max_steps = 12
    cfg.train.batch_size = 4
    cfg.train.micro_batch = 2
    cfg.train.lr = 3e-3
    cfg.train.warmup = 2
    cfg.train.log_every = 2
    cfg.train.eval_every = 4
    cfg.train.eval_batches = 2
    cfg.train.checkpoints = 3
    cfg.train.device = "cpu"
    for k, v in train.items():
        setattr(cfg.train, k, v)
    cfg.data.val_fraction = 0.05
    cfg.data.shard_tokens = 20_000
    if data_dir is not None:
        cfg.data.dir = str(data_dir)
    return cfg


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    from rain.data.prepare import prepare

    out = tmp_path_factory.mktemp("data")
    docs = synthetic_documents()
    prepare(tiny_run_config(), out, documents=lambda: iter(docs))
    return out


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    torch.set_num_threads(2)


def train_losses(run_dir) -> list[tuple[int, float]]:
    from rain.train.metrics import read_metrics

    return [(r["step"], r["loss"]) for r in read_metrics(run_dir) if r["kind"] == "train"]


def assert_same_run(a: Path, b: Path) -> None:
    """Two runs logged the same train losses and ended with bit-identical weights."""
    assert train_losses(a) == train_losses(b)
    wa = load_file(str(a / "checkpoints/last/model.safetensors"))
    wb = load_file(str(b / "checkpoints/last/model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def random_hf_folder(folder: Path, config, tokenizer: Path | None = None):
    """A transformers model of `config` with seeded random weights (norm gains away from 1), saved to folder."""
    import transformers

    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.05) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    hf.save_pretrained(folder)
    if tokenizer is not None:
        shutil.copyfile(tokenizer, folder / "tokenizer.json")
    return hf


def quick_config(**data):
    """The tiny test config with a fast `rain prepare`: one process, a small tokenizer sample; data fields set."""
    cfg = tiny_run_config()
    cfg.data.workers = 1
    cfg.data.tokenizer_sample_bytes = 100_000
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return cfg


def decoded_documents(out: Path, manifest: dict) -> list[str]:
    """Every document in a prepared folder's shards, decoded (uint16 shards)."""
    import numpy as np

    from rain.data.tokenizer import Tokenizer

    tok = Tokenizer.from_file(out / "tokenizer.json")
    tokens = np.concatenate([np.fromfile(out / r["file"], np.uint16) for s in ("train", "val") for r in manifest["splits"][s]])
    return [d for d in tok.decode(tokens.tolist()).split(tok.decode([tok.eot_id])) if d]


def small_toml(**train) -> str:
    """small_model_config with a 6-step schedule as a TOML config file's text, for tests of the CLI (`--config`)."""
    train = {"max_steps": 6, "batch_size": 4, "micro_batch": 2, "warmup": 2, "log_every": 2, "eval_every": 3,
             "eval_batches": 2, "checkpoints": 0, "device": "cpu", **train}
    model = dict(vocab_size=512, n_layer=2, d_model=64, n_head=4, n_kv_head=2, d_ff=128, context=64)
    lines = ["[model]", *(f"{k} = {v}" for k, v in model.items()), "", "[train]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in train.items()]
    return "\n".join(lines) + "\n"
