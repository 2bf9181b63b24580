"""SFT: packed windows with the loss on assistant tokens only, attention kept inside each conversation,
exact resume, the chat marker on checkpoints, and bad input refused or counted."""

import json
import random
from io import StringIO
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from rain import checkpoint
from rain.cli import main
from rain.data.tokenizer import IM_END, Tokenizer, train_bpe
from rain.errors import RainError
from rain.model import Transformer
from rain.posttrain.chat import CHAT_TEMPLATE, encode_chat
from rain.posttrain.commands import chat_loop, fit_history
from rain.posttrain.sft import SFTData, run_sft
from rain.train.trainer import train
from tests.conftest import assert_same_run, small_model_config, tiny_run_config, train_losses

CONTEXT = 128
NAMES, THINGS = ["alice", "bob", "carol", "dave"], ["apples", "books", "cars", "stones"]


def quiet(*_):
    pass


def conversations(n: int = 60, seed: int = 0) -> list[list[dict]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        who, what, k = rng.choice(NAMES), rng.choice(THINGS), rng.randint(2, 9)
        conv = [{"role": "system", "content": "be terse."}] if i % 4 == 0 and i % 3 else []
        conv += [{"role": "user", "content": f"how many {what} has {who}?"},
                 {"role": "assistant", "content": f"{who} has {k} {what}."}]
        if i % 3 == 0:
            conv += [{"role": "user", "content": f"and {rng.choice(NAMES)}?"}, {"role": "assistant", "content": f"{k + 1}."}]
        out.append(conv)
    return out


def write_jsonl(path: Path, convs) -> Path:
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in convs))
    return path


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("chat") / "chat.jsonl", conversations())


@pytest.fixture(scope="module")
def base(tiny_data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("base") / "run"
    cfg = tiny_run_config(tiny_data, max_steps=2, eval_every=2, checkpoints=0)
    cfg.model = small_model_config(context=CONTEXT)
    train(cfg, run, log=quiet)
    return run


def sft_data(chat_file, tiny_data, **kw) -> SFTData:
    args = dict(context=CONTEXT, micro_batch=4, seed=0, eval_batches=2)
    return SFTData(tiny_data / "tokenizer.json", [chat_file], **{**args, **kw})


def test_windows_pack_conversations_and_train_only_on_assistant_tokens(chat_file, tiny_data):
    data = sft_data(chat_file, tiny_data)
    tok = data.tokenizer
    s = data.stats
    assert s["conversations"]["train"] + s["conversations"]["val"] == 60 and s["conversations"]["val"] >= 1
    assert data.windows_per_epoch() < s["conversations"]["train"]  # several conversations per window
    x, y, doc = data.next_batch()
    assert x.shape == y.shape == doc.shape == (4, CONTEXT)
    for row_x, row_y, row_doc in zip(x, y, doc):
        n_docs = int(row_doc.max())  # the last id is the padding's
        for d in range(n_docs):
            seg_x, seg_y = row_x[row_doc == d], row_y[row_doc == d]
            assert seg_x[0] == tok.token_id("<|im_start|>")
            assert torch.equal(seg_x[1:][seg_y[:-1] != -100], seg_y[:-1][seg_y[:-1] != -100])  # y is x shifted
            trained = tok.decode(seg_y[seg_y != -100].tolist())
            assert trained.endswith(IM_END) and "user" not in trained and "<|im_start|>" not in trained
            assert "has" in trained and "how many" not in trained and "terse" not in trained
        assert (row_y[row_doc == n_docs] == -100).all()
    # the held-out split depends on the conversations only, and the order on (seed, epoch)
    again = sft_data(chat_file, tiny_data)
    assert again.val == data.val and again._pack_epoch(0) == data._pack_epoch(0) != data._pack_epoch(1)
    assert not {tuple(ids) for ids, _ in data.val} & {tuple(ids) for ids, _ in data.train}
    unmasked = sft_data(chat_file, tiny_data, mask_prompt=False)
    _, y_all, _ = unmasked.next_batch()
    assert (y_all != -100).sum() > (y != -100).sum()
    assert tok.decode(y_all[0][y_all[0] != -100].tolist()).count("how many") >= 1


def test_masked_tokens_contribute_exactly_zero_gradient(chat_file, tiny_data):
    torch.manual_seed(0)
    model = Transformer(small_model_config(context=CONTEXT))
    x, y, doc = sft_data(chat_file, tiny_data).next_batch()

    logits = model(x, doc_ids=doc)
    logits.retain_grad()
    F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), ignore_index=-100).backward()
    masked = y == -100
    assert masked.any() and (~masked).any()
    assert torch.count_nonzero(logits.grad[masked]) == 0
    assert (logits.grad[~masked].abs().sum(-1) > 0).all()

    def grads(inputs, targets):
        model.zero_grad()
        model(inputs, targets, doc_ids=doc).backward()
        return {k: p.grad.clone() for k, p in model.named_parameters()}

    # Padding positions see only themselves and are masked: any tokens there leave every gradient bit-identical.
    pad = doc == doc.max(dim=1, keepdim=True).values
    scrambled = torch.where(pad, torch.randint_like(x, 0, 400), x)
    reference = grads(x, y)
    assert all(torch.equal(reference[k], g) for k, g in grads(scrambled, y).items())
    # The loss equals the mean over assistant positions alone, and training on every token (--no-mask) differs.
    with torch.no_grad():
        full = model(x, doc_ids=doc)
        by_hand = F.cross_entropy(full[~masked], y[~masked])
        assert torch.allclose(model(x, y, doc_ids=doc), by_hand)
    _, y_all, _ = sft_data(chat_file, tiny_data, mask_prompt=False).next_batch()
    unmasked = grads(x, y_all)
    assert not torch.allclose(unmasked["embed.weight"], reference["embed.weight"])


