"""After pretraining, end to end on tiny shapes: a base model is continued-pretrained on another mix, fine-tuned on
the shared chat data, chatted with, exported, loaded by transformers with equal logits and generation, and its
model card reads true. Also: initialising from a Hugging Face Qwen3/Llama folder keeps the logits."""

import json
import os
import shutil
from io import StringIO

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from rain.cli import main  # noqa: E402
from rain.data.prepare import prepare  # noqa: E402
from rain.data.tokenizer import IM_END, train_bpe  # noqa: E402
from rain.errors import RainError  # noqa: E402
from rain.model.generate import generate  # noqa: E402
from rain.posttrain.chat import CHAT_TEMPLATE, encode_prompt  # noqa: E402
from rain.posttrain.sft import read_conversations, split_conversations  # noqa: E402
from rain import checkpoint as ckpt  # noqa: E402
from rain.train.batches import PretrainData  # noqa: E402
from rain.train.metrics import read_metrics  # noqa: E402
from rain.train.trainer import build_model, train  # noqa: E402
from rain.train.validation import source_losses, validation_report  # noqa: E402
from tests.conftest import SHARED_DATA, random_hf_folder, small_model_config, tiny_run_config  # noqa: E402

ALPACA = SHARED_DATA / "sft" / "rasbt_instruction_data" / "instruction-data.json"
CPU = torch.device("cpu")
CONFIG_TOML = """
[model]
vocab_size = 512
n_layer = 2
d_model = 64
n_head = 4
n_kv_head = 2
d_ff = 128
context = 128
qk_norm = true

[train]
max_steps = 6
batch_size = 4
micro_batch = 2
lr = 1e-3
warmup = 2
log_every = 1
eval_every = 3
eval_batches = 2
checkpoints = 0
device = "cpu"
"""


def quiet(*_):
    pass


def val_loss_of(model, cfg) -> float:
    data = PretrainData(cfg)
    return validation_report(source_losses(model, data.val_batches(), CPU), [], {})["val_loss"]


