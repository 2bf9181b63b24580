import gc
import json
import math

import pytest
import torch

from rain.cli import main
from rain.config import load_config
from rain.errors import RainError
from rain.model import Transformer, transformer
from rain.train import benchmark, commands, trainer
from rain.train.trainer import Prefetcher, train
from tests.conftest import assert_same_run, small_model_config, tiny_run_config

SMALL = ["model.vocab_size=512", "model.n_layer=2", "model.d_model=64", "model.n_head=4", "model.n_kv_head=2",
         "model.d_ff=128", "model.context=32", "train.device='cpu'"]


def quiet(*_):
    pass


MOE = ["model.n_experts=4", "model.experts_per_token=2", "model.expert_d_ff=48"]


@pytest.mark.parametrize("extra, hf_model", [([], "Qwen3ForCausalLM"), (MOE, "Qwen3MoeForCausalLM")])
def test_bench_times_rain_and_transformers_of_the_same_shape(extra, hf_model):
    cfg = load_config("tiny", SMALL + extra)
    r = benchmark.bench(cfg, micro_batch=2, precision="fp32", compile_model=False, steps=2, warmup=1, log=quiet)
    rain, hf = r["rain"], r["transformers"]
    assert hf["model"] == hf_model and rain["parameters"] == hf["parameters"]
    assert rain["flops_per_token"] == hf["flops_per_token"]
    for x in (rain, hf):
        assert x["tokens_per_s"] > 0 and x["mfu"] is None  # no MFU denominator for a CPU
        assert x["flops_per_s"] == pytest.approx(x["tokens_per_s"] * x["flops_per_token"], rel=1e-2)
        assert set(x["split_ms"]) == {"forward_backward", "optimizer", "data"}
        assert sum(x["split_ms"].values()) <= x["step_ms"] * 1.05
        assert abs(x["final_loss"] - math.log(512)) < 0.5  # random tokens
    assert r["speedup_vs_transformers"] == pytest.approx(rain["tokens_per_s"] / hf["tokens_per_s"], rel=1e-2)
    assert r["speedup_runs"] == [r["speedup_vs_transformers"]]
    assert (r["micro_batch"], r["seq_len"], r["device_type"]) == (2, 32, "cpu")


def test_bench_command_prints_json_for_a_llama_shape_with_muon_and_bf16_weights(capsys):
    sets = [a for s in SMALL + ["model.qk_norm=false"] for a in ("--set", s)]
    code = main(["bench", "--preset", "tiny", *sets, "--micro-batch", "2", "--steps", "1", "--warmup", "0",
                 "--optimizer", "muon", "--precision", "bf16-master", "--json"])
    assert code == 0
    r = json.loads(capsys.readouterr().out)
    assert r["transformers"]["model"] == "LlamaForCausalLM"
    assert (r["optimizer"], r["precision"], r["preset"]) == ("muon", "bf16-master", "tiny")


def test_bench_table_and_user_errors(capsys):
    sets = [a for s in SMALL for a in ("--set", s)]
    assert main(["bench", *sets, "--micro-batch", "2", "--steps", "1", "--warmup", "0", "--no-hf"]) == 0
    out = capsys.readouterr().out
    assert "rain (Transformer)" in out and "transformers" not in out.split("\n", 1)[1]
    assert main(["bench", *sets, "--micro-batch", "two"]) == 2
    assert "--micro-batch 'two'" in capsys.readouterr().err
    assert main(["bench", *sets, "--steps", "0"]) == 2