def test_packing_keeps_attention_inside_each_conversation(chat_file, tiny_data):
    torch.manual_seed(0)
    model = Transformer(small_model_config(context=CONTEXT)).eval()
    data = sft_data(chat_file, tiny_data)
    x, _, doc = data.next_batch()
    with torch.no_grad():
        packed = model(x, doc_ids=doc)
        windows = [data._window(i) for i in range(4)]
        for row, window in enumerate(windows):
            start = 0
            for index in window:
                ids = data.train[index][0][:-1]
                alone = model(torch.tensor([ids]))[0]
                assert (packed[row, start : start + len(ids)] - alone).abs().max() < 1e-5
                start += len(ids)


def test_sft_run_resumes_exactly_and_marks_a_chat_model(base, chat_file, tmp_path):
    opts = dict(steps=4, batch=2, lr=1e-3, overrides=["train.log_every=1", "train.eval_every=2"], log=quiet)
    summary = run_sft(base, [chat_file], tmp_path / "straight", **opts)
    run_sft(base, [chat_file], tmp_path / "broken", stop_after=2, **opts)
    run_sft(base, [chat_file], tmp_path / "broken", resume=True, **opts)
    assert len(train_losses(tmp_path / "straight")) == 4
    assert_same_run(tmp_path / "broken", tmp_path / "straight")

    last = tmp_path / "straight/checkpoints/last"
    assert checkpoint.read(last).chat_template == CHAT_TEMPLATE and checkpoint.find(base).chat_template is None
    state = json.loads((last / "state.json").read_text())
    assert Path(state["init_from"]) == (base / "checkpoints/last").resolve()
    config = json.loads((last / "config.json").read_text())
    base_config = json.loads((base / "checkpoints/last/config.json").read_text())
    assert config["model"] == base_config["model"]
    assert config["train"]["lr"] == 1e-3 and config["train"]["max_steps"] == 4 and config["train"]["weight_decay"] == 0
    assert summary["steps"] == 4 and summary["sft"]["mask_prompt"] is True

    with pytest.raises(RainError, match="SFT data or its settings differ"):
        run_sft(base, [write_jsonl(tmp_path / "other.jsonl", conversations(seed=1))], tmp_path / "broken",
                resume=True, **opts)
    with pytest.raises(RainError, match="already holds a run"):
        run_sft(base, [chat_file], tmp_path / "straight", **opts)


def test_unmasked_run_differs(base, chat_file, tmp_path, capsys):
    common = ["sft", str(base), "--data", str(chat_file), "--steps", "2", "--batch", "2", "--lr", "1e-3"]
    assert main(common + ["--out", str(tmp_path / "masked")]) == 0
    assert main(common + ["--out", str(tmp_path / "unmasked"), "--no-mask"]) == 0
    assert "training and" in capsys.readouterr().out
    a = load_file(str(tmp_path / "masked/checkpoints/last/model.safetensors"))
    b = load_file(str(tmp_path / "unmasked/checkpoints/last/model.safetensors"))
    assert not torch.equal(a["embed.weight"], b["embed.weight"])
    state = json.loads((tmp_path / "unmasked/checkpoints/last/state.json").read_text())
    assert state["sft"]["mask_prompt"] is False