def cli(args, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


def one_line_error(result, fragment):
    code, _, err = result
    assert code == 2 and err.startswith("rain: error:") and "\n" not in err and fragment in err, err


@pytest.mark.shared_data
def test_base_to_chat_model_to_transformers(tiny_data, tmp_path, capsys, monkeypatch):
    # 1. a base model on the synthetic mix
    base_cfg = tiny_run_config(tiny_data, max_steps=6, eval_every=3, checkpoints=0)
    base_cfg.model = small_model_config(context=128)
    train(base_cfg, tmp_path / "base", log=quiet)

    # 2. continued pretraining on another mix (web text and math word problems), same tokenizer
    docs = [("c4", json.loads(line)["text"][:2000])
            for line in (SHARED_DATA / "corpus/c4_demo/c4_demo.jsonl").read_text().splitlines()[:60]]
    docs += [("gsm8k", (lambda r: f"{r['question']}\n{r['answer']}")(json.loads(line)))
             for line in (SHARED_DATA / "corpus/gsm8k_train/train.jsonl").read_text().splitlines()[:150]]
    mix_cfg = tiny_run_config()
    mix_cfg.data.tokenizer = str(tiny_data / "tokenizer.json")
    prepare(mix_cfg, tmp_path / "mix", documents=lambda: iter(docs), log=quiet)
    config = tmp_path / "small.toml"
    config.write_text(CONFIG_TOML)
    train_args = ["train", "--config", config, "--data", tmp_path / "mix", "--init-from", tmp_path / "base"]
    assert cli(train_args + ["--out", tmp_path / "cpt"], capsys)[0] == 0
    records = read_metrics(tmp_path / "cpt")
    first_train = next(r for r in records if r["kind"] == "train")
    assert first_train["step"] == 1 and first_train["lr"] < 1e-3  # its own warm-up
    cpt_cfg = ckpt.load_config(tmp_path / "cpt/checkpoints/last")
    base_model, _ = ckpt.load_model(tmp_path / "base/checkpoints/last")
    assert abs(records[0]["val_loss"] - val_loss_of(base_model, cpt_cfg)) < 1e-4  # it started from the base weights
    state = json.loads((tmp_path / "cpt/checkpoints/last/state.json").read_text())
    assert state["init_from"] == str(tmp_path / "base") and state["data_dir"] == str(tmp_path / "mix")

    # ... refusing another shape or another tokenizer, leaving nothing behind
    one_line_error(cli(train_args + ["--out", tmp_path / "x", "--set", "model.d_model=32"], capsys), "--set model.d_model=64")
    other_cfg = tiny_run_config()
    prepare(other_cfg, tmp_path / "other_tok", documents=lambda: iter(docs[:80]), log=quiet)
    one_line_error(cli(["train", "--config", config, "--data", tmp_path / "other_tok", "--init-from", tmp_path / "base",
                        "--out", tmp_path / "y"], capsys), "tokeni")

    # 3. SFT on the shortest Alpaca-style conversations of the shared chat data
    records = sorted(json.loads(ALPACA.read_text()), key=lambda r: len(r["instruction"] + r["input"] + r["output"]))
    chat_data = tmp_path / "short.json"
    chat_data.write_text(json.dumps(records[:16]))
    sft_args = ["sft", tmp_path / "cpt", "--data", chat_data, "--out", tmp_path / "sft", "--steps", "24", "--batch", "4",
                "--lr", "1e-2", "--set", "train.eval_every=12", "--set", "train.micro_batch=4"]
    assert cli(sft_args, capsys)[0] == 0
    sft_last = tmp_path / "sft/checkpoints/last"
    assert json.loads((sft_last / "state.json").read_text())["chat_template"] == CHAT_TEMPLATE

    # 4. `rain chat`: a streamed answer that ends at <|im_end|> (no cut note), then /exit
    train_convs, _ = split_conversations(read_conversations([chat_data]).conversations, 0.05)
    question = train_convs[0][0]["content"]
    monkeypatch.setattr("sys.stdin", StringIO(f"{question}\n/exit\nnot read\n"))
    code, out, err = cli(["chat", tmp_path / "sft", "--temperature", "0", "--max-tokens", "40"], capsys)
    assert code == 0 and out.strip() and "<|im" not in out and "reply cut" not in err
    model, cfg = ckpt.load_model(sft_last)
    tok = PretrainData(cpt_cfg).tokenizer
    stops = (tok.eot_id, tok.token_id(IM_END))
    prompt = encode_prompt(tok, [{"role": "user", "content": question}])
    ours = generate(model, prompt, max_new_tokens=40, temperature=0, stop_ids=stops)
    assert out == tok.decode(ours) + "\n" and len(ours) < 40

    # 5. export: transformers loads it with the chat template, equal logits and equal greedy generation
    export = tmp_path / "export"
    code, out, _ = cli(["export", tmp_path / "sft", export, "--format", "hf"], capsys)
    assert code == 0 and "chat model" in out
    one_line_error(cli(["export", tmp_path / "sft", export], capsys), "--overwrite")
    hf = transformers.AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(export)
    ids = hf_tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert list(ids) == prompt
    x = torch.randint(0, cfg.model.vocab_size, (2, 100), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (hf(x).logits - model(x)).abs().max().item() < 1e-4
    theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False)[0, len(prompt):].tolist()
    assert [t for t in theirs if t not in stops] == ours and theirs[len(ours)] == tok.token_id(IM_END)

    # 6. the model card tells the truth: parameters, the three stages' data, not evaluated until results exist
    card = (export / "README.md").read_text()
    n_params = sum(p.numel() for p in hf.parameters())
    assert f"{n_params:,} parameters" in card and n_params == model.num_params()
    for fact in ("pretraining from scratch", "continued pretraining", "supervised fine-tuning for chat", "| math |",
                 "| c4 |", "| gsm8k |", f"`{chat_data.name}`", "Not evaluated: no benchmark results",
                 "Not evaluated for safety", "Languages not measured", "No alignment",
                 "memorised", f"{state['tokens']:,} tokens seen"):
        assert fact in card, fact
    (tmp_path / "sft/eval").mkdir()
    sft_state = json.loads((sft_last / "state.json").read_text())
    row = {"checkpoint": "last", "step": sft_state["step"], "tokens": sft_state["tokens"], "task": "arc_easy",
           "n_shot": 0, "metric": "acc", "value": 0.27, "stderr": 0.012, "items": 570}
    earlier = {**row, "step": 12, "tokens": 6144, "value": 0.11}  # another checkpoint's: not shown
    (tmp_path / "sft/eval/results.jsonl").write_text(json.dumps(earlier) + "\n")
    assert cli(["export", tmp_path / "sft", export, "--overwrite"], capsys)[0] == 0
    assert "Not evaluated: no benchmark results" in (export / "README.md").read_text()
    (tmp_path / "sft/eval/results.jsonl").write_text(json.dumps(earlier) + "\n" + json.dumps(row) + "\n")
    assert cli(["export", tmp_path / "sft", export, "--overwrite"], capsys)[0] == 0
    card = (export / "README.md").read_text()
    assert f"| arc_easy | 0 | acc | 0.2700 | 0.0120 | 570 | last | {sft_state['tokens']:,} |" in card
    assert "Not evaluated: no benchmark" not in card and "0.1100" not in card

    # a base model: no chat template, and `rain chat` says so
    assert cli(["export", tmp_path / "cpt", tmp_path / "base_export"], capsys)[0] == 0
    assert "chat_template" not in json.loads((tmp_path / "base_export/tokenizer_config.json").read_text())
    assert "a base model (text completion only)" in (tmp_path / "base_export/README.md").read_text()
    one_line_error(cli(["chat", tmp_path / "cpt"], capsys), "base model")


HF_SHAPE = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, max_position_embeddings=64, rms_norm_eps=1e-6)


