"""μP, the maximal-update parametrisation (Yang et al. 2022, "Tensor Programs V: Tuning Large
Neural Networks via Zero-Shot Hyperparameter Transfer"), for Adam-type optimisers.

With width ``d = d_model`` and ``m = d / base_width`` (``ModelConfig.width_mult``), μP makes
every layer's update move its output by Θ(1) whatever the width, so the learning rate, init
std and multipliers tuned on a small model transfer to a wide one. What changes with ``m``
(the rest is SP; at ``m = 1`` μP *is* SP, so a base-width sweep is an ordinary sweep):

=====================  ==================  =====================  ====================
parameter              init std            Adam lr                forward multiplier
=====================  ==================  =====================  ====================
token embedding        ``init_std``        ``lr``                 ``input_mult``
hidden matrices        ``init_std/√m``     ``lr / m``             --
(q, k, v, o, MLP)      (var ∝ 1/fan_in)
output (lm_head)       ``init_std``        ``lr``                 ``output_mult / m``
RMSNorm gains          1                   ``lr``                 --
attention scores       --                  --                     ``√(d_head/m)/d_head``
=====================  ==================  =====================  ====================

(The table of Tensor Programs V for Adam, with the output layer's ``1/m`` put in the forward
multiplier rather than the init, as the ``mup`` package's ``MuReadout`` does; attention is
``1/d_head`` rather than ``1/√d_head``, with the constant that equals SP at the base width.)
The residual branches' output projections keep the extra ``1/√(2 n_layers)`` of the init.
Weight decay is AdamW's decoupled ``lr * wd``, so it scales with each group's lr (the
"coupled" choice; the independent-decay variant of Wortsman et al. 2023 is not used).

The learning rates are parameter-group ``lr_scale``s (``raylm.optim.optimizers``), so the same
groups serve DDP, FSDP2 (DTensor parameters keep their names) and DeepSpeed alike.
"""

from __future__ import annotations

from raylm.model.config import ModelConfig

HIDDEN_PATTERNS = ("layers.*.attention.w*", "layers.*.mlp.w*")
"""The hidden matrices by parameter name (``fnmatch``): everything whose both dimensions grow
with the width."""
MTP_HIDDEN_PATTERNS = ("mtp.*.proj.weight", "mtp.*.block.attention.w*", "mtp.*.block.mlp.w*")
"""The multi-token-prediction modules' hidden matrices (``ModelConfig.mtp_heads``)."""


def mup_lr_scale(cfg: ModelConfig) -> dict[str, float]:
    """``lr_scale`` patterns for ``build_optimizer``: hidden matrices at ``1 / width_mult``
    under μP; nothing (all 1) under SP or at the base width."""
    m = cfg.width_mult
    if cfg.parametrization != "mup" or m == 1.0:
        return {}
    return dict.fromkeys(HIDDEN_PATTERNS + (MTP_HIDDEN_PATTERNS if cfg.mtp_heads else ()), 1.0 / m)


def fold_multipliers(cfg: ModelConfig, state_dict: dict) -> tuple[ModelConfig, dict]:
    """The same function in standard parametrisation: ``(cfg', state_dict')`` such that
    ``Transformer(cfg')`` with ``state_dict'`` computes exactly the logits of ``Transformer(cfg)``
    with ``state_dict`` (up to float rounding), with every multiplier 1 and the attention scale
    the kernels' ``1/sqrt(head_dim)``, as a model without μP's knobs (Hugging Face Llama) has
    them. ``input_mult`` goes into the embedding rows, ``output_mult / width_mult`` into the
    output matrix, and the attention scale's ratio to SP's, ``1/sqrt(width_mult)``, into every
    ``wq`` (q is linear in ``wq`` and the rotary embedding is a rotation). A tied matrix that
    would need two scales is untied. Tensors are not changed in place; an SP config comes back
    as it is."""
    import dataclasses

    logit_mult = cfg.output_mult / cfg.width_mult
    if cfg.parametrization == "sp" and cfg.input_mult == 1.0 and logit_mult == 1.0:
        return cfg, state_dict
    out = dict(state_dict)
    emb = state_dict["tok_embeddings.weight"]
    tie = cfg.tie_embeddings and cfg.input_mult == logit_mult
    if cfg.tie_embeddings and not tie:
        out["lm_head.weight"] = emb * logit_mult
    elif not cfg.tie_embeddings:
        out["lm_head.weight"] = state_dict["lm_head.weight"] * logit_mult
    out["tok_embeddings.weight"] = emb * cfg.input_mult
    if cfg.parametrization == "mup":  # attention scores: sqrt(base_head_dim)/head_dim = SP's / sqrt(m)
        q_scale = cfg.width_mult ** -0.5
        for name, w in state_dict.items():
            if name.endswith("attention.wq.weight"):
                out[name] = w * q_scale
    sp = dataclasses.replace(cfg, parametrization="sp", base_width=None, input_mult=1.0, output_mult=1.0,
                             tie_embeddings=tie)
    return sp, out
