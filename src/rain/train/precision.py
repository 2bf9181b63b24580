"""train.precision = "bf16-master": bf16 weights in the model (so bf16 activations and gradients, no autocast), fp32
master weights and fp32 optimizer state behind the optimizer interface. The one implementation that the Trainer,
`rain bench --precision bf16-master` and the micro-batch probe share (build_training_optimizer).

    optimizer = build_training_optimizer(model, cfg.train, "cuda")   # MasterWeights: the model's params now bf16
    loss.backward()                                                  # bf16 gradients (accumulated in bf16)
    clip_grad_norm_(optimizer.grads_to_masters(), 1.0)               # moved onto the masters, clipped in fp32
    optimizer.step()                                                 # the fp32 step; the model gets the result in bf16

A checkpoint holds the masters as its weights (checkpoint_weights: fp32, as an fp32 run's) and the inner optimizer's
state, so a resume restores exactly what the optimizer steps and rounds the model from it the same way
(restore_model): a run stopped and resumed equals one run straight, bit for bit."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from rain.config import TrainConfig
from rain.train.optim import build_optimizer


class MasterWeights:
    """bf16 weights in `model`, fp32 master copies (a copy of the module, made before the cast) that `make_optimizer`'s
    optimizer steps. It looks like that optimizer to the Trainer: param_groups (the LR schedule sets them), step,
    zero_grad, state_dict, load_state_dict. Parameters only turn bf16: buffers (RoPE tables) stay as they are."""

    def __init__(self, model: nn.Module, make_optimizer: Callable[[nn.Module], torch.optim.Optimizer]):
        self.master = copy.deepcopy(model)
        for p in model.parameters():  # tied parameters are listed once, in the same order in both modules
            p.data = p.data.to(torch.bfloat16)
        self.params, self.masters = list(model.parameters()), list(self.master.parameters())
        self.optimizer = make_optimizer(self.master)

    @property
    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups  # a property: load_state_dict replaces the inner optimizer's list

    @torch.no_grad()
    def grads_to_masters(self) -> list[torch.Tensor]:
        """Move the model's gradients onto the masters in fp32 (freeing the bf16 ones) and return the masters, whose
        gradients clipping then measures and scales in fp32. step() does it too, if nothing did before."""
        for p, m in zip(self.params, self.masters):
            if p.grad is not None:
                m.grad = p.grad.float()
                p.grad = None
        return self.masters

    @torch.no_grad()
    def step(self) -> None:
        self.grads_to_masters()
        self.optimizer.step()
        self.restore_model()

    @torch.no_grad()
    def restore_model(self) -> None:
        """The model's weights from the masters, rounded to bf16 (after a step, and after loading a checkpoint)."""
        torch._foreach_copy_(self.params, self.masters)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.optimizer.load_state_dict(state_dict)


def build_training_optimizer(model: nn.Module, t: TrainConfig, device_type: str):
    """The optimizer a run at t.precision steps: build_optimizer's over the model's parameters, or for bf16-master a
    MasterWeights around it (which turns the model's parameters bf16: call it before torch.compile and DDP)."""
    if t.precision == "bf16-master":
        return MasterWeights(model, lambda master: build_optimizer(master, t, device_type))
    return build_optimizer(model, t, device_type)


def clip_params(model: nn.Module, optimizer) -> list[torch.Tensor]:
    """The parameters whose gradients the step clips: the fp32 masters under bf16-master, else the model's."""
    return optimizer.grads_to_masters() if isinstance(optimizer, MasterWeights) else list(model.parameters())


def checkpoint_weights(model: nn.Module, optimizer) -> nn.Module:
    """The module whose weights a checkpoint holds and a resume loads: the fp32 masters under bf16-master (so the
    weights saved are the ones the optimizer steps, and eval and export read fp32), else the model."""
    return optimizer.master if isinstance(optimizer, MasterWeights) else model


def restore_model(optimizer) -> None:
    """After a checkpoint was loaded into checkpoint_weights: the bf16 model from the masters (nothing otherwise)."""
    if isinstance(optimizer, MasterWeights):
        optimizer.restore_model()