def test_init_from_hugging_face_folder_keeps_the_logits(tiny_data, tmp_path):
    tokenizer = tiny_data / "tokenizer.json"
    qwen = random_hf_folder(tmp_path / "qwen", transformers.Qwen3Config(**HF_SHAPE, tie_word_embeddings=True), tokenizer)
    cfg = tiny_run_config(tiny_data, max_steps=2, eval_every=2, checkpoints=0)
    x = torch.randint(0, 512, (2, 60), generator=torch.Generator().manual_seed(0))
    model = build_model(cfg, CPU, tmp_path / "qwen", tokenizer).eval()
    with torch.no_grad():
        assert (qwen(x).logits - model(x)).abs().max().item() < 1e-4
    summary = train(cfg, tmp_path / "run", init_from=tmp_path / "qwen", log=quiet)
    assert summary["init_from"] == str(tmp_path / "qwen")
    assert abs(summary["first_val_loss"] - val_loss_of(model, cfg)) < 1e-4

    # a Llama folder (no QK-norm, untied head) needs the run's [model] to say so
    llama = random_hf_folder(tmp_path / "llama", transformers.LlamaConfig(**HF_SHAPE, tie_word_embeddings=False), tokenizer)
    with pytest.raises(RainError, match="--set model.qk_norm=false --set model.tie_embeddings=false"):
        build_model(cfg, CPU, tmp_path / "llama", tokenizer)
    cfg.model.qk_norm = cfg.model.tie_embeddings = False
    model = build_model(cfg, CPU, tmp_path / "llama", tokenizer).eval()
    with torch.no_grad():
        assert (llama(x).logits - model(x)).abs().max().item() < 1e-4


def test_init_from_refuses_other_architectures_shapes_and_tokenizers(tiny_data, tmp_path):
    cfg = tiny_run_config(tiny_data)
    tokenizer = tiny_data / "tokenizer.json"
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2/config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(RainError, match="gpt2.*not supported"):
        build_model(cfg, CPU, tmp_path / "gpt2", tokenizer)
    random_hf_folder(tmp_path / "wide", transformers.Qwen3Config(**{**HF_SHAPE, "hidden_size": 128}), tokenizer)
    with pytest.raises(RainError, match=r"d_model 128 vs 64.*--set model.d_model=128"):
        build_model(cfg, CPU, tmp_path / "wide", tokenizer)
    random_hf_folder(tmp_path / "no_tok", transformers.Qwen3Config(**HF_SHAPE, tie_word_embeddings=True), None)
    with pytest.raises(RainError, match="no tokenizer.json"):
        build_model(cfg, CPU, tmp_path / "no_tok", tokenizer)
    shutil.copyfile(tokenizer, tmp_path / "no_tok/tokenizer.json")
    build_model(cfg, CPU, tmp_path / "no_tok", tokenizer)
    other = tmp_path / "other.json"
    train_bpe(["some other text entirely"] * 50, vocab_size=300).save(other)
    with pytest.raises(RainError, match="must be tokenised with the parent's tokenizer"):
        build_model(cfg, CPU, tmp_path / "no_tok", other)
