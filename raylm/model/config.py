"""The model's shape: a typed config, named sizes ("flavors") and analytic size/FLOP counts.

The architecture is the Llama one (Touvron et al. 2023): pre-norm RMSNorm, rotary position
embeddings, SwiGLU MLP, grouped-query attention, no biases. This module does not import torch,
so a memory planner or a launcher can size a model without it; ``num_params`` is checked
against the real module in the tests.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, get_args

from raylm.config import ConfigError, from_dict, merge, to_dict

AttentionBackend = Literal["auto", "flash", "sdpa", "flex", "eager"]


@dataclasses.dataclass(kw_only=True, slots=True)
class ModelConfig:
    """A decoder-only Transformer. The defaults are a debug-size model; start from a flavor
    with ``model_config("125m", ...)`` instead of writing every field."""

    vocab_size: int = 256
    """Rows of the token embedding (the tokenizer's vocabulary size)."""
    d_model: int = 64
    """Width of the residual stream."""
    n_layers: int = 2
    """Transformer blocks."""
    n_heads: int = 4
    """Query heads; ``d_model`` must be a multiple of it (``head_dim = d_model // n_heads``)."""
    n_kv_heads: int | None = None
    """Key/value heads for grouped-query attention (Ainslie et al. 2023); must divide
    ``n_heads``. None: ``n_heads`` (multi-head attention); 1: multi-query attention."""
    ffn_hidden: int | None = None
    """Hidden width of the SwiGLU MLP. None: 8/3 * d_model rounded up to ``multiple_of``
    (keeps the MLP's parameter count at that of a 4 * d_model GELU MLP)."""
    multiple_of: int = 256
    """Rounding of the default ``ffn_hidden`` (matmul-friendly shapes)."""
    max_seq_len: int = 128
    """Longest sequence (and largest position id + 1) the rotary tables cover."""
    rope_theta: float = 10000.0
    """Base of the rotary frequencies (Su et al. 2021); Llama 3 uses 500000."""
    norm_eps: float = 1e-5
    """Epsilon of every RMSNorm."""
    tie_embeddings: bool = False
    """Use the token embedding matrix as the output projection (lm_head)."""
    init_std: float = 0.02
    """Std of the normal init of every weight matrix; output projections of the residual
    branches get ``init_std / sqrt(2 * n_layers)`` (GPT-2, OLMo)."""
    attention: AttentionBackend = "auto"
    """Attention kernel (see ``raylm.model.attention``): "auto" takes flash-attn on CUDA when
    installed, else PyTorch's scaled_dot_product_attention."""
    causal: bool = True
    """True: a decoder (each token sees the earlier tokens of its document). False: an encoder
    (each token sees its whole document, both directions), e.g. for masked-LM training."""
    z_loss: float = 0.0
    """Coefficient of the z-loss ``mean(logsumexp(logits)^2)`` added to the loss (PaLM), which
    keeps the softmax normaliser near 1; 1e-4 is typical, 0 disables it."""
    label_smoothing: float = 0.0
    """Label smoothing of the cross-entropy, in [0, 1)."""
    parametrization: Literal["sp", "mup"] = "sp"
    """"sp": standard parametrisation. "mup": maximal-update parametrisation (Yang et al.
    2022, ``raylm.model.mup``), so hyperparameters tuned at ``base_width`` transfer to wider
    models unchanged."""
    base_width: int | None = None
    """μP: the width (``d_model``) the hyperparameters were tuned at; None: ``d_model``."""
    input_mult: float = 1.0
    """Multiplier of the token embeddings' output (a tunable μP hyperparameter; 1 in SP)."""
    output_mult: float = 1.0
    """Multiplier of the logits; under μP it is further scaled by ``base_width / d_model``."""
    mtp_heads: int = 0
    """Multi-token prediction depths D (DeepSeek-V3 sec. 2.2, ``raylm.model.mtp``): D sequential
    modules of one block each, sharing the embedding and output head, depth k predicting the
    token k + 1 ahead; they also draft tokens for self-speculative decoding. 0: none."""
    mtp_weight: float = 0.3
    """lambda of the MTP loss: ``loss_main + lambda / D * sum_k loss_k`` (DeepSeek-V3 used 0.3,
    then 0.1 for the last part of training)."""

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def width_mult(self) -> float:
        """``d_model / base_width`` under μP; 1 under SP."""
        if self.parametrization != "mup" or self.base_width is None:
            return 1.0
        return self.d_model / self.base_width

    @property
    def attn_scale(self) -> float | None:
        """Softmax scale of the attention scores: None (the kernels' ``1/sqrt(head_dim)``) under
        SP; under μP ``sqrt(base_head_dim) / head_dim``, i.e. ``1/head_dim`` up to the constant
        that makes it equal SP at the base width (``base_head_dim = head_dim / width_mult``)."""
        if self.parametrization != "mup":
            return None
        return (self.head_dim / self.width_mult) ** 0.5 / self.head_dim

    @property
    def kv_heads(self) -> int:
        """``n_kv_heads`` with its default resolved."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def ffn_dim(self) -> int:
        """``ffn_hidden`` with its default resolved."""
        if self.ffn_hidden is not None:
            return self.ffn_hidden
        return -(-8 * self.d_model // (3 * self.multiple_of)) * self.multiple_of

    def validate(self) -> None:
        positive = ("vocab_size", "d_model", "n_layers", "n_heads", "multiple_of", "max_seq_len")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: {getattr(self, name)} must be at least 1")
        for name in ("rope_theta", "norm_eps", "init_std"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}: {getattr(self, name)} must be positive")
        if self.d_model % self.n_heads:
            raise ConfigError(f"n_heads: {self.n_heads} does not divide d_model={self.d_model}")
        if self.head_dim % 2:
            raise ConfigError(
                f"n_heads: head_dim = d_model / n_heads = {self.head_dim} must be even for rotary embeddings"
            )
        if self.n_kv_heads is not None and (self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads):
            raise ConfigError(f"n_kv_heads: {self.n_kv_heads} does not divide n_heads={self.n_heads}")
        if self.ffn_hidden is not None and self.ffn_hidden < 1:
            raise ConfigError(f"ffn_hidden: {self.ffn_hidden} must be at least 1")
        if self.attention not in get_args(AttentionBackend):
            raise ConfigError(
                f"attention: {self.attention!r} is not one of {list(get_args(AttentionBackend))}"
            )
        if self.parametrization not in ("sp", "mup"):
            raise ConfigError(f"parametrization: {self.parametrization!r} is not one of ['sp', 'mup']")
        if self.base_width is not None and self.base_width < 1:
            raise ConfigError(f"base_width: {self.base_width} must be at least 1")
        for name in ("input_mult", "output_mult"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}: {getattr(self, name)} must be positive")
        if self.z_loss < 0:
            raise ConfigError(f"z_loss: {self.z_loss} must not be negative")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing: {self.label_smoothing} must be in [0, 1)")
        if self.mtp_heads < 0 or self.mtp_weight < 0:
            raise ConfigError(f"mtp_heads ({self.mtp_heads}) and mtp_weight ({self.mtp_weight}) must not be negative")
        if self.mtp_heads and not self.causal:
            raise ConfigError(f"mtp_heads: {self.mtp_heads} needs a causal model (causal: true): "
                              "multi-token prediction predicts tokens ahead")

    @property
    def block_params(self) -> int:
        """Parameters of one Transformer block (attention, SwiGLU MLP, two RMSNorm weights)."""
        d = self.d_model
        attention = 2 * d * self.n_heads * self.head_dim + 2 * d * self.kv_heads * self.head_dim
        return attention + 3 * d * self.ffn_dim + 2 * d

    @property
    def mtp_params(self) -> int:
        """Parameters of the MTP modules: per depth a block, the ``2d -> d`` projection and
        three RMSNorm weights (the embedding and output head are the main model's)."""
        d = self.d_model
        return self.mtp_heads * (self.block_params + 2 * d * d + 3 * d)

    def num_params(self, include_embedding: bool = True) -> int:
        """Parameters of ``Transformer(self)`` (a tied matrix counted once), MTP modules
        included. Without the embedding: the blocks, the final norm and the MTP modules, i.e.
        neither the token embedding nor the lm_head (Kaplan et al. 2020's non-embedding N)."""
        d = self.d_model
        n = self.n_layers * self.block_params + d + self.mtp_params  # + final norm
        if include_embedding:
            n += self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs (forward + backward) per token at sequence length ``seq_len``
        (default ``max_seq_len``), counted as in PaLM (Chowdhery et al. 2022, app. B) and
        torchtitan: ``6 * (N + vocab_size * d_model) + 12 * n_layers * d_model * seq_len``.

        ``N`` is the non-embedding parameter count; every weight does one multiply-add per
        token forward and two backward (6 FLOPs). ``vocab_size * d_model`` is the lm_head
        matmul (the embedding lookup costs nothing). The last term is the attention scores and
        their weighted sum (QK^T and AV: 2 * 2 * seq_len * d_model per layer forward, x3 with
        backward), counted over the full square as is the convention: causal masking and
        document masking are not subtracted, so the MFU of packed short documents is
        understated rather than flattered.

        MTP depths (``mtp_heads``) are in ``N`` and add one output-head matmul and one block's
        attention each: they are trained on every token like the main model."""
        seq_len = self.max_seq_len if seq_len is None else seq_len
        dense = 6 * (self.num_params(include_embedding=False) + (1 + self.mtp_heads) * self.vocab_size * self.d_model)
        return dense + 12 * (self.n_layers + self.mtp_heads) * self.d_model * seq_len


# Llama-like shapes; vocab_size 32000 (Llama 2) is a placeholder: set it to your tokenizer's.
FLAVORS: dict[str, ModelConfig] = {
    "debug": ModelConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128),
    "tiny": ModelConfig(
        vocab_size=32000,
        d_model=192,
        n_layers=6,
        n_heads=6,
        n_kv_heads=2,
        max_seq_len=512,
        tie_embeddings=True,
    ),
    "125m": ModelConfig(
        vocab_size=32000, d_model=768, n_layers=12, n_heads=12, max_seq_len=2048, tie_embeddings=True
    ),
    "350m": ModelConfig(
        vocab_size=32000, d_model=1024, n_layers=24, n_heads=16, max_seq_len=2048, tie_embeddings=True
    ),
    # Llama 3.2 1B and 3B shapes.
    "1b": ModelConfig(
        vocab_size=32000,
        d_model=2048,
        n_layers=16,
        n_heads=32,
        n_kv_heads=8,
        ffn_hidden=8192,
        max_seq_len=4096,
        rope_theta=500000.0,
        tie_embeddings=True,
    ),
    "3b": ModelConfig(
        vocab_size=32000,
        d_model=3072,
        n_layers=28,
        n_heads=24,
        n_kv_heads=8,
        ffn_hidden=8192,
        max_seq_len=4096,
        rope_theta=500000.0,
        tie_embeddings=True,
    ),
    # Llama 2 7B (ffn_hidden 11008 is the default rounding).
    "7b": ModelConfig(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, max_seq_len=4096),
}


def model_config(name_or_cfg: str | ModelConfig, **overrides: Any) -> ModelConfig:
    """A validated copy of flavor ``name_or_cfg`` (or of a config) with ``overrides`` applied;
    override values are checked and coerced like YAML / ``--set`` values."""
    if isinstance(name_or_cfg, str):
        if name_or_cfg not in FLAVORS:
            raise ConfigError(f"model flavor {name_or_cfg!r} is unknown (known: {', '.join(FLAVORS)})")
        name_or_cfg = FLAVORS[name_or_cfg]
    return from_dict(ModelConfig, {**to_dict(name_or_cfg), **overrides})


def expand_flavor(data: dict[str, Any], origin: str) -> dict[str, Any]:
    """A config dict (a train or plan config) whose ``model.flavor`` names a size: that flavor's
    fields are the base and the other ``model.*`` keys override them. The dict itself when
    ``model`` names no flavor; errors name ``origin``."""
    model = data.get("model")
    if not isinstance(model, dict) or "flavor" not in model:
        return data
    model = dict(model)
    flavor = model.pop("flavor")
    if flavor not in FLAVORS:
        raise ConfigError(f"{origin}: model.flavor: {flavor!r} is not one of {sorted(FLAVORS)}")
    return {**data, "model": merge(to_dict(FLAVORS[flavor]), model)}