def test_bench_follows_a_preset_that_asks_for_auto_micro_batch(capsys):
    # rain-v2 sets train.auto_micro_batch: `rain bench` without --micro-batch must probe, not take 64 blindly.
    sets = [a for s in SMALL + ["train.micro_batch=2", "train.batch_size=4", "train.auto_micro_batch=true"]
            for a in ("--set", s)]
    assert main(["bench", *sets, "--steps", "1", "--warmup", "0", "--no-hf", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["micro_batch"] == 2 and "micro_batch_probe" in r  # a CPU has no memory to probe: the preset's value


def spy_on_trainer_steps(monkeypatch) -> list:
    """Record, for each Trainer.step call, the model and optimizer it steps."""
    calls, real_step = [], trainer.Trainer.step

    def step(self):
        calls.append((type(self.model).__name__, type(self.optimizer).__name__,
                      {p.dtype for p in self.model.parameters()}))
        return real_step(self)

    monkeypatch.setattr(trainer.Trainer, "step", step)
    return calls


def test_bench_times_the_trainers_own_step_for_both_models(monkeypatch):
    calls = spy_on_trainer_steps(monkeypatch)
    cfg = load_config("tiny", SMALL)
    benchmark.bench(cfg, micro_batch=2, precision="fp32", compile_model=False, steps=2, warmup=1, log=quiet)
    assert [c[0] for c in calls] == ["Transformer"] * 3 + ["TransformersLoss"] * 3  # warm-up + timed, each
    calls.clear()
    benchmark.bench(cfg, micro_batch=2, precision="bf16-master", compile_model=False, steps=1, warmup=0,
                    compare_hf=False, log=quiet)
    assert calls == [("Transformer", "MasterWeights", {torch.bfloat16})]


def test_disabling_sdpa_gqa_switches_the_benched_model_not_the_module(monkeypatch):
    seen, real_forward = [], transformer.Attention.forward

    def forward(self, *args, **kwargs):
        seen.append((transformer.SDPA_GQA, self.sdpa_gqa))
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(transformer.Attention, "forward", forward)
    cfg = load_config("tiny", SMALL)  # 4 query heads over 2 K/V heads
    default = transformer.SDPA_GQA
    benchmark.measure("rain", cfg, torch.device("cpu"), "fp32", False, 2, steps=1, warmup=0, disable={"sdpa-gqa"})
    assert seen and set(seen) == {(default, False)}  # the module's default untouched while bench runs
    assert transformer.Attention(cfg.model).sdpa_gqa == default


def test_every_fast_path_part_can_be_switched_off_and_typos_are_refused():
    cfg = load_config("tiny", SMALL)
    r = benchmark.bench(cfg, micro_batch=2, precision="fp32", compile_model=False, steps=1, warmup=1,
                        compare_hf=False, disable=benchmark.FAST_PATH, log=quiet)
    assert r["disabled"] == sorted(benchmark.FAST_PATH) and abs(r["rain"]["final_loss"] - math.log(512)) < 0.5
    with pytest.raises(RainError, match="--disable 'prefetc' must be one of chunked-loss"):
        benchmark.measure("rain", cfg, torch.device("cpu"), "fp32", False, 2, steps=1, warmup=0, disable={"prefetc"})


def test_the_cli_offers_exactly_the_precisions_and_parts_bench_knows():
    # commands spells them again so that parsing loads no torch
    assert commands.PRECISIONS == tuple(benchmark.PRECISIONS) and commands.FAST_PATH == benchmark.FAST_PATH


def test_the_full_logits_ablation_computes_the_same_loss():
    torch.manual_seed(0)
    chunked = Transformer(small_model_config())
    full = benchmark.FullLogitsTransformer(small_model_config())
    full.load_state_dict(chunked.state_dict())
    x, y = torch.randint(0, 512, (2, 32)), torch.randint(0, 512, (2, 32))
    assert torch.allclose(full(x, y), chunked(x, y), atol=1e-5)


class Counter:
    def __init__(self):
        self.consumed = 0

    def next_batch(self):
        self.consumed += 1
        return torch.tensor([self.consumed]), torch.tensor([-self.consumed]), None

    def state_dict(self):
        return {"consumed": self.consumed}


def test_prefetcher_reports_the_position_of_the_batches_handed_out():
    plain, ahead = Prefetcher(Counter(), torch.device("cpu")), Prefetcher(Counter(), torch.device("cpu"), ahead=True)
    for i in range(1, 4):
        a, b = plain.next_batch(), ahead.next_batch()
        assert int(a[0]) == int(b[0]) == i and b[2] is None
        assert plain.state_dict() == ahead.state_dict() == {"consumed": i}
    assert ahead.data.consumed == 4  # one batch in flight


def test_resume_is_bit_identical_with_batches_prefetched(tiny_data, tmp_path, monkeypatch):
    cfg = tiny_run_config(tiny_data, max_steps=4, log_every=1, eval_every=2, checkpoints=0)
    train(cfg, tmp_path / "straight", log=quiet)
    monkeypatch.setattr(trainer, "Prefetcher", lambda data, device: Prefetcher(data, device, ahead=True))
    train(cfg, tmp_path / "broken", stop_after=1, log=quiet)
    train(cfg, tmp_path / "broken", resume=True, log=quiet)
    assert gc.isenabled()
    assert_same_run(tmp_path / "broken", tmp_path / "straight")
