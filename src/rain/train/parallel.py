"""How a run spreads over the processes `torchrun` starts (train.parallel); one process trains the model as it is.

    step_model, optimizer = parallelize(model, cfg.train, device, world, build_training_optimizer)
    with gradient_sync(step_model, micro == last): loss.backward()   # one reduce per optimizer step
    norm = local(clip_grad_norm_(model.parameters(), 1.0))

ddp: every rank holds the whole model, gradients and optimizer state; DistributedDataParallel averages the gradients
    over the ranks (all-reduce) in the last micro-batch's backward.
fsdp: FSDP2 (`torch.distributed.fsdp.fully_shard`) on every transformer block and on the root (embeddings, final
    norm, head): each rank keeps 1/world of every parameter, gradient and optimizer state as a DTensor; a block's
    weights are all-gathered for its forward and again for its backward, and its gradients reduce-scattered
    (averaged) after the last micro-batch's backward. Under bf16 it computes in bf16 from the fp32 shards and
    reduces in fp32 (MixedPrecisionPolicy), which is what bf16-master does on one process.

Checkpoints do not depend on the parallelism: under fsdp every rank takes part in gathering the full tensors one at
a time (gathered) and rank 0 writes the files one process would; on resume every rank reads the full tensors and
keeps its own shard (sharded). So a run resumes on another number of processes or another train.parallel, and
export and eval read what they always read. torch.distributed.checkpoint's sharded format would save without the
gather, but needs a conversion before anything else could read it.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

import torch
from torch import nn

from rain.config import TrainConfig
from rain.errors import RainError
from rain.runtime import computes_bf16


def parallelize(model: nn.Module, t: TrainConfig, device: torch.device, world: int, make_optimizer):
    """(the module the step calls, the optimizer). make_optimizer(model, t, device_type) builds the optimizer: after
    sharding under fsdp (it must hold the sharded parameters), before compile and DDP otherwise (bf16-master turns
    the parameters bf16 first)."""
    if t.parallel == "fsdp" and world > 1:
        shard(model, t, device, world)
        return model, make_optimizer(model, t, device.type)
    optimizer = make_optimizer(model, t, device.type)
    step_model = torch.compile(model) if t.compile else model
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        step_model = nn.parallel.DistributedDataParallel(step_model, device_ids=ids)
    return step_model, optimizer


def shard(model: nn.Module, t: TrainConfig, device: torch.device, world: int) -> None:
    """FSDP2 in place: one shard group per transformer block (its weights gathered only while it runs), then the
    root for the rest. With train.compile each block is compiled first (in place, so the weights keep their names):
    FSDP's hooks run between the compiled blocks, not inside one graph."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if not isinstance(getattr(model, "layers", None), nn.ModuleList):
        raise RainError(f"train.parallel = fsdp shards rain's own transformer by its blocks, not a {type(model).__name__}; "
                        "use train.parallel=ddp")
    if t.precision == "bf16-master":
        raise RainError("train.precision = bf16-master does not combine with train.parallel = fsdp; use "
                        "train.precision=bf16: FSDP2 keeps the weights fp32 (sharded) and computes in bf16")
    if t.teacher:  # untested: the KL term multiplies by the whole lm_head outside the model's forward
        raise RainError("train.teacher does not combine with train.parallel = fsdp yet (the distillation term reads the "
                        "whole output matrix, which FSDP2 shards); use train.parallel=ddp")
    mesh = init_device_mesh(device.type, (world,))
    bf16 = computes_bf16(device, t.precision)
    # The blocks' inputs are not cast: the RoPE tables stay fp32, as on one process (autocast runs around the step).
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None,
                                  reduce_dtype=torch.float32 if bf16 else None, cast_forward_inputs=False)
    for block in model.layers:
        if t.compile:
            block.compile()
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)


