"""Activation checkpointing changes memory, not numbers: same loss and gradients."""

import copy

import pytest
import torch

from raylm.model import Transformer, model_config
from raylm.train.parallel import apply_activation_checkpointing, apply_compile, resolve_precision


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    torch.manual_seed(0)
    cfg = model_config("debug", vocab_size=128, max_seq_len=32, attention="sdpa")
    plain = Transformer(cfg)
    with torch.no_grad():
        plain.init_weights()
    ckpt = copy.deepcopy(plain)
    apply_activation_checkpointing(ckpt)
    assert all(type(b).__name__ == "CheckpointWrapper" for b in ckpt.layers)
    ids = torch.randint(0, 128, (2, 33))
    cu = torch.tensor([0, 10, 32, 64], dtype=torch.int32)
    pos = torch.cat([torch.arange(10), torch.arange(22), torch.arange(32)]).reshape(2, 32)
    losses = []
    for m in (plain, ckpt):
        loss = m.loss_sum(m(ids[:, :-1], position_ids=pos, cu_seqlens=cu, max_seqlen=22), ids[:, 1:])
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == losses[1]
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_precision_auto_is_fp32_on_cpu():
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"


def test_compiled_model_matches_eager_and_keeps_parameter_names():
    torch.manual_seed(0)
    cfg = model_config("debug", vocab_size=128, max_seq_len=32, attention="sdpa")
    eager = Transformer(cfg)
    with torch.no_grad():
        eager.init_weights()
    compiled = copy.deepcopy(eager)
    apply_compile(compiled)
    assert list(compiled.state_dict()) == list(eager.state_dict())  # checkpoints unchanged
    ids = torch.randint(0, 128, (2, 33))
    cu = torch.tensor([0, 10, 32, 64], dtype=torch.int32)
    pos = torch.cat([torch.arange(10), torch.arange(22), torch.arange(32)]).reshape(2, 32)
    losses = []
    for m in (eager, compiled):
        loss = m.loss_sum(m(ids[:, :-1], position_ids=pos, cu_seqlens=cu, max_seqlen=22), ids[:, 1:])
        loss.backward()
        losses.append(loss.item())
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=name)
