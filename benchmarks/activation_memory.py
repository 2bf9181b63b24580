"""Estimate a preset's training memory per micro-batch without a GPU: the bytes autograd saves for backward
(counted exactly with saved-tensor hooks during an eager forward on the CPU, bf16 autocast as on CUDA) plus
the model state (fp32 weights, grads and AdamW moments: 16 bytes per parameter). Transients (one block's
recomputation under checkpointing, a loss chunk's softmax, backward temporaries) and the CUDA caching
allocator's slack come on top, and torch.compile usually saves less than eager: the GPU figure is what
`rain bench` measures (peak_memory_gb); this is the estimate to plan with before one is at hand.

    python benchmarks/activation_memory.py --preset rain-v2 --micro-batch 64
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from rain.config import load_config
from rain.model import Transformer

GB = 1e9


def saved_bytes(model: Transformer, batch: int, full_logits: bool = False) -> int:
    """Bytes of the distinct storages autograd keeps for backward after one forward of `batch` sequences."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    T, V = model.cfg.context, model.cfg.vocab_size
    x = torch.randint(0, V, (batch, T + 1))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        if full_logits:
            F.cross_entropy(model(x[:, :-1]).float().flatten(0, 1), x[:, 1:].flatten())
        else:
            model(x[:, :-1], x[:, 1:])
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for ptr, n in storages.items() if ptr not in weights)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="rain-v2")
    p.add_argument("--micro-batch", type=int, nargs="+", default=[8, 16, 32, 64])
    args = p.parse_args(argv)
    cfg = load_config(args.preset)
    model = Transformer(cfg.model)
    state = 16 * model.num_params()
    L, T = cfg.model.n_layer, cfg.model.context
    print(f"{args.preset}: {model.num_params():,} parameters, model state {state / GB:.2f} GB; "
          f"saved activations per sequence of {T} tokens (eager, bf16 autocast, CPU):")
    per_seq = {}
    for label, layers, full in [("no checkpointing", 0, False), (f"checkpoint all {L} blocks", L, False),
                                ("no checkpointing, full-logits loss", 0, True)]:
        model.checkpoint_layers = layers
        one, two = saved_bytes(model, 1, full), saved_bytes(model, 2, full)
        per_seq[label] = (two - one, one - (two - one))
        print(f"  {label:<40} {(two - one) / GB:.3f} GB/sequence "
              f"({(two - one) / (T * L) / 1e3:.1f} KB per token per block)")
    print("estimated peak = model state + saved activations (transients and allocator slack not included):")
    print("  micro-batch " + "".join(f"{b:>10}" for b in args.micro_batch))
    for label, (slope, fixed) in per_seq.items():
        cells = "".join(f"{(state + fixed + b * slope) / GB:>9.1f}G" for b in args.micro_batch)
        print(f"  {label:<40}{cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
