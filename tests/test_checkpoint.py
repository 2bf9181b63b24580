"""rain.checkpoint, the one reader of checkpoint and run folders: Checkpoint values, finding a run's checkpoints,
telling Hugging Face folders from rain's, loading either as a model, following init_from back, and one-line
errors that name the broken file."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rain import checkpoint as ckpt
from rain.cli import main
from rain.data.tokenizer import Tokenizer
from rain.errors import RainError
from rain.train.trainer import train
from tests.conftest import random_hf_folder, tiny_run_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# transformers' names for tests/conftest.py's small_model_config (the tiny runs' [model])
HF_SHAPE = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, max_position_embeddings=64, rms_norm_eps=1e-6)
TOKENS_PER_STEP = 4 * 64  # tiny_run_config: batch 4 windows of 64 tokens


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory):
    """base: 4 steps from scratch, checkpoints at steps 2 and 4 (plus best and last); cpt: 2 steps from base."""
    root = tmp_path_factory.mktemp("runs")
    train(tiny_run_config(tiny_data, max_steps=4, eval_every=2, checkpoints=2), root / "base", log=quiet)
    train(tiny_run_config(tiny_data, max_steps=2, eval_every=2, checkpoints=0), root / "cpt", init_from=root / "base",
          log=quiet)
    return root


def hf_folder(path, tokenizer, arch="qwen3"):
    transformers = pytest.importorskip("transformers")
    if arch == "qwen3":
        config = transformers.Qwen3Config(**HF_SHAPE, tie_word_embeddings=True)
    else:
        config = transformers.LlamaConfig(**HF_SHAPE, tie_word_embeddings=False)
    return random_hf_folder(path, config, tokenizer)


def test_a_checkpoint_is_one_value_with_its_config_and_records(runs, tiny_data):
    last = runs / "base/checkpoints/last"
    base = ckpt.read(last)
    assert (base.folder, base.name, base.step, base.tokens) == (last, "last", 4, 4 * TOKENS_PER_STEP)
    assert base.config == ckpt.load_config(runs / "base") and base.config.model == tiny_run_config().model
    assert Path(base.data_dir).resolve() == tiny_data.resolve()
    assert base.parent is None and base.chat_template is None
    data_tokenizer = Tokenizer.from_file(tiny_data / "tokenizer.json")
    assert ckpt.tokenizer(base).encode("alice has 3 apples") == data_tokenizer.encode("alice has 3 apples")

    cpt = ckpt.read(runs / "cpt/checkpoints/last")
    assert cpt.parent == (runs / "base").resolve() and cpt.step == 2


def test_find_and_find_all(runs, tmp_path):
    assert ckpt.find(runs / "base").folder == runs / "base/checkpoints/last"  # a run: its newest checkpoint
    step2 = runs / "base/checkpoints/step_0000002"
    assert ckpt.find(step2).step == 2  # a checkpoint: as given
    found = ckpt.find_all(runs / "base")  # every checkpoint in token order, once per step (not again as best/last)
    assert [(c.name, c.tokens) for c in found] == [("step_0000002", 2 * TOKENS_PER_STEP),
                                                   ("step_0000004", 4 * TOKENS_PER_STEP)]
    assert [c.name for c in ckpt.find_all(step2)] == ["step_0000002"]

    crashed = tmp_path / "crashed"  # a save interrupted mid-swap leaves the previous checkpoint as .old-last
    shutil.copytree(runs / "cpt", crashed)
    os.replace(crashed / "checkpoints/last", crashed / "checkpoints/.old-last")
    found = ckpt.find(crashed)
    assert (found.folder.name, found.name, found.step) == (".old-last", "last", 2)

    with pytest.raises(RainError, match="no such checkpoint or run folder"):
        ckpt.find(tmp_path / "missing")
    (tmp_path / "fresh/checkpoints").mkdir(parents=True)
    with pytest.raises(RainError, match="no checkpoints/last yet"):
        ckpt.find(tmp_path / "fresh")
    with pytest.raises(RainError, match="no checkpoints yet"):
        ckpt.find_all(tmp_path / "fresh")


def test_is_hf_folder_tells_transformers_folders_from_rain_ones(runs, tiny_data, tmp_path):
    hf_folder(tmp_path / "qwen", tiny_data / "tokenizer.json")
    assert ckpt.is_hf_folder(tmp_path / "qwen")
    assert not ckpt.is_hf_folder(runs / "base/checkpoints/last")
    assert not ckpt.is_hf_folder(runs / "base")
    assert not ckpt.is_hf_folder(tmp_path / "missing")
    with pytest.raises(RainError, match="is a Hugging Face folder, not a rain checkpoint.*--init-from"):
        ckpt.find(tmp_path / "qwen")


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_load_model_of_a_hugging_face_folder_computes_transformers_logits(arch, tiny_data, tmp_path):
    hf = hf_folder(tmp_path / arch, tiny_data / "tokenizer.json", arch).eval()
    model, cfg = ckpt.load_model(tmp_path / arch)
    assert (cfg.model.qk_norm, cfg.model.tie_embeddings) == ((True, True) if arch == "qwen3" else (False, False))
    x = torch.randint(0, 512, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (hf(x).logits - model(x)).abs().max().item() < 1e-4


def test_load_model_of_a_run_holds_its_last_weights(runs):
    model, cfg = ckpt.load_model(runs / "base")
    saved = load_file(str(runs / "base/checkpoints/last/model.safetensors"))
    assert not model.training and cfg.model == tiny_run_config().model
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())


def test_lineage_follows_init_from_to_the_first_parent(runs, tiny_data, tmp_path):
    stages = ckpt.lineage(ckpt.find(runs / "cpt"))
    lasts = [(runs / name / "checkpoints/last").resolve() for name in ("base", "cpt")]
    assert [s.folder.resolve() for s in stages] == lasts

    hf_folder(tmp_path / "qwen", tiny_data / "tokenizer.json")
    train(tiny_run_config(tiny_data, max_steps=2, eval_every=2, checkpoints=0), tmp_path / "from_hf",
          init_from=tmp_path / "qwen", log=quiet)
    first, run = ckpt.lineage(ckpt.find(tmp_path / "from_hf"))
    assert first == ckpt.HFModel((tmp_path / "qwen").resolve(), ("Qwen3ForCausalLM",)) and run.step == 2

    orphan = tmp_path / "orphan"  # a parent deleted since: named, not followed
    shutil.copytree(runs / "cpt/checkpoints/last", orphan)
    state = json.loads((orphan / "state.json").read_text())
    (orphan / "state.json").write_text(json.dumps({**state, "init_from": str(tmp_path / "gone")}))
    assert [type(s) for s in ckpt.lineage(ckpt.read(orphan))] == [ckpt.MissingParent, ckpt.Checkpoint]
    (orphan / "state.json").write_text(json.dumps({**state, "init_from": str(orphan)}))  # a loop ends
    assert len(ckpt.lineage(ckpt.read(orphan))) == 1


@pytest.mark.parametrize("name, content", [("state.json", '{"step": 4,'), ("state.json", "[4]"),
                                           ("config.json", '{"model": {'), ("config.json", None)])
def test_a_garbled_or_missing_file_is_a_one_line_error_naming_it(name, content, runs, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(runs / "base/checkpoints/last", broken)
    if content is None:
        (broken / name).unlink()
    else:
        (broken / name).write_text(content)
    for read in (ckpt.read, ckpt.find, ckpt.find_all, ckpt.load_model):
        with pytest.raises(RainError) as error:
            read(broken)
        assert name in str(error.value) and str(broken) in str(error.value) and "\n" not in str(error.value)
    assert main(["export", str(broken), str(tmp_path / "export")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rain: error:") and name in err and "\n" not in err
