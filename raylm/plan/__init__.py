"""``raylm plan``: what a training run needs per GPU, how long it takes and what it costs.

Memory per GPU, by component (bytes; ZeRO's accounting, Rajbhandari et al. 2020, for our
model and our strategies):

* parameters, gradients, optimizer state (AdamW: two fp32 moments), for DDP (replicated;
  gradients are DDP's bucket views), FSDP2 (all three sharded over the data-parallel ranks,
  fp32 master weights) and DeepSpeed ZeRO 1/2/3 (parameters replicated in 1/2, sharded in 3;
  every stage keeps an fp32 master copy of its partition and, as measured, only its
  gradient partition plus one bucket: DeepSpeed's stage 1 reduces buckets during backward
  too). Tensor parallelism divides the block matrices by its degree first.
* ``gathered``: what a sharded strategy holds unsharded at the end of the forward pass
  (FSDP2 keeps the root's embedding, norm and output projection gathered for the backward;
  ZeRO-3 keeps at most a bucket of parameters live).
* activations: the tensors the forward pass keeps for backward, counted from this model's
  code (``raylm.model.transformer``) per token and block: the RMSNorm inputs, normalised
  values and inverse RMS, q, k, v and the attention output with its log-sum-exp, the SwiGLU
  inputs and products; plus SDPA's dense document mask, the final norm, the logits and the
  fp32 log-softmax. Checkpointed modules keep only their input. Under DDP's bf16 autocast the
  residual stream and norms stay fp32, every linear saves its own bf16 cast of its input, and
  the bf16 casts of the weights are saved too. With ``compile`` (``scale.compile``) a block
  keeps what Inductor's partitioner hands its backward (its input, the linears' bf16 inputs,
  q, k, v, the attention output and the products around SwiGLU; the norms and the silu are
  recomputed) and the compiled loss keeps the logits with their log-sum-exp, no fp32
  log-softmax (``_block_activations`` says which tensors; ``tests/test_plan.py`` reads them
  from a real block on CPU).
* ``backward_extra``: the largest transient of the backward pass (the logits' gradient, fp32,
  or in the compute dtype when the loss is compiled; and one block recomputed under
  checkpointing); it counts in the total.

The total is the larger of two peaks: the start of the backward pass (everything above;
gradients only where they have a buffer of their own through the forward, DDP's buckets when
it wraps and ZeRO's partitions, else backward makes them and ``zero_grad`` frees them) and the
optimizer step (parameters, gradients, optimizer state). Measured on one H200 it is within
+1% to +4% of compiled runs and +1% to +7% of eager ones (125m to 7b,
``benchmarks/results/plan_validation.json``, ``gpu_rows``).

Time: ``tokens_per_step * flops_per_token / (gpus * peak * mfu)`` at a stated MFU, times 4/3
for the recomputed share under checkpointing. Tokens: Chinchilla-optimal ``D = 20 N``
(Hoffmann et al. 2022) unless given. The planner is checked against measured memory by
``benchmarks/plan_validation.py`` (``benchmarks/results/plan_validation.json``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

from raylm.config import ConfigError, from_dict
from raylm.model.config import ModelConfig, expand_flavor

# name -> (memory GiB usable by tensors, dense bf16 peak TFLOP/s)
GPUS: dict[str, tuple[float, float]] = {
    "H100": (79.1, 989.0), "H100-PCIe": (79.1, 756.0), "H200": (139.8, 989.0), "A100-80GB": (79.1, 312.0),
    "A100-40GB": (39.4, 312.0), "L40S": (44.4, 362.0), "A10G": (22.0, 125.0), "L4": (22.0, 121.0),
}
CHECKPOINTING = ("none", "mlp", "attention", "every_n", "full")
# fastest first: the recommendation is the first of these that fits
STRATEGIES = ("ddp", "zero1", "zero2", "fsdp2", "zero3", "zero3_offload")
GiB = 2**30


@dataclasses.dataclass(kw_only=True)
class PlanConfig:
    """A training run to size. ``model`` takes a ``flavor`` like ``raylm train``'s config."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    seq_len: int | None = None
    """Tokens per sequence (None: ``model.max_seq_len``)."""
    micro_batch_size: int = 1
    """Sequences per GPU per forward/backward."""
    grad_accum: int = 1
    num_gpus: int = 8
    tensor_parallel: int = 1
    gpu: str = "H100"
    """One of ``GPUS`` (memory and peak); ``gpu_memory_gb`` / ``peak_tflops`` override them."""
    gpu_memory_gb: float | None = None
    peak_tflops: float | None = None
    precision: Literal["bf16", "fp32"] = "bf16"
    """Weights and activations in compute (bf16 mixed precision keeps fp32 master weights)."""
    compile: bool = False
    """The blocks and the loss are ``torch.compile``d (``scale.compile``): fewer activations kept
    for backward and no fp32 log-softmax (see ``_block_activations``)."""
    packed_sdpa: bool = False
    """Rows are packed documents and attention is SDPA with a dense document mask (no
    flash-attn): SDPA keeps an additive ``L x L`` mask per sequence and block."""
    checkpoint_every: int = 2
    """The n of the ``every_n`` checkpointing mode."""
    bucket_size: int = 50_000_000
    """DeepSpeed's reduce / all-gather bucket in elements (``scale.deepspeed.bucket_size``)."""
    mfu: float = 0.4
    """Model FLOPs utilisation the step time is estimated at."""
    tokens: float | None = None
    """Training tokens (None: Chinchilla-optimal, 20 per parameter)."""
    price_on_demand: float = 3.0
    """Currency per GPU-hour, on-demand."""
    price_spot: float = 1.2
    """Currency per GPU-hour, spot / preemptible."""
    headroom: float = 0.9
    """Share of the GPU's memory a plan may use (allocator fragmentation, NCCL, CUDA context)."""

    def validate(self) -> None:
        if self.gpu not in GPUS and (self.gpu_memory_gb is None or self.peak_tflops is None):
            raise ConfigError(f"gpu: {self.gpu!r} is not one of {sorted(GPUS)}; or give gpu_memory_gb and peak_tflops")
        for name in ("micro_batch_size", "grad_accum", "num_gpus", "tensor_parallel", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: {getattr(self, name)} must be >= 1")
        if self.num_gpus % self.tensor_parallel:
            raise ConfigError(f"tensor_parallel: {self.tensor_parallel} must divide num_gpus ({self.num_gpus})")
        if not 0 < self.mfu <= 1 or not 0 < self.headroom <= 1:
            raise ConfigError(f"mfu ({self.mfu}) and headroom ({self.headroom}) must be in (0, 1]")
        if self.seq_len is not None and not 1 <= self.seq_len <= self.model.max_seq_len:
            raise ConfigError(f"seq_len: {self.seq_len} must be in [1, model.max_seq_len={self.model.max_seq_len}]")

    @property
    def length(self) -> int:
        return self.seq_len or self.model.max_seq_len

    @property
    def memory_bytes(self) -> float:
        return (self.gpu_memory_gb if self.gpu_memory_gb is not None else GPUS[self.gpu][0]) * GiB

    @property
    def peak(self) -> float:
        return self.peak_tflops if self.peak_tflops is not None else GPUS[self.gpu][1]


def plan_config(data: dict[str, Any], origin: str = "config") -> PlanConfig:
    """A validated PlanConfig from a nested dict; ``model.flavor`` names a size."""
    data = expand_flavor(data, origin)
    try:
        return from_dict(PlanConfig, data)
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None


def _counts(m: ModelConfig, tp: int) -> dict[str, float]:
    """Parameters on one tensor-parallel rank: blocks' matrices split by ``tp``; the root
    (embedding, final norm, output projection), the blocks' norms and the multi-token-prediction
    modules (not tensor-parallel) replicated."""
    d, kv = m.d_model, m.kv_heads * m.head_dim
    block_matrices = 2 * d * d + 2 * d * kv + 3 * d * m.ffn_dim
    root = m.vocab_size * d * (1 if m.tie_embeddings else 2) + d
    blocks = m.n_layers * (block_matrices / tp + 2 * d)
    return {"total": root + blocks + m.mtp_params, "root": root, "block": block_matrices / tp + 2 * d}


def _block_activations(m: ModelConfig, mode: str, act: int, tokens: float, masks: float, tp: int,
                       style: str = "pure", res: int | None = None) -> float:
    """Bytes one block keeps for backward for ``tokens`` tokens (``mode``: none, mlp,
    attention, full); ``masks``: bytes of SDPA's dense mask per block. ``style``:

    * "pure": one dtype throughout (fp32, or bf16 parameters under FSDP2 / DeepSpeed);
    * "autocast": DDP's bf16 autocast over fp32 parameters: the residual stream and the norms
      stay fp32, and every linear saves its own bf16 cast of its input (q, k and v each one);
    * "compiled": ``torch.compile``d blocks (autocast or not): Inductor's min-cut partitioner
      keeps the block input and the inverse RMS and recomputes the norms and SwiGLU's silu in
      backward; it keeps the bf16 inputs of the linears, q, k, v, the attention output (in
      SDPA's layout and the o-projection's) and the o-projection's output (from which it
      recomputes the fp32 residual), w1 x, w3 x and their product.

    The autocast and compiled counts are the tensors a block saves under CPU bf16 autocast,
    read with saved-tensor hooks (eager) and from AOTAutograd's partitioned forward graph
    (compiled) in ``tests/test_plan.py``. ``res``: bytes of the residual stream's elements
    (fp32 under autocast; default ``act``)."""
    d, kv, f, h = m.d_model, m.kv_heads * m.head_dim, m.ffn_dim, m.n_heads
    res = act if res is None else res
    if style == "compiled":
        attention = res * d + 4 + 2 * act * d + act * (3 * d + 2 * kv) / tp + 4 * h / tp  # input, rstd, h, o out
        mlp = 4 + act * d + 3 * act * f / tp  # rstd, h2; w1 x, w3 x, their product
        if mode == "full":
            return tokens * res * d
        if mode == "mlp":
            return tokens * (attention + res * d) + masks
        if mode == "attention":
            return tokens * (res * d + mlp)
        return tokens * (attention + mlp) + masks
    if style == "autocast":
        norm = 2 * res * d + 4  # fp32 input and normalised value; fp32 inverse RMS
        attention = 3 * act * d + act * (2 * d + 2 * kv) / tp + 4 * h / tp  # q/k/v input casts; q, k, v, output
        mlp = 2 * act * d + 4 * act * f / tp  # w1/w3 input casts; w1 x, w3 x, silu(w1 x), their product
    else:
        norm = 3 * d * act + 4  # input, normalised, output; fp32 inverse RMS
        attention = (2 * d + 2 * kv) / tp * act + 4 * h / tp  # q, output; k, v; fp32 log-sum-exp
        mlp = 4 * f / tp * act  # w1 x, w3 x, silu(w1 x), their product
    if mode == "full":
        return tokens * d * res  # the block's input
    if mode == "mlp":
        return tokens * (2 * norm + attention) + masks
    if mode == "attention":
        return tokens * (2 * norm + mlp)
    return tokens * (2 * norm + attention + mlp) + masks


def memory(cfg: PlanConfig, strategy: str, checkpointing: str) -> dict[str, float]:
    """Per-GPU bytes of ``strategy`` (ddp, fsdp2, zero1, zero2, zero3, zero3_offload) with
    ``checkpointing`` (none, mlp, attention, every_n, full): parameters, gradients,
    optimizer, gathered, activations, backward_extra and total, the larger of the two peaks
    (see the module docstring)."""
    m, tp = cfg.model, cfg.tensor_parallel
    dp = cfg.num_gpus // tp
    c = _counts(m, tp)
    n = c["total"]
    w = 2 if cfg.precision == "bf16" else 4  # compute weights and activations
    if strategy == "ddp":
        params, grads, optim = 4 * n, 4 * n, 8 * n
        gathered = 0.0
    elif strategy == "fsdp2":
        params, grads, optim = 4 * n / dp, 4 * n / dp, 8 * n / dp
        gathered = c["root"] * w  # the root stays gathered for backward (a copy even on one rank)
    elif strategy in ("zero1", "zero2", "zero3", "zero3_offload"):
        stage = int(strategy[4])
        offload = strategy.endswith("offload")
        bucket = min(cfg.bucket_size, n) * w
        params = 0.0 if offload else w * n / (dp if stage == 3 else 1)
        # stage 1 too reduces gradient buckets as backward makes them and keeps its partition
        grads = w * n / dp + bucket
        optim = 0.0 if offload else 12 * n / dp  # fp32 master partition + two moments
        gathered = bucket if stage == 3 else 0.0  # live gathered parameters, at most a bucket
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    autocast = strategy == "ddp" and cfg.precision == "bf16"  # raylm.train.parallel.autocast
    style = "compiled" if cfg.compile else "autocast" if autocast else "pure"
    res = 4 if autocast else w
    tokens = cfg.micro_batch_size * cfg.length
    # SDPA turns the boolean document mask into an additive one of the compute dtype and saves it
    masks = w * cfg.micro_batch_size * cfg.length**2 if cfg.packed_sdpa else 0.0
    if checkpointing == "every_n":
        k = math.ceil(m.n_layers / cfg.checkpoint_every)
        blocks = (k * _block_activations(m, "full", w, tokens, masks, tp, style, res)
                  + (m.n_layers - k) * _block_activations(m, "none", w, tokens, masks, tp, style, res))
    else:
        blocks = m.n_layers * _block_activations(m, checkpointing, w, tokens, masks, tp, style, res)
    logits = tokens * m.vocab_size
    # final norm (input, normalised, the output projection's input), logits with, uncompiled,
    # the fp32 log-softmax (compiled: only the log-sum-exp), labels; fp32 rotary cos and sin
    # gathered per row of positions when rows are packed (else one table for all rows)
    rope = 2 * 4 * (cfg.micro_batch_size if cfg.packed_sdpa else 1) * cfg.length * m.head_dim // 2
    norm = tokens * ((2 * res + w) * m.d_model + 4)
    head = norm + (logits * w + tokens * 4 if cfg.compile else logits * (w + 4)) + tokens * 8 + rope
    # autocast saves every linear's bf16 weight cast for backward (the blocks' and the output projection's)
    casts = w * (n - c["root"] + m.vocab_size * m.d_model - m.n_layers * 2 * m.d_model) if autocast else 0.0
    activations = blocks + head + casts
    extra = logits * (w if cfg.compile else 4)  # the logits' gradient (compiled: fused, in the compute dtype)
    if checkpointing != "none":
        extra += _block_activations(m, "none", w, tokens, masks, tp, style, res)
    # gradients live through the forward only where they have a buffer of their own (DDP's buckets
    # when it wraps, ZeRO's partitions); else they are made in backward and freed by zero_grad
    kept = grads if (strategy == "ddp" and dp > 1) or strategy.startswith("zero") else 0.0
    total = max(params + kept + optim + gathered + activations + extra, params + grads + optim + gathered)
    return {"parameters": params, "gradients": grads, "optimizer": optim, "gathered": gathered,
            "activations": activations, "backward_extra": extra, "total": total}


def _recompute_factor(cfg: PlanConfig, checkpointing: str) -> float:
    """Hardware FLOPs over model FLOPs: a recomputed forward adds 1/3 of a block's 6N."""
    share = {"none": 0.0, "full": 1.0, "mlp": 0.6, "attention": 0.4,
             "every_n": math.ceil(cfg.model.n_layers / cfg.checkpoint_every) / cfg.model.n_layers}[checkpointing]
    return 1 + share / 3


def plan(cfg: PlanConfig) -> dict[str, Any]:
    """Every strategy x checkpointing mode with its memory and whether it fits, the step time
    and the cost of a Chinchilla-optimal (or ``cfg.tokens``) run, and the recommendation."""
    m = cfg.model
    n = m.num_params()
    dp = cfg.num_gpus // cfg.tensor_parallel
    tokens_per_step = cfg.micro_batch_size * cfg.grad_accum * dp * cfg.length
    fpt = m.flops_per_token(cfg.length)
    tokens = cfg.tokens if cfg.tokens is not None else 20 * n
    budget = cfg.memory_bytes * cfg.headroom
    rows = []
    for strategy in STRATEGIES:
        if cfg.tensor_parallel > 1 and strategy != "fsdp2":
            continue
        for ac in CHECKPOINTING:
            mem = memory(cfg, strategy, ac)
            factor = _recompute_factor(cfg, ac) * (1.3 if strategy == "zero3_offload" else 1.0)
            step_s = tokens_per_step * fpt * factor / (cfg.num_gpus * cfg.peak * 1e12 * cfg.mfu)
            rows.append({"strategy": strategy, "checkpointing": ac, "fits": mem["total"] <= budget,
                         "memory_gib": {k: v / GiB for k, v in mem.items()}, "step_s": step_s})
    fitting = [r for r in rows if r["fits"]]
    best = min(fitting, key=lambda r: r["step_s"]) if fitting else None
    gpu_hours = None if best is None else tokens / tokens_per_step * best["step_s"] * cfg.num_gpus / 3600
    return {
        "model": {"params": n, "non_embedding_params": m.num_params(include_embedding=False)},
        "gpu": cfg.gpu, "num_gpus": cfg.num_gpus, "gpu_memory_gib": cfg.memory_bytes / GiB,
        "budget_gib": budget / GiB, "tokens_per_step": tokens_per_step, "flops_per_token": fpt,
        "mfu": cfg.mfu, "chinchilla_tokens": 20 * n, "tokens": tokens,
        "steps": math.ceil(tokens / tokens_per_step), "options": rows, "recommended": best,
        "gpu_hours": gpu_hours,
        "cost_on_demand": None if gpu_hours is None else gpu_hours * cfg.price_on_demand,
        "cost_spot": None if gpu_hours is None else gpu_hours * cfg.price_spot,
    }


def render(report: dict[str, Any]) -> str:
    """The plan as a table and a recommendation, for the terminal."""
    out = [f"model: {report['model']['params'] / 1e6:,.1f}M parameters; {report['num_gpus']} x {report['gpu']} "
           f"({report['gpu_memory_gib']:.0f} GiB, plans use <= {report['budget_gib']:.1f} GiB)",
           f"tokens/step {report['tokens_per_step']:,}; FLOPs/token {report['flops_per_token']:.3e}; "
           f"at MFU {report['mfu']:.0%}",
           "",
           f"{'strategy':<14}{'checkpointing':<14}{'params':>8}{'grads':>8}{'optim':>8}{'gather':>8}"
           f"{'activ':>8}{'bw+':>8}{'total':>9}  {'step s':>8}  fits"]
    for r in report["options"]:
        g = r["memory_gib"]
        out.append(f"{r['strategy']:<14}{r['checkpointing']:<14}{g['parameters']:8.2f}{g['gradients']:8.2f}"
                   f"{g['optimizer']:8.2f}{g['gathered']:8.2f}{g['activations']:8.2f}{g['backward_extra']:8.2f}"
                   f"{g['total']:9.2f}  {r['step_s']:8.3f}  {'yes' if r['fits'] else 'no'}")
    out.append("(GiB per GPU)")
    best = report["recommended"]
    out.append("")
    out.append(f"Chinchilla-optimal tokens (20 N): {report['chinchilla_tokens'] / 1e9:,.2f}B; "
               f"planning for {report['tokens'] / 1e9:,.2f}B tokens = {report['steps']:,} steps")
    if best is None:
        out.append("recommended: nothing fits; add GPUs, tensor parallelism, or lower micro_batch_size / seq_len")
    else:
        out.append(f"recommended: scale.strategy {best['strategy']} with activation_checkpointing "
                   f"{best['checkpointing']}: {best['memory_gib']['total']:.2f} GiB per GPU, {best['step_s']:.3f} s/step")
        out.append(f"GPU-hours {report['gpu_hours']:,.1f}; cost on-demand {report['cost_on_demand']:,.0f}, "
                   f"spot {report['cost_spot']:,.0f}")
    return "\n".join(out)