def test_bad_conversations_are_counted_and_long_ones_dropped_or_truncated(tiny_data, tmp_path):
    good = conversations(8)
    long_conv = [{"role": "user", "content": "how many apples?"}, {"role": "assistant", "content": "two."},
                 {"role": "user", "content": "and books?"}, {"role": "assistant", "content": "alice has " * 80}]
    bad = [[{"role": "user", "content": "hi"}],  # no assistant turn
           [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "hi"}]]  # roles out of order
    path = write_jsonl(tmp_path / "mixed.jsonl", good + bad + [long_conv])
    dropped = sft_data(path, tiny_data, val_fraction=0.2).stats
    assert dropped["skipped"] == {"no_assistant_turn": 1, "roles_out_of_order": 1}
    assert dropped["dropped_too_long"] == 1 and dropped["truncated"] == 0
    cut = sft_data(path, tiny_data, val_fraction=0.2, overflow="truncate")
    assert cut.stats["dropped_too_long"] == 0 and cut.stats["truncated"] == 1
    assert max(len(ids) for ids, _ in cut.train + cut.val) <= CONTEXT + 1

    with pytest.raises(RainError, match=r"no usable conversation .*no_assistant_turn 1"):
        sft_data(write_jsonl(tmp_path / "bad.jsonl", bad), tiny_data)
    with pytest.raises(RainError, match="longer than the context"):
        sft_data(write_jsonl(tmp_path / "long.jsonl", [long_conv] * 3), tiny_data)
    plain = train_bpe(["how many apples has alice"] * 20, vocab_size=300, special_tokens=["<|endoftext|>"])
    plain.save(tmp_path / "plain.json")
    with pytest.raises(RainError, match="no <|im_start|> token"):
        SFTData(tmp_path / "plain.json", [path], context=CONTEXT, micro_batch=2)


def test_cli_errors_are_one_line(base, chat_file, tmp_path, capsys):
    def error(args):
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("rain: error:") and "\n" not in err
        return err

    assert "base model without a chat template" in error(["chat", str(base)])
    assert "rain sft" in error(["chat", str(base)])
    assert "must be positive" in error(["sft", str(base), "--data", str(chat_file), "--out", str(tmp_path / "x"),
                                        "--epochs", "0"])
    assert "file not found" in error(["sft", str(base), "--data", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "x")])
    assert "no such checkpoint" in error(["sft", str(tmp_path / "nothing"), "--data", str(chat_file), "--out", str(tmp_path / "x")])
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    assert "Hugging Face folder" in error(["sft", str(hf), "--data", str(chat_file), "--out", str(tmp_path / "x")])


def test_history_is_trimmed_from_the_oldest_exchange(tiny_data):
    tok = Tokenizer.from_file(tiny_data / "tokenizer.json")
    turns = []
    for i in range(6):
        turns += [{"role": "user", "content": f"how many apples has alice {i}?"},
                  {"role": "assistant", "content": f"alice has {i} apples."}]
    system = [{"role": "system", "content": "be terse."}]
    newest = turns[-2:-1]
    ids, kept = fit_history(tok, system, turns[:-1], context=64, reserve=16)
    assert len(ids) + 16 <= 64 and kept[-1] == newest[0] and kept[0]["role"] == "user" and len(kept) < 11
    assert encode_chat(tok, system + kept)[0] == ids[: len(encode_chat(tok, system + kept)[0])]
    too_long, _ = fit_history(tok, system, [{"role": "user", "content": "alice " * 80}], context=64, reserve=16)
    assert too_long is None


def test_chat_loop_streams_replies_and_handles_commands(tiny_data):
    torch.manual_seed(0)
    model = Transformer(small_model_config(context=CONTEXT)).eval()
    tok = Tokenizer.from_file(tiny_data / "tokenizer.json")
    lines = "how many apples?\n/reset\n/what\nsay <|im_end|> now\n" + "alice " * 300 + "\nand books?\n/exit\nignored\n"
    out, err = StringIO(), StringIO()
    chat_loop(model, tok, max_tokens=5, temperature=0, stdin=StringIO(lines), stdout=out, stderr=err)
    assert "<|im" not in out.getvalue()
    messages = err.getvalue()
    assert "(history cleared)" in messages and "unknown command /what" in messages
    assert "special token" in messages and "too long for the model's context" in messages
    assert messages.count("reply cut after 5 tokens") == 2  # two replies; a random model does not stop by itself
