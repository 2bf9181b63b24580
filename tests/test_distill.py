"""Distillation (rain.train.distill): the KL term as computed by hand, top-k of every token equal to the full KL,
weight 0 equal to plain training bit for bit, a distilled run that logs distill_loss, resumes exactly and keeps the
teacher out of its checkpoints, SFT's prompt tokens out of the KL, and teachers it cannot use refused in one line."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from rain import checkpoint as ckpt
from rain.cli import main
from rain.config import TrainConfig
from rain.data.tokenizer import Tokenizer
from rain.errors import RainError
from rain.export.card import model_card
from rain.posttrain.sft import SFTData, run_sft
from rain.train.distill import Distiller, distill_kl, load_teacher
from rain.train.metrics import read_metrics
from rain.train.trainer import train
from tests.conftest import (assert_same_run, random_hf_folder, small_model_config, small_toml, tiny_run_config,
                            train_losses)
from tests.test_sft import CONTEXT, base, chat_file  # noqa: F401 - fixtures


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def teacher(tiny_data, tmp_path_factory) -> Path:
    """A rain run of another shape than the students (3 x 96), with their tokenizer and a longer context."""
    run = tmp_path_factory.mktemp("teacher") / "run"
    cfg = tiny_run_config(tiny_data, max_steps=2, eval_every=2, checkpoints=0)
    cfg.model = small_model_config(n_layer=3, d_model=96, context=CONTEXT)
    train(cfg, run, log=quiet)
    return run


def softmax(xs, t):
    e = [math.exp(x / t) for x in xs]
    return [v / sum(e) for v in e]


def test_kl_is_t_squared_forward_kl_over_counted_rows_top_k_renormalised_or_with_a_rest_bucket():
    T = 2.0
    h = torch.tensor([[1.0, 2.0, 0.0, -0.5], [0.5, -1.0, 3.0, 0.0], [2.0, 0.0, 1.0, 1.5]], requires_grad=True)
    w = torch.eye(4, requires_grad=True)  # logits = h
    teacher = torch.tensor([[2.0, 0.0, 1.0, -1.0], [0.0, 0.0, 0.0, 0.0], [-1.0, 1.0, 0.5, 0.25]])
    valid = torch.tensor([True, False, True])  # row 1 is a prompt or padding token: out, as in the cross-entropy

    def by_hand(k, bucket=False):
        total = 0.0
        for r in (0, 2):
            kept = sorted(range(4), key=lambda i: -teacher[r, i].item())[:k]
            q = softmax(h[r].tolist(), T)
            if bucket:  # the kept tokens at their true probabilities, the rest as one outcome on both sides
                p = [softmax(teacher[r].tolist(), T)[i] for i in kept]
                p_rest, q_rest = 1 - sum(p), 1 - sum(q[i] for i in kept)
                total += p_rest * math.log(p_rest / q_rest)
            else:  # the kept tokens' probabilities, renormalised
                p = softmax([teacher[r, i].item() for i in kept], T)
            total += sum(pi * math.log(pi / q[i]) for pi, i in zip(p, kept))
        return T * T * total / 2

    full = distill_kl(h, w, teacher, None, valid, T, chunk=2)
    assert full.item() == pytest.approx(by_hand(4), rel=1e-6)
    values, index = teacher.topk(2, dim=-1)
    assert distill_kl(h, w, values, index, valid, T, chunk=2).item() == pytest.approx(by_hand(2), rel=1e-6)
    lse = torch.logsumexp(teacher / T, dim=-1)
    bucket = distill_kl(h, w, values, index, valid, T, chunk=2, lse=lse)
    assert bucket.item() == pytest.approx(by_hand(2, bucket=True), rel=1e-6)

    # The gradients worked out in the forward pass are autograd's of the plain formulas.
    def reference_grads(kl_rows):
        h.grad = w.grad = None
        (kl_rows(F.log_softmax(h @ w.T / T, -1))[valid].mean() * T * T).backward()
        return h.grad.clone(), w.grad.clone()

    def bucket_rows(logq):
        p, q = (teacher / T - lse[:, None]).exp().gather(1, index), logq.exp().gather(1, index)
        p_rest, q_rest = 1 - p.sum(-1), 1 - q.sum(-1)
        return (p * (p.log() - q.log())).sum(-1) + p_rest * (p_rest.log() - q_rest.log())

    p = F.softmax(teacher / T, -1)
    for loss, rows in ((full, lambda logq: (p * (p.log() - logq)).sum(-1)), (bucket, bucket_rows)):
        h.grad = w.grad = None
        loss.backward()
        grads = h.grad.clone(), w.grad.clone()
        expected = reference_grads(rows)
        assert torch.allclose(grads[0], expected[0], atol=1e-6) and torch.allclose(grads[1], expected[1], atol=1e-6)
        assert grads[0][1].abs().sum() == 0  # nothing from the uncounted row

    values, index = teacher.topk(4, dim=-1)  # every token kept: the full KL
    h.grad = w.grad = None
    top = distill_kl(h, w, values, index, valid, T, chunk=2)
    top.backward()
    grads = h.grad.clone(), w.grad.clone()
    expected = reference_grads(lambda logq: (p * (p.log() - logq)).sum(-1))
    assert top.item() == pytest.approx(full.item(), rel=1e-6)
    assert torch.allclose(grads[0], expected[0], atol=1e-6) and torch.allclose(grads[1], expected[1], atol=1e-6)


def run(tmp_path, tiny_data, name, stop_after=None, resume=False, **t):
    cfg = tiny_run_config(tiny_data, max_steps=4, eval_every=4, checkpoints=0, **t)
    return train(cfg, tmp_path / name, log=quiet, stop_after=stop_after, resume=resume)


@pytest.fixture(scope="module")
def plain(tiny_data, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("plain")
    run(folder, tiny_data, "run")
    return folder / "run"


def test_weight_zero_is_plain_training_exactly(teacher, plain, tiny_data, tmp_path):
    run(tmp_path, tiny_data, "zero", teacher=str(teacher), distill_weight=0.0)
    assert_same_run(plain, tmp_path / "zero")  # the same losses and weights, bit for bit


def test_a_distilled_run_logs_its_kl_resumes_exactly_and_keeps_no_teacher(teacher, plain, tiny_data, tmp_path):
    distilled = dict(teacher=str(teacher), distill_weight=1.0, distill_temperature=2.0, distill_top_k=16,
                     distill_rest="bucket")
    summary = run(tmp_path, tiny_data, "distilled", **distilled)
    run(tmp_path, tiny_data, "broken", stop_after=2, **distilled)
    run(tmp_path, tiny_data, "broken", resume=True, **distilled)  # the teacher loaded again from config.json's path
    assert_same_run(tmp_path / "distilled", tmp_path / "broken")
    records = [[r for r in read_metrics(tmp_path / n) if r["kind"] == "train"] for n in ("distilled", "broken")]
    assert [r["distill_loss"] for r in records[0]] == [r["distill_loss"] for r in records[1]]
    assert len(records[0]) == 2 and all(r["distill_loss"] > 0 and "loss" in r for r in records[0])
    assert train_losses(tmp_path / "distilled")[-1] != train_losses(plain)[-1]  # the KL's gradient moved the weights

    assert summary["teacher"] == str((teacher / "checkpoints/last").resolve())
    assert summary["distill"] == {"weight": 1.0, "temperature": 2.0, "top_k": 16, "rest": "bucket"}
    keys = [load_file(str(r / "checkpoints/last/model.safetensors")).keys() for r in (tmp_path / "distilled", plain)]
    assert keys[0] == keys[1]  # the student's weights, nothing of the teacher's
    state = json.loads((tmp_path / "distilled/checkpoints/last/state.json").read_text())
    assert state["teacher"] == summary["teacher"]
    card = model_card(ckpt.find(tmp_path / "distilled"), 1000, 900, Tokenizer.from_file(tiny_data / "tokenizer.json"), "kd")
    assert ("Distilled from run `run`, checkpoint `last`: the loss adds 1.0 x T^2 x KL(teacher || student) at "
            "temperature T = 2.0 over the teacher's top 16 tokens and the rest of its probability as one more "
            "outcome.") in card


def test_sft_prompt_tokens_are_out_of_the_kl(teacher, base, chat_file, tiny_data, tmp_path):  # noqa: F811
    tok = tiny_data / "tokenizer.json"
    x, y, doc = SFTData(tok, [chat_file], context=CONTEXT, micro_batch=4, seed=0).next_batch()
    masked = (y == -100).flatten()
    assert masked.any() and (~masked).any()
    distiller = Distiller(TrainConfig(teacher=str(teacher), distill_temperature=2.0), small_model_config(context=CONTEXT),
                          tok, torch.device("cpu"))
    logits, _, _ = distiller.teacher_logits(x, doc)
    h = torch.randn(x.numel(), 64, requires_grad=True)
    w = torch.randn(small_model_config().vocab_size, 64)
    kl = distill_kl(h, w, logits, None, ~masked, 2.0, chunk=100)
    kl.backward()
    grad = h.grad.clone()
    h.grad = None
    noise = torch.where(masked[:, None], torch.randn_like(logits) * 10, 0.0)  # the teacher changed on prompt tokens
    again = distill_kl(h, w, logits + noise, None, ~masked, 2.0, chunk=100)
    again.backward()
    assert again.item() == kl.item() and torch.equal(h.grad, grad) and grad[masked].abs().sum() == 0

    out = tmp_path / "sft"
    summary = run_sft(base, [chat_file], out, steps=2, batch=4, lr=1e-3, log=quiet,
                      overrides=[f"train.teacher={json.dumps(str(teacher))}", "train.log_every=1"])
    assert summary["teacher"] == str((teacher / "checkpoints/last").resolve())
    assert all(r["distill_loss"] > 0 for r in read_metrics(out) if r["kind"] == "train")


def test_teachers_it_cannot_use_are_refused_in_one_line(teacher, tiny_data, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(teacher / "checkpoints/last", other)
    vocab = json.loads((other / "tokenizer.json").read_text())
    first = next(iter(vocab["model"]["vocab"]))
    vocab["model"]["vocab"]["zz" + first] = vocab["model"]["vocab"].pop(first)  # one token spelled otherwise
    (other / "tokenizer.json").write_text(json.dumps(vocab))
    config = tmp_path / "small.toml"
    config.write_text(small_toml())
    assert main(["train", "--config", str(config), "--data", str(tiny_data), "--out", str(tmp_path / "x"),
                 "--teacher", str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "tokenizer is not this run's" in err
    assert not (tmp_path / "x").exists()  # refused before the run folder: a corrected retry needs no --overwrite

    tok, cpu = tiny_data / "tokenizer.json", torch.device("cpu")
    with pytest.raises(RainError, match="vocab_size 512 vs the student's 640"):
        load_teacher(teacher, small_model_config(vocab_size=640), tok, cpu)
    with pytest.raises(RainError, match="context 128 is shorter than the student's 256"):
        load_teacher(teacher, small_model_config(context=256), tok, cpu)
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    shutil.copyfile(tok, gpt2 / "tokenizer.json")
    with pytest.raises(RainError) as refused:
        load_teacher(gpt2, small_model_config(), tok, cpu)
    assert "\n" not in str(refused.value)
    with pytest.raises(RainError, match="no such folder"):
        load_teacher(tmp_path / "nothing", small_model_config(), tok, cpu)


def test_a_hugging_face_folder_with_the_run_s_tokenizer_is_a_teacher(tiny_data, tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=512, hidden_size=96, intermediate_size=128, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      rms_norm_eps=1e-6, tie_word_embeddings=False)
    hf = random_hf_folder(tmp_path / "llama", config, tiny_data / "tokenizer.json")
    model, folder = load_teacher(tmp_path / "llama", small_model_config(), tiny_data / "tokenizer.json", torch.device("cpu"))
    assert folder == (tmp_path / "llama").resolve() and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    ids = torch.randint(0, 512, (2, 16))
    with torch.no_grad():
        assert torch.allclose(model(ids), hf(ids).logits, atol=1e-4)  # the distribution the student is pulled to