@contextmanager
def gradient_sync(step_model: nn.Module, sync: bool):
    """Backward passes inside reduce their gradients over the ranks only when `sync`; otherwise each rank adds
    them up locally (DDP's no_sync; FSDP2 keeps unsharded gradients until the synchronised backward)."""
    if sync or not hasattr(step_model, "no_sync") and not hasattr(step_model, "set_requires_gradient_sync"):
        yield
    elif hasattr(step_model, "no_sync"):
        with step_model.no_sync():
            yield
    else:
        step_model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            step_model.set_requires_gradient_sync(True)


def local(x: torch.Tensor) -> torch.Tensor:
    """A whole tensor on this rank: a DTensor gathered (every rank must call it), any other tensor as it is. Under
    fsdp clip_grad_norm_ returns the total norm as a DTensor."""
    return x.full_tensor() if is_dtensor(x) else x


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`full` cut as the DTensor `like` is (this rank's part only, no communication); as it is when `like` is not one."""
    if not is_dtensor(like) or not torch.is_tensor(full) or full.shape != like.shape:
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(like.dtype), like.device_mesh, like.placements, src_data_rank=None)


def is_dtensor(x) -> bool:
    # Without importing torch.distributed.tensor (1.5 s, for every run that never shards): no DTensor can exist
    # before that module is loaded.
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(x, module.DTensor)


def is_sharded(model: nn.Module) -> bool:
    return any(is_dtensor(p) for p in model.parameters())


class FullState:
    """A model or optimizer as rain.checkpoint reads and writes it (state_dict, load_state_dict, a model's cfg),
    holding full tensors in place of this rank's shards: the writers get `state` (gathered beforehand, since the
    gather needs every rank and only rank 0 writes), and a load hands the module its own shard of each tensor."""

    def __init__(self, inner, state: dict | None = None):
        self.inner, self.state = inner, state
        self.cfg = getattr(inner, "cfg", None)

    def state_dict(self) -> dict:
        return self.state

    def load_state_dict(self, state: dict, strict: bool = True):
        if isinstance(self.inner, torch.optim.Optimizer):
            return self.inner.load_state_dict(_shard_optimizer_state(self.inner, state))
        own = self.inner.state_dict()
        return self.inner.load_state_dict({k: shard_like(v, own[k]) if k in own else v for k, v in state.items()},
                                          strict=strict)


def gathered(model: nn.Module, optimizer=None):
    """(model, optimizer) for rain.checkpoint.save_checkpoint: as they are, or under fsdp stand-ins holding the
    full tensors, gathered one at a time onto the CPU. Every rank must call it (only rank 0 keeps the tensors)."""
    if not is_sharded(model):
        return model, optimizer
    model_state = _gather(model.state_dict())
    if optimizer is None:
        return FullState(model, model_state), None
    opt_state = optimizer.state_dict()
    opt_state = {**opt_state, "state": {i: _gather(s) for i, s in opt_state["state"].items()}}
    return FullState(model, model_state), FullState(optimizer, opt_state)


def sharded(model: nn.Module, optimizer):
    """(model, optimizer) for rain.checkpoint.load_training_state: as they are, or under fsdp stand-ins that load
    full tensors (a checkpoint of any number of processes) into this rank's shards."""
    if not is_sharded(model):
        return model, optimizer
    return FullState(model), FullState(optimizer)


def _gather(state: dict) -> dict:
    rank0 = torch.distributed.get_rank() == 0
    out = {}
    for k, v in state.items():
        if is_dtensor(v):
            v = v.full_tensor()  # a collective: the same tensors in the same order on every rank
        out[k] = v.detach().cpu() if torch.is_tensor(v) and rank0 else v
    return out if rank0 else {}


def _shard_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> dict:
    """Optimizer state of full tensors, keyed as torch numbers the parameters (their order in param_groups, which
    sharding keeps), cut to this rank's shards of them."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    per_param = {i: {k: shard_like(v, params[int(i)]) for k, v in s.items()} for i, s in state["state"].items()}
    return {**state, "state": per_param}
