"""The GPUs rain knows: memory, bf16 dense peak (the MFU denominator), board power, and where each figure comes from.
One table for MFU in the training records (rain.train.metrics.peak_flops), `rain bench` and `rain plan`.

Peaks are dense bf16 tensor FLOP/s (no 2:4 sparsity) with fp32 accumulate, which is what bf16 autocast training
runs. Datacenter parts run bf16 with fp32 accumulate at full rate; GeForce cards at half their fp16-accumulate
rate, and their whitepapers list both (the RTX 4090's 165.2 TFLOPS is the fp32-accumulate figure, 330.3 the fp16).
Power is the board's maximum (TDP / TGP) from the same source. On the RTX 5090, bf16 matmuls with fp32 accumulate
have been measured above its 209.5 TFLOPS spec (a tensor-core microbenchmark near 370, torch.matmul ~224 at one
shape: main-horse.github.io/posts/5090-mm-perf), so an MFU figure there can exceed what the spec suggests."""

from __future__ import annotations

import re
from dataclasses import dataclass

from rain.errors import RainError


@dataclass(frozen=True)
class Gpu:
    key: str  # the name `rain plan --gpu` takes
    label: str
    memory_gb: float
    bf16_tflops: float  # dense, fp32 accumulate
    power_w: float
    source: str
    device_name: str = ""  # a regex matched against torch.cuda.get_device_name (first match in GPUS wins)

    @property
    def peak_flops(self) -> float:
        return self.bf16_tflops * 1e12


# Ordered so that the more specific device-name pattern comes first (H100 PCIe before H100, L40S before L4).
GPUS = (
    Gpu("h200", "H200 SXM", 141, 989, 700, "NVIDIA H200 Tensor Core GPU datasheet (BF16 1,979 TFLOPS with sparsity)",
        r"H200"),
    Gpu("h100-pcie", "H100 PCIe", 80, 756, 350, "NVIDIA H100 Tensor Core GPU datasheet, PCIe (BF16 1,513 with "
        "sparsity)", r"H100.*PCIe"),
    Gpu("h100-sxm", "H100 SXM", 80, 989, 700, "NVIDIA H100 Tensor Core GPU datasheet, SXM (BF16 1,979 with sparsity)",
        r"H100"),
    Gpu("a100-40gb", "A100 40GB SXM", 40, 312, 400, "NVIDIA A100 Tensor Core GPU datasheet (BF16 624 with sparsity)",
        r"A100.*40GB"),
    Gpu("a100-80gb", "A100 80GB SXM", 80, 312, 400, "NVIDIA A100 Tensor Core GPU datasheet (BF16 624 with sparsity)",
        r"A100"),
    Gpu("l40s", "L40S", 48, 362.05, 350, "NVIDIA L40S datasheet (BF16 733 with sparsity)", r"L40S"),
    Gpu("l4", "L4", 24, 121, 72, "NVIDIA L4 Tensor Core GPU datasheet (BF16 242 with sparsity)", r"\bL4\b"),
    Gpu("a10", "A10", 24, 125, 150, "NVIDIA A10 Tensor Core GPU datasheet (BF16 250 with sparsity)", r"\bA10\b"),
    Gpu("rtx-5090", "GeForce RTX 5090", 32, 209.5, 575, "NVIDIA RTX Blackwell GPU architecture whitepaper (FP16/BF16 "
        "tensor, FP32 accumulate; 419 with FP16 accumulate)", r"5090"),
    Gpu("rtx-4090", "GeForce RTX 4090", 24, 165.2, 450, "NVIDIA Ada Lovelace GPU architecture whitepaper (BF16 "
        "tensor, FP32 accumulate; 330.3 FP16 with FP16 accumulate)", r"4090"),
    Gpu("rtx-4080", "GeForce RTX 4080", 16, 97.5, 320, "NVIDIA Ada Lovelace GPU architecture whitepaper (BF16 "
        "tensor, FP32 accumulate; 194.9 FP16 with FP16 accumulate)", r"4080(?! SUPER)"),
    Gpu("rtx-3090", "GeForce RTX 3090", 24, 71, 350, "NVIDIA Ampere GA102 GPU architecture whitepaper (BF16 tensor, "
        "FP32 accumulate; 142 FP16 with FP16 accumulate)", r"3090(?! Ti)"),
    Gpu("rtx-3080", "GeForce RTX 3080 (10 GB)", 10, 59.5, 320, "NVIDIA Ampere GA102 GPU architecture whitepaper (BF16 "
        "tensor, FP32 accumulate; 119 FP16 with FP16 accumulate)", r"3080(?! Ti)"),
)
# Shorter names people type for the usual variant.
ALIASES = {"h100": "h100-sxm", "a100": "a100-80gb", "h200-sxm": "h200"}


def _norm(name: str) -> str:
    name = name.lower()
    for word in ("nvidia", "geforce", "rtx", "tesla"):
        name = name.replace(word, "")
    return re.sub(r"[^a-z0-9]", "", name)


def gpu_named(name: str) -> Gpu:
    """The table's GPU for a name as people write it (H100, "RTX 4090", a100-40gb); RainError listing the known."""
    wanted = _norm(name)
    for alias, key in ALIASES.items():
        if _norm(alias) == wanted:
            wanted = _norm(key)
    for gpu in GPUS:
        if _norm(gpu.key) == wanted or _norm(gpu.label) == wanted:
            return gpu
    raise RainError(f"--gpu {name!r} is not in rain's GPU table; known: {', '.join(g.key for g in GPUS)} "
                    "(or give --peak-tflops and --memory-gb for another)")


def gpu_for_device(device_name: str) -> Gpu | None:
    """The table's GPU for a CUDA device name (torch.cuda.get_device_name), None if it is not in the table."""
    return next((g for g in GPUS if re.search(g.device_name, device_name, re.IGNORECASE)), None)
