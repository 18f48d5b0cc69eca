"""The training run's typed config: YAML + ``--set`` -> ``TrainConfig`` on the driver, then
``to_dict`` as ``train_loop_config`` and ``from_dict`` again on every worker.

``model`` may name a size (``model.flavor: debug``): the flavor's fields are the base and the
other ``model.*`` keys override them.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Literal

from raylm.config import ConfigError, from_dict, load_data, to_dict
from raylm.data.mixing import LengthSchedule, MixConfig
from raylm.data.transforms import MaskingConfig, MLMConfig
from raylm.model import ModelConfig
from raylm.model.config import expand_flavor
from raylm.optim.optimizers import OptimConfig
from raylm.train.stability import SpikeGuardConfig
from raylm.train.tracking import TrackingConfig


@dataclasses.dataclass(kw_only=True)
class DataConfig:
    path: str = ""
    """Packed token shards: a ``raylm prepare`` source folder (or any Parquet folder with
    ``seq_id``, ``tokens``, ``cu_seqlens``). Or give ``sources`` and ``mix`` instead."""
    sources: dict[str, str] = dataclasses.field(default_factory=dict)
    """Several token-shard folders by name (``{web: PATH, code: PATH}``), mixed by ``mix``."""
    mix: MixConfig | None = None
    """Target weights of ``sources`` (``raylm.data.mixing.MixConfig``); its ``schedule`` steps
    are optimizer steps here. Every window of ``mix.window`` sequences is within 1% of them."""
    seq_len_schedule: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    """Length curriculum: ``[[step, seq_len], ...]`` from step 0; each stored row is cut into
    rows of ``seq_len`` (which must divide the stored length), same tokens per step."""
    seed: int = 0
    """Seed of the data order (``raylm.data.loader``)."""
    window: int = 4096
    """Shuffle window in sequences."""
    prefetch: int = 2
    """Windows read ahead by each worker's background thread (per source); 0: read in the
    training thread itself, with no ``read_timeout_s`` (nothing to watch the read from)."""
    read_timeout_s: float = 600.0
    """A worker whose reads give it nothing for this long fails with an error naming the data
    (rather than waiting for ever); ``max_failures`` then restarts the run. Needs
    ``prefetch`` >= 1."""

    def validate(self) -> None:
        if bool(self.path) == bool(self.sources):
            raise ConfigError("data: give either data.path (one token-shard folder) or data.sources "
                              "(several, with data.mix)")
        if self.sources and self.mix is None:
            raise ConfigError("data.mix: the weights of data.sources are required")
        if self.mix is not None:
            if not self.sources:
                raise ConfigError("data.mix: needs data.sources")
            missing = sorted(set(self.mix.sources) - set(self.sources))
            if missing:
                raise ConfigError(f"data.mix: sources {missing} are not in data.sources {sorted(self.sources)}")
        if self.seq_len_schedule:
            LengthSchedule([tuple(p) for p in self.seq_len_schedule])
        if self.window < 1 or self.prefetch < 0 or self.read_timeout_s <= 0:
            raise ConfigError(f"data.window ({self.window}) must be >= 1, data.prefetch ({self.prefetch}) >= 0 and "
                              f"data.read_timeout_s ({self.read_timeout_s}) > 0")

    def mix_in_sequences(self, global_batch_size: int) -> MixConfig:
        """``mix`` with its schedule steps (optimizer steps) turned into sequences."""
        return dataclasses.replace(self.mix, schedule=[(step * global_batch_size, w) for step, w in self.mix.schedule])


@dataclasses.dataclass(kw_only=True)
class CheckpointConfig:
    every: int = 100
    """Checkpoint every this many optimizer steps (and at the end); 0: only at the end."""
    keep: int = 3
    """Checkpoints kept (Ray's ``CheckpointConfig.num_to_keep``)."""
    score: str | None = None
    """Keep the best ``keep`` by this reported metric (e.g. ``loss``) instead of the latest."""
    score_order: Literal["min", "max"] = "min"
    async_save: bool = False
    """Write the model and optimizer shards in a background thread (``dcp.async_save``) while
    training goes on: the step that saves waits only for a copy of its state in CPU memory, and
    the checkpoint counts (for a resume, a rollback, ``keep``) once every rank's files are in
    storage; the next save waits for the last. DDP and FSDP2 (DeepSpeed saves its own way)."""
    preemption_check_every: int = 10
    """Ask Ray Train every this many steps whether a node of the run is being drained for
    preemption (``ray.train.get_preemption_info``: a spot reclaim notice, ``ray drain-node
    --reason DRAIN_NODE_REASON_PREEMPTION``); when one is, checkpoint at that step, before the
    node goes. Each ask is a barrier of the workers (about 1-3 ms); 0: never ask."""

    def validate(self) -> None:
        if self.every < 0 or self.keep < 1 or self.preemption_check_every < 0:
            raise ConfigError(f"checkpoint.every ({self.every}) and checkpoint.preemption_check_every "
                              f"({self.preemption_check_every}) must be >= 0 and checkpoint.keep ({self.keep}) >= 1")


CheckpointMode = Literal["none", "full", "every_n", "mlp", "attention"]
Objective = Literal["causal", "mlm", "fim"]
_SET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclasses.dataclass(kw_only=True)
class SamplesConfig:
    """Generation samples at every evaluation (``raylm.train.samples``): each prompt continued
    by the model being trained, logged as text to TensorBoard and ``metrics.jsonl``."""

    prompts: list[str] = dataclasses.field(default_factory=list)
    """Texts to continue (``samples/<i>``); none: no samples."""
    infill: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    """``[prefix, suffix]`` pairs whose middle the model writes (``samples/infill_<i>``), for
    models trained with FIM."""
    max_new_tokens: int = 32
    temperature: float = 0.0
    """0: greedy, so the samples of successive evaluations differ only by the training between."""
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    tokenizer: str | None = None
    """SentencePiece ``.model``; None: the one the training data was prepared with (its manifest)."""


@dataclasses.dataclass(kw_only=True)
class EvalConfig:
    """Held-out evaluation during training (``raylm.train.evaluate``): loss and perplexity per
    set and per language, token-weighted, reported as ``val/...`` metrics."""

    enabled: bool = True
    """Evaluate at the end of the run (and every ``every`` steps); nothing happens when there
    is no set to evaluate."""
    every: int = 0
    """Also evaluate every this many optimizer steps; 0: only at the end."""
    at_start: bool = False
    """Also evaluate before the first step (reported as step 0; not again after a resume): the
    baseline of a continued run, e.g. on the val split of its old domain."""
    data_val: bool = True
    """Evaluate the held-out split (``<folder>/val``, from ``raylm prepare`` with ``val:``) of
    ``data.path`` or of every ``data.sources`` folder that has one, named by its source."""
    sets: dict[str, str] = dataclasses.field(default_factory=dict)
    """More sets, name -> token-shard folder (e.g. ``{old_web: out/tokens/web/val}``)."""
    max_sequences: int = 256
    """Sequences evaluated per set (evenly spaced over the set when it holds more); 0: all."""
    batch_size: int | None = None
    """Sequences per rank per forward; None: ``micro_batch_size``."""
    samples: SamplesConfig = dataclasses.field(default_factory=SamplesConfig)
    """Generation samples written with every evaluation."""

    def validate(self) -> None:
        if self.every < 0 or self.max_sequences < 0:
            raise ConfigError(f"every ({self.every}) and max_sequences ({self.max_sequences}) must be >= 0")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch_size: {self.batch_size} must be >= 1")
        for name in self.sets:
            if not _SET_NAME.match(name) or name == "lang":
                raise ConfigError(f"sets.{name}: a set name is letters, digits, '_', '.', '-' "
                                  "(and not 'lang', which names the per-language metrics)")


@dataclasses.dataclass(kw_only=True, slots=True)
class ContinualConfig:
    """Continual pretraining (``raylm.train.continual``): a new run that starts from another
    run's checkpoint, on new data, replaying some of the old, and reports how much of the old
    domain it forgets. Resolved on the driver before the run starts; a run with this section
    still checkpoints and resumes as its own run (its own latest checkpoint wins over
    ``init_from``)."""

    init_from: str = ""
    """A checkpoint folder, or a run folder (its latest checkpoint, resolved when the run
    starts: name a checkpoint folder to pin it), local or in an object store (``s3://...``,
    ``storage_endpoint`` applies; each machine downloads the checkpoint once, into ``RAYLM_CACHE``
    or ``~/.cache/raylm``). The weights are loaded into this run's model,
    whose architecture must be the checkpoint's; the step count, lr schedule, data position
    and RNG are this run's own, from 0 (except in a WSD branch, ``decay_steps``)."""
    init_optimizer: bool | None = None
    """Also load the optimizer state (Adam's moments and step count; the lr, betas and weight
    decay stay this run's). False suits new data: the old moments were estimated on the old
    domain's gradients and mis-scale the first updates on the new one, which a fresh optimizer
    re-estimates under this run's warmup (a re-warmed lr, as in Ibrahim et al. 2024). True
    suits the same data or a slightly changed mix, where the moments are still right and a
    fresh optimizer would need a warmup again. None: false, and true in a WSD branch (an exact
    continuation needs it). Same ``optim.name`` as the checkpoint's; not with DeepSpeed."""
    replay: float = 0.0
    """Share of every global batch drawn from the checkpoint run's own training data, in [0, 1):
    ``data`` becomes a mix of this run's data at ``1 - replay`` (its ``mix`` weights and
    schedule scaled) and the old run's folders at ``replay``, as sources ``old_<name>`` in the
    proportions the old run had trained on them; their realised share is logged as
    ``mix/old_<name>``. Other old data: list them in ``data.sources`` and ``data.mix`` yourself."""
    decay_steps: int = 0
    """> 0: a WSD branch. From a stable-phase checkpoint (step S) of a ``wsd`` run, run only a
    decay of this many steps: ``steps`` becomes S + decay_steps, the lr is the decay part of
    the wsd schedule the old run would have had with its decay starting at S (same peak lr and
    warmup; this run's ``decay_shape`` and ``min_lr_ratio``), and the step count, optimizer,
    RNG, spike guard and, on the same ``data``, the data position go on from the checkpoint."""
    forgetting_sets: list[str] | None = None
    """Eval sets on which ``forgetting/<set>/loss`` (the loss now minus the loss at this run's
    start) and ``forgetting/<set>/ppl_ratio`` (perplexity now over at the start) are reported
    at every evaluation. None: every set except the held-out splits of data the checkpoint run
    did not train on (the new domain, whose loss is meant to fall). The checkpoint run's
    held-out splits are evaluated too (as ``old_<name>``), and always at the start."""

    def validate(self) -> None:
        if not 0.0 <= self.replay < 1.0:
            raise ConfigError(f"replay: {self.replay} must be in [0, 1)")
        if self.decay_steps < 0:
            raise ConfigError(f"decay_steps: {self.decay_steps} must be >= 0")
        if not self.init_from and (self.replay or self.decay_steps or self.init_optimizer
                                   or self.forgetting_sets is not None):
            raise ConfigError("replay, decay_steps, init_optimizer and forgetting_sets need init_from "
                              "(the checkpoint to start from)")


@dataclasses.dataclass(kw_only=True)
class DeepSpeedConfig:
    """DeepSpeed ZeRO (Rajbhandari et al. 2020) options; raylm writes DeepSpeed's JSON from them
    (``raylm.train.strategy.deepspeed.ds_config``), so users never write it."""

    stage: int = 2
    """ZeRO stage: 1 shards the optimizer state, 2 also the gradients, 3 also the parameters."""
    offload_optimizer: bool = False
    """Keep the optimizer state (and its step) in CPU memory (ZeRO-Offload, Ren et al. 2021)."""
    offload_params: bool = False
    """Keep the sharded parameters in CPU memory between uses (ZeRO-Infinity); stage 3 only."""
    bucket_size: int = 50_000_000
    """Elements per gradient reduce / parameter all-gather bucket (DeepSpeed's default is 5e8;
    smaller buckets cost less memory on small GPUs and give more overlap)."""

    def validate(self) -> None:
        if self.stage not in (1, 2, 3):
            raise ConfigError(f"scale.deepspeed.stage: {self.stage} must be 1, 2 or 3")
        if self.offload_params and self.stage != 3:
            raise ConfigError("scale.deepspeed.offload_params needs stage 3 (only ZeRO-3 shards parameters)")
        if self.bucket_size < 1:
            raise ConfigError(f"scale.deepspeed.bucket_size: {self.bucket_size} must be >= 1")


@dataclasses.dataclass(kw_only=True)
class ScaleConfig:
    num_workers: int | tuple[int, int] = 2
    """Ray Train workers (one per GPU on GPU nodes). ``[min, max]``: an elastic run (Ray Train's
    ``ScalingConfig(num_workers=(min, max))``): it starts with as many workers as the cluster
    has room for, up to ``max``, restarts from its latest checkpoint with fewer when a node is
    lost (down to ``min``) and with more when nodes join (checked every ``resize_interval_s``),
    keeping ``global_batch`` and the data order; ddp or fsdp2 without tensor parallelism."""
    resize_interval_s: float = 60.0
    """Elastic runs: how often Ray Train looks for room for more workers while the run is
    healthy (each resize restarts the workers from the latest checkpoint)."""
    wait_for_workers_s: float = 1800.0
    """The longest a run may go without a running worker group (waiting for room for its
    workers, at the start or after a restart) before it fails saying so; 0: wait for ever
    (an autoscaler that takes longer to bring nodes)."""
    use_gpu: bool = False
    device: Literal["auto", "cpu"] = "auto"
    """Where the workers compute. "auto": the GPU Ray Train gives each worker with ``use_gpu``
    (NCCL), else the CPU (gloo). "cpu": the CPU and gloo even on workers that hold a GPU, which
    is then a scheduling label only (the fake multi-node cluster of ``tests/test_autoscaling.py``)."""
    cpus_per_worker: float = 1.0
    """Logical CPUs each worker holds; fractions leave room for Ray Data on small nodes."""
    resources_per_worker: dict[str, float] = dataclasses.field(default_factory=dict)
    """Extra custom resources per worker (e.g. ``{gpu_pool: 1}`` to land on a node pool)."""
    strategy: Literal["ddp", "fsdp2", "deepspeed"] = "ddp"
    """Data parallelism: DDP (replicated), FSDP2 (``fully_shard`` per block + the root) or
    DeepSpeed ZeRO (``scale.deepspeed``)."""
    deepspeed: DeepSpeedConfig = dataclasses.field(default_factory=DeepSpeedConfig)
    """ZeRO stage and offload, used when ``strategy`` is deepspeed."""
    tensor_parallel: int = 1
    """Tensor-parallel degree (Megatron-style column/row sharding of every block's linears with
    DTensor), composed with FSDP2 on a 2-D (dp, tp) mesh; fsdp2 only. ``num_workers`` must be a
    multiple of it; the ranks of one tensor-parallel group read the same batches."""
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """auto: bf16 on GPUs that have it, else fp16 with loss scaling on GPU, fp32 on CPU."""
    activation_checkpointing: CheckpointMode | bool = "none"
    """Recompute activations in the backward pass: "none"; "full" (every block); "every_n"
    (every ``checkpoint_every``-th block); "mlp" or "attention" (selective: only that part of
    every block). ``true``/``false`` mean "full"/"none"."""
    checkpoint_every: int = 2
    """With ``activation_checkpointing: every_n``: blocks 0, n, 2n, ... are checkpointed."""
    compile: bool = False
    """``torch.compile`` the blocks and the loss (``raylm.train.parallel.apply_compile``):
    faster steps on GPU after a compile of a minute or so; off by default because on CPU the
    compile costs more than it saves on a short run."""
    fp8: bool = False
    """fp8 matmuls in every block's linears (torchao float8 training, dynamic scaling); CUDA
    GPUs with compute capability >= 8.9 (H100) and the ``torchao`` package only."""

    @property
    def checkpoint_mode(self) -> CheckpointMode:
        """``activation_checkpointing`` with the booleans resolved."""
        ac = self.activation_checkpointing
        return ("full" if ac else "none") if isinstance(ac, bool) else ac

    @property
    def elastic(self) -> bool:
        return isinstance(self.num_workers, tuple)

    @property
    def min_workers(self) -> int:
        return self.num_workers[0] if isinstance(self.num_workers, tuple) else self.num_workers

    @property
    def max_workers(self) -> int:
        return self.num_workers[1] if isinstance(self.num_workers, tuple) else self.num_workers

    @property
    def data_parallel(self) -> int:
        """Ranks that read different batches (``num_workers / tensor_parallel``; an elastic run's
        most)."""
        return self.max_workers // self.tensor_parallel

    def validate(self) -> None:
        if not 1 <= self.min_workers <= self.max_workers or self.cpus_per_worker <= 0:
            raise ConfigError(f"scale.num_workers ({list(self.num_workers) if self.elastic else self.num_workers}) "
                              f"must be >= 1 (and min <= max) and scale.cpus_per_worker ({self.cpus_per_worker}) > 0")
        if self.device not in ("auto", "cpu"):
            raise ConfigError(f"scale.device: {self.device!r} is not one of ['auto', 'cpu']")
        if self.checkpoint_every < 1 or self.resize_interval_s < 0 or self.wait_for_workers_s < 0:
            raise ConfigError(f"scale.checkpoint_every ({self.checkpoint_every}) must be >= 1, "
                              f"scale.resize_interval_s ({self.resize_interval_s}) >= 0 and "
                              f"scale.wait_for_workers_s ({self.wait_for_workers_s}) >= 0")
        if self.tensor_parallel < 1 or self.max_workers % self.tensor_parallel:
            raise ConfigError(f"scale.tensor_parallel: {self.tensor_parallel} must be >= 1 and divide "
                              f"scale.num_workers ({self.num_workers})")
        if self.elastic and (self.tensor_parallel > 1 or self.strategy == "deepspeed"):
            raise ConfigError(f"scale.num_workers {list(self.num_workers)}: an elastic run is ddp or fsdp2 without "
                              "tensor parallelism (DeepSpeed's checkpoints and a tensor-parallel mesh are made for "
                              "one world size)")
        if self.tensor_parallel > 1 and self.strategy != "fsdp2":
            raise ConfigError("scale.tensor_parallel > 1 composes with scale.strategy fsdp2 only "
                              f"(got {self.strategy})")
        if self.fp8 and (not self.use_gpu or self.device == "cpu"):
            raise ConfigError("scale.fp8: fp8 matmuls need CUDA GPUs (scale.use_gpu: true) with torchao")
        if self.strategy == "deepspeed":
            self.deepspeed.validate()
            if self.fp8 or self.compile:
                raise ConfigError("scale.strategy deepspeed: scale.fp8 and scale.compile are supported "
                                  "with ddp and fsdp2 only")


@dataclasses.dataclass(kw_only=True)
class TrainConfig:
    name: str = "raylm-train"
    """Run name: Ray Train's ``RunConfig(name=...)``; a rerun with the same name resumes."""
    storage_path: str = "runs"
    """Where checkpoints, ``metrics.jsonl`` and TensorBoard logs go: a local folder (shared by
    every node on a cluster) or an object store URI (``s3://bucket/runs``)."""
    storage_endpoint: str | None = None
    """An S3-compatible store's endpoint (``http://minio:9000``) for ``s3://`` paths, the
    storage and ``data.path`` alike; None: AWS S3 (or ``AWS_ENDPOINT_URL`` if set)."""
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    scale: ScaleConfig = dataclasses.field(default_factory=ScaleConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    spike_guard: SpikeGuardConfig = dataclasses.field(default_factory=SpikeGuardConfig)
    steps: int = 100
    """Optimizer steps of the whole run."""
    micro_batch_size: int = 4
    """Sequences per worker per forward/backward."""
    grad_accum: int = 1
    """Micro-batches per optimizer step; global batch = micro_batch_size * grad_accum * data-parallel
    ranks (``num_workers / scale.tensor_parallel``)."""
    global_batch: int | None = None
    """Sequences per optimizer step, all workers together; each worker then accumulates
    ``global_batch / (micro_batch_size * data-parallel ranks)`` micro-batches at whatever number
    of workers it runs with (leave ``grad_accum`` at 1). Required by an elastic run
    (``scale.num_workers: [min, max]``); set it to resume a run on another number of workers
    with the same global batch and data order. None: ``micro_batch_size * grad_accum *
    data-parallel ranks``."""
    clip_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this (None: no clipping; the norm is still logged)."""
    seed: int = 0
    """Seed of the model initialisation and every rank's RNG."""
    log_every: int = 10
    """Report metrics (Ray and TensorBoard) every this many steps."""
    tensorboard: bool = True
    max_failures: int = 0
    """Restarts from the latest checkpoint after a worker dies (``FailureConfig``)."""
    peak_tflops: float | None = None
    """Device peak for MFU (None: looked up from the GPU name; CPU has no MFU)."""
    log_seq_ids: bool = False
    """Audit the data order: every rank appends ``{step, pid, node, world, seq_ids}`` per step
    (its process, Ray node, the worker group's size, the sequences it trained on) to
    ``seq_ids-rank<r>.jsonl`` in the run folder (local storage only)."""
    fail_at_step: int | None = None
    """Testing: raise in rank 1 (rank 0 with one worker) at this step, once per run directory."""
    objective: Objective = "causal"
    """causal: next-token prediction. mlm: masked-LM on an encoder (``model.causal: false``),
    the batches masked as ``mlm`` says, the loss on the masked tokens only. fim: next-token
    prediction on shards prepared with ``fim:`` (checked against their manifests before the
    run), with eval also reporting the loss on the FIM middles (``raylm.train.objective``)."""
    mlm: MaskingConfig = dataclasses.field(default_factory=MaskingConfig)
    """objective mlm: BERT 80/10/10 or SpanBERT masking (the vocabulary is ``model``'s)."""
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    """Held-out evaluation: when, on which sets, how many sequences."""
    continual: ContinualConfig = dataclasses.field(default_factory=ContinualConfig)
    """Continual pretraining: start from another run's checkpoint, replay its data, branch its
    WSD decay, report forgetting."""
    tracking: TrackingConfig = dataclasses.field(default_factory=TrackingConfig)
    """Experiment tracking from rank 0: ``mlflow: {...}`` and/or ``wandb: {...}``."""

    def validate(self) -> None:
        if self.steps < 1 or self.micro_batch_size < 1 or self.grad_accum < 1 or self.log_every < 1:
            raise ConfigError("steps, micro_batch_size, grad_accum and log_every must be >= 1")
        self._validate_batch()
        if self.storage_endpoint and not self.storage_endpoint.startswith(("http://", "https://")):
            raise ConfigError(f"storage_endpoint: {self.storage_endpoint!r} must be an http:// or https:// URL")
        if self.clip_grad_norm is not None and self.clip_grad_norm <= 0:
            raise ConfigError(f"clip_grad_norm: {self.clip_grad_norm} must be > 0 (or null for no clipping)")
        if self.scale.tensor_parallel > 1:
            m = self.model
            tp = self.scale.tensor_parallel
            if m.n_heads % tp or m.kv_heads % tp or m.ffn_dim % tp:
                raise ConfigError(f"scale.tensor_parallel: {tp} must divide model.n_heads ({m.n_heads}), "
                                  f"the kv heads ({m.kv_heads}) and the MLP width ({m.ffn_dim})")
        if self.scale.strategy == "deepspeed":
            if self.spike_guard.enabled:
                raise ConfigError("spike_guard.enabled: DeepSpeed steps inside engine.step(), where the guard "
                                  "cannot skip or roll back a step; set spike_guard.enabled: false with "
                                  "scale.strategy deepspeed")
            if self.optim.name != "adamw":
                raise ConfigError(f"optim.name: {self.optim.name!r}: raylm's DeepSpeed strategy runs adamw only")
            if self.checkpoint.async_save:
                raise ConfigError("checkpoint.async_save: DeepSpeed writes its own checkpoints (zero/), synchronously; "
                                  "async saves are for ddp and fsdp2")
        self._validate_objective()
        c = self.continual
        if c.init_from and self.scale.strategy == "deepspeed" and (c.init_optimizer or c.decay_steps):
            raise ConfigError("continual: with scale.strategy deepspeed only the weights are loaded; "
                              "init_optimizer and decay_steps (a WSD branch) need ddp or fsdp2")
        if self.optim.name == "adafactor" and self.scale.strategy == "fsdp2":
            raise ConfigError("optim.name: torch's Adafactor does not step FSDP2 (DTensor) parameters; "
                              "use adamw or lion with scale.strategy fsdp2, or ddp")

    def _validate_batch(self) -> None:
        sc = self.scale
        if self.global_batch is None:
            if sc.elastic:
                raise ConfigError(f"scale.num_workers {list(sc.num_workers)}: an elastic run keeps its global batch "
                                  "as workers come and go; set global_batch (sequences per optimizer step)")
            return
        if self.grad_accum != 1:
            raise ConfigError(f"grad_accum: {self.grad_accum}: with global_batch the workers compute it; leave it at 1")
        sizes = range(sc.min_workers, sc.max_workers + 1) if sc.elastic else [sc.num_workers]
        bad = [w for w in sizes if w % sc.tensor_parallel == 0
               and self.global_batch % (self.micro_batch_size * (w // sc.tensor_parallel))]
        if bad:
            raise ConfigError(f"global_batch: {self.global_batch} is not a multiple of micro_batch_size "
                              f"({self.micro_batch_size}) x the data-parallel ranks at {bad} workers")

    def grad_accum_at(self, world: int) -> int:
        """Micro-batches per optimizer step for each of ``world`` workers."""
        if self.global_batch is None:
            return self.grad_accum
        return self.global_batch // (self.micro_batch_size * (world // self.scale.tensor_parallel))

    def _validate_objective(self) -> None:
        if self.objective == "mlm":
            if self.model.causal:
                raise ConfigError("objective: mlm trains an encoder; set model.causal: false")
            if self.data.seq_len_schedule:
                raise ConfigError("objective: mlm does not take data.seq_len_schedule (its labels are not shifted)")
            try:
                self.mlm_config().validate()
            except ConfigError as exc:
                raise ConfigError(f"mlm (with model.vocab_size {self.model.vocab_size}): {exc}") from None
        elif not self.model.causal:
            raise ConfigError(f"objective: {self.objective} predicts the next token, which an encoder "
                              "(model.causal: false) sees; use a causal model or objective: mlm")
        if self.objective == "mlm" and (self.eval.samples.prompts or self.eval.samples.infill):
            raise ConfigError("eval.samples: an mlm encoder does not generate text; leave prompts and infill empty")

    def mlm_config(self) -> MLMConfig:
        """``mlm`` with the model's vocabulary: what ``raylm.data.transforms.mlm_mask`` takes."""
        return MLMConfig(vocab_size=self.model.vocab_size, **to_dict(self.mlm))

    @property
    def global_batch_size(self) -> int:
        """Sequences per optimizer step, all workers together."""
        if self.global_batch is not None:
            return self.global_batch
        return self.micro_batch_size * self.grad_accum * self.scale.data_parallel


def train_config(data: dict[str, Any], origin: str = "config") -> TrainConfig:
    """A validated TrainConfig from a nested dict (flavors expanded); errors name ``origin``."""
    try:
        return from_dict(TrainConfig, expand_flavor(data, origin))
    except ConfigError as exc:
        raise ConfigError(exc.args[0] if str(exc).startswith(origin) else f"{origin}: {exc}") from None


def load_train_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """YAML file (optional) + ``--set`` overrides -> validated TrainConfig."""
    return train_config(*load_data(path, overrides))
