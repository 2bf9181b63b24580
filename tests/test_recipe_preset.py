"""configs/rain-v2-muon.toml is rain-v2 with another training recipe, nothing else; rain-v2 keeps the seed recipe."""

import dataclasses

from rain.config import load_config, preset_names

# The training recipe: the optimiser, its schedule and regularisation (benchmarks/recipe_proxy.py's RECIPE).
RECIPE = {"optimizer", "lr", "min_lr", "warmup", "schedule", "decay_frac", "weight_decay", "beta1", "beta2", "eps",
          "grad_clip", "muon_lr", "muon_warmup", "muon_schedule", "muon_momentum", "muon_weight_decay"}


def test_rain_v2_muon_differs_from_rain_v2_only_in_the_recipe():
    assert "rain-v2-muon" in preset_names().split(", ")
    seed, muon = load_config("rain-v2"), load_config("rain-v2-muon")
    assert muon.model == seed.model and muon.data == seed.data
    changed = {f.name for f in dataclasses.fields(seed.train) if getattr(seed.train, f.name) != getattr(muon.train, f.name)}
    assert changed and changed <= RECIPE, changed - RECIPE
    assert (muon.train.optimizer, muon.train.schedule, muon.train.muon_schedule) == ("muon", "wsd", "wsd")
    assert muon.total_steps() == seed.total_steps() and muon.tokens_per_step() == seed.tokens_per_step()


def test_rain_v2_keeps_the_seed_recipe():
    t = load_config("rain-v2").train
    assert (t.optimizer, t.beta1, t.beta2, t.weight_decay, t.schedule, t.min_lr, t.grad_clip) == (
        "adamw", 0.9, 0.999, 0.1, "cosine", 0.0, 1.0)
    assert (t.lr, t.warmup) == (1.5e-3, 0.01)
