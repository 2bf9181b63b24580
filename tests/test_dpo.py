"""Preference tuning (rain dpo): the loss and its gradient against a hand computation, prompt tokens out of the
gradient, the pair readers and their skip counters, and base -> SFT -> DPO -> export -> transformers end to end
with an exact resume."""

import json
import math
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rain import checkpoint as ckpt
from rain.cli import main
from rain.data.tokenizer import train_bpe
from rain.errors import RainError
from rain.posttrain.chat import CHAT_TEMPLATE
from rain.posttrain.dpo import PreferenceLoss, read_pairs, sequence_logps
from rain.train.metrics import read_metrics
from rain.train.trainer import train
from tests.conftest import (
    SHARED_DATA,
    assert_same_run,
    small_model_config,
    tiny_run_config,
)


def quiet(*_):
    pass


def hand_logp(row: list[float], target: int) -> float:
    return row[target] - math.log(sum(math.exp(v) for v in row))


def test_dpo_loss_and_gradient_match_a_hand_computation():
    # One row: chosen (doc 0) at positions 0-3, its first two targets the prompt's; rejected (doc 1) at 4-6, its
    # first target the prompt's; padding (doc 2) at 7.
    torch.manual_seed(0)
    V, beta, rc, rr = 5, 0.3, -4.0, -3.5
    logits = torch.randn(1, 8, V, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[-100, -100, 2, 4, -100, 1, 3, -100]])
    doc = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 2]])
    sums, counts = sequence_logps(logits, y, doc, torch.tensor([[0]]))
    loss_fn = PreferenceLoss("dpo", beta)
    losses, chosen_reward, rejected_reward = loss_fn(sums, torch.tensor([[[rc, rr]]], dtype=torch.float64), counts)
    losses.sum().backward()

    rows = logits.detach()[0].tolist()
    pc = hand_logp(rows[2], 2) + hand_logp(rows[3], 4)
    pr = hand_logp(rows[5], 1) + hand_logp(rows[6], 3)
    z = beta * ((pc - rc) - (pr - rr))
    assert losses.item() == pytest.approx(-math.log(1 / (1 + math.exp(-z))), abs=1e-12)
    assert counts.tolist() == [[[2.0, 2.0]]]
    assert chosen_reward.item() == pytest.approx(beta * (pc - rc)) and rejected_reward.item() == pytest.approx(beta * (pr - rr))

    # d loss / d z = -sigmoid(-z); d z / d pc = beta, d z / d pr = -beta; d log p(t) / d logits = onehot(t) - softmax
    dz = -1 / (1 + math.exp(z))
    expected = torch.zeros(8, V, dtype=torch.float64)
    for t, sign in ((2, 1), (3, 1), (5, -1), (6, -1)):
        softmax = torch.softmax(logits.detach()[0, t], -1)
        expected[t] = dz * sign * beta * (torch.nn.functional.one_hot(y[0, t], V) - softmax)
    assert torch.allclose(logits.grad[0], expected, atol=1e-12)
    for masked in (0, 1, 4, 7):  # prompt targets and padding: no gradient at all
        assert torch.count_nonzero(logits.grad[0, masked]) == 0

    # IPO and SimPO on the same numbers
    ipo, _, _ = PreferenceLoss("ipo", beta)(sums.detach(), torch.tensor([[[rc, rr]]], dtype=torch.float64), counts)
    assert ipo.item() == pytest.approx(((pc - rc) - (pr - rr) - 1 / (2 * beta)) ** 2)
    simpo, _, _ = PreferenceLoss("simpo", 2.0, gamma=0.5)(sums.detach(), None, counts)
    assert simpo.item() == pytest.approx(math.log(1 + math.exp(-(2.0 * (pc / 2 - pr / 2) - 0.5))))


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_pair_readers_and_what_they_skip(tmp_path):
    user = {"role": "user", "content": "Hi?"}
    records = [
        {"prompt": "What is 2 + 2?", "chosen": "4.", "rejected": "5."},  # strings
        {"prompt": "Hi?", "chosen": [user, {"role": "assistant", "content": "Hello!"}],  # UltraFeedback: repeats the prompt
         "rejected": [user, {"role": "assistant", "content": "Go away."}]},
        {"chosen": [user, {"role": "assistant", "content": "Hey."}], "rejected": [user, {"role": "assistant", "content": "No."}]},
        {"prompt": "Same?", "chosen": "Yes.", "rejected": " Yes. "},  # chosen equals rejected
        {"chosen": [user, {"role": "assistant", "content": "A"}],
         "rejected": [{"role": "user", "content": "Other"}, {"role": "assistant", "content": "B"}]},  # prompts differ
    ]
    data = read_pairs([write_jsonl(tmp_path / "p.jsonl", records)])
    assert [(p.prompt[-1]["content"], p.chosen, p.rejected) for p in data.pairs] == [
        ("What is 2 + 2?", "4.", "5."), ("Hi?", "Hello!", "Go away."), ("Hi?", "Hey.", "No.")]
    assert data.pairs[1].prompt == [user]
    assert data.skipped == {"chosen_equals_rejected": 1, "prompts_differ": 1}
    with pytest.raises(RainError, match=r"p2.jsonl line 1: missing field 'rejected'"):
        read_pairs([write_jsonl(tmp_path / "p2.jsonl", [{"prompt": "x", "chosen": "y"}])])


