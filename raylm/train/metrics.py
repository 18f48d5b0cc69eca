"""Throughput, MFU and memory figures, and rank 0's TensorBoard writer and ``metrics.jsonl``.

MFU (model FLOPs utilisation, PaLM appendix B): achieved model FLOPs per second over the
device's peak, with ``ModelConfig.flops_per_token`` (6N + attention) as the model FLOPs of a
token; recomputation from activation checkpointing does not count.
"""

from __future__ import annotations

import json
import os
import resource
from typing import Any

import torch

# dense bf16 peak TFLOP/s (no sparsity) by device-name fragment, the first match wins
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0,
               "V100": 125.0, "T4": 65.0}


def peak_tflops(device: torch.device, configured: float | None = None) -> float | None:
    """Per-device peak for MFU: the configured value, else looked up from the GPU name."""
    if configured is not None:
        return configured
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_TFLOPS.items():
        if key in name:
            return value
    return None


def mfu(tokens_per_s_per_device: float, flops_per_token: float, peak: float | None) -> float | None:
    if not peak:
        return None
    return tokens_per_s_per_device * flops_per_token / (peak * 1e12)


def peak_memory_gb(device: torch.device) -> float:
    """Peak allocated accelerator memory, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class TensorBoard:
    """Scalars (and text) to ``<folder>``; a no-op where ``folder`` is None (ranks other than 0)."""

    def __init__(self, folder: str | None) -> None:
        self.writer = None
        if folder:
            from torch.utils.tensorboard import SummaryWriter

            os.makedirs(folder, exist_ok=True)
            self.writer = SummaryWriter(folder)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in metrics.items():
            if isinstance(value, str):  # generation samples: TensorBoard's text tab
                self.writer.add_text(key, value, step)
            elif isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class MetricsLog:
    """Rank 0's record of a run in a local run folder: ``metrics.jsonl`` (one JSON object per
    report) and ``tensorboard/``; a no-op where ``run_dir`` is None (other ranks, object-store
    runs, whose driver keeps the log: ``raylm.train.runlog.RunLog``)."""

    def __init__(self, run_dir: str | None) -> None:
        self.tb = TensorBoard(os.path.join(run_dir, "tensorboard") if run_dir else None)
        self.path = os.path.join(run_dir, "metrics.jsonl") if run_dir else None

    def __call__(self, metrics: dict[str, Any]) -> None:
        if self.path is None:
            return
        self.tb.log(metrics["step"], {k: v for k, v in metrics.items() if k != "step"})
        with open(self.path, "a") as f:
            f.write(json.dumps(metrics) + "\n")

    def close(self) -> None:
        self.tb.close()