@pytest.mark.shared_data
def test_oasst_trees_become_pairs_by_rank():
    data = read_pairs([SHARED_DATA / "sft/oasst_en_100/en_100_tree.jsonl"])
    first = json.loads((SHARED_DATA / "sft/oasst_en_100/en_100_tree.jsonl").read_text().splitlines()[0])["prompt"]
    ranked = sorted((r for r in first["replies"] if r.get("rank") is not None and not r.get("deleted")),
                    key=lambda r: r["rank"])
    assert len(data.pairs) > 200
    ours = [p for p in data.pairs if p.prompt == [{"role": "user", "content": first["text"]}]]
    assert [(p.chosen, p.rejected) for p in ours] == [(ranked[0]["text"], r["text"]) for r in ranked[1:]]


QUESTIONS = [(a, b) for a in range(1, 5) for b in range(2, 6)]  # 16 prompts


def pair_records():
    return [{"prompt": f"What is {a} + {b}?", "chosen": f"{a + b}.", "rejected": f"I do not know, {a}."}
            for a, b in QUESTIONS]


@pytest.fixture(scope="module")
def sft_run(tiny_data, tmp_path_factory):
    """base -> SFT on the chosen answers (tiny, a few steps)."""
    root = tmp_path_factory.mktemp("dpo")
    cfg = tiny_run_config(tiny_data, max_steps=2, eval_every=2, checkpoints=0)
    cfg.model = small_model_config(context=128)
    chats = [{"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["chosen"]}]}
             for r in pair_records()]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("rain.train.trainer.plot_losses", lambda run_dir: None)  # not under test here
        train(cfg, root / "base", log=quiet)
        assert main(["sft", str(root / "base"), "--data", str(write_jsonl(root / "chat.jsonl", chats)), "--out",
                     str(root / "sft"), "--steps", "2", "--batch", "4", "--set", "train.micro_batch=4"]) == 0
    return root


def dpo_args(root, out, *extra, steps=4):
    return ["dpo", str(root / "sft"), "--data", str(root / "pairs.jsonl"), "--out", str(out), "--steps", str(steps),
            "--batch", "2", "--lr", "3e-3", "--set", "train.micro_batch=2", "--set", "train.eval_every=2", "--val-fraction", "0.2", *map(str, extra)]


def test_sft_to_dpo_to_transformers(sft_run, tmp_path, capsys, monkeypatch):
    transformers = pytest.importorskip("transformers")
    monkeypatch.setattr("rain.train.trainer.plot_losses", lambda run_dir: None)
    root = sft_run
    long_prompt = {"prompt": "word " * 200, "chosen": "a", "rejected": "b"}
    write_jsonl(root / "pairs.jsonl", pair_records() + [long_prompt])
    assert main(dpo_args(root, tmp_path / "dpo")) == 0
    out = capsys.readouterr().out
    assert "prompt_longer_than_context 1" in out
    vals = [r for r in read_metrics(tmp_path / "dpo") if r["kind"] == "val"]
    assert [v["step"] for v in vals] == [0, 2, 4]
    assert vals[0]["val_reward_margin"] == pytest.approx(0, abs=1e-4)  # the policy starts as the reference
    assert vals[-1]["val_reward_margin"] > 0.05 and vals[-1]["val_reward_accuracy"] > 0.5  # it learnt the preference
    assert vals[0]["val_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert (tmp_path / "dpo/reference_logps.safetensors").is_file()

    # an interrupted run resumes exactly (the reference log-probs read back from the run folder)
    assert main(dpo_args(root, tmp_path / "cut", "--stop-after", 2)) == 0
    assert main(dpo_args(root, tmp_path / "cut", "--resume")) == 0
    assert_same_run(tmp_path / "dpo", tmp_path / "cut")
    # the reference computed online: at the start the policy is the reference (margin 0, loss log 2), and it trains
    assert main(dpo_args(root, tmp_path / "online", "--reference-logps", "online", steps=1)) == 0
    online = [r for r in read_metrics(tmp_path / "online") if r["kind"] == "val"]
    assert online[0]["val_reward_margin"] == pytest.approx(0, abs=1e-4) and online[-1]["step"] == 1
    assert online[0]["val_loss"] == pytest.approx(vals[0]["val_loss"], abs=1e-5)
    assert not (tmp_path / "online/reference_logps.safetensors").exists()

    state = json.loads((tmp_path / "dpo/checkpoints/last/state.json").read_text())
    assert state["chat_template"] == CHAT_TEMPLATE and state["dpo"]["loss"] == "dpo"
    assert state["dpo"]["skipped"] == {"prompt_longer_than_context": 1} and state["dpo"]["reference_logps"] == "precompute"

    # export: transformers loads it with the chat template and equal logits; the card names the stage and its data
    assert main(["export", str(tmp_path / "dpo"), str(tmp_path / "hf")]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert "chat_template" in json.loads((tmp_path / "hf/tokenizer_config.json").read_text())
    model, cfg = ckpt.load_model(tmp_path / "dpo")
    x = torch.randint(0, cfg.model.vocab_size, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (hf(x).logits - model(x)).abs().max().item() < 1e-4
    card = (tmp_path / "hf/README.md").read_text()
    for fact in ("supervised fine-tuning for chat", "preference tuning (DPO)", "`pairs.jsonl`",
                 f"{state['dpo']['pairs']['train']} training", "Little alignment"):
        assert fact in card, fact
    assert "no preference tuning" not in card and "preference tuning only on the pairs named below" in card


def test_dpo_bad_input_is_one_line(sft_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("rain.train.trainer.plot_losses", lambda run_dir: None)
    root = sft_run
    write_jsonl(root / "pairs.jsonl", pair_records())

    def error(args, fragment):
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("rain: error:") and "\n" not in err and fragment in err, err

    # a reference with another tokenizer (vocabulary): refused before training
    other = tmp_path / "other"
    other.mkdir()
    for f in ("config.json", "model.safetensors", "state.json"):
        (other / f).write_bytes((root / "sft/checkpoints/last" / f).read_bytes())
    train_bpe(["some other text entirely"] * 50, vocab_size=300).save(other / "tokenizer.json")
    error(dpo_args(root, tmp_path / "x", "--reference", other), "tokeni")
    # only identical pairs: nothing left, said with the count; a base model (no chat template) is allowed with a
    # warning, said before the data is read
    write_jsonl(tmp_path / "same.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "a"}] * 3)
    assert main(["dpo", str(root / "base"), "--data", str(tmp_path / "same.jsonl"), "--out", str(tmp_path / "y")]) == 2
    captured = capsys.readouterr()
    assert "warning:" in captured.out and "without a chat template" in captured.out
    assert "chosen_equals_rejected 3" in captured.err and "\n" not in captured.err.strip()
