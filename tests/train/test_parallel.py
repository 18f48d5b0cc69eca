"""Activation checkpointing (every mode) changes memory, not numbers: same loss and gradients;
fp8 linears on H100 only."""

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
    torch._dynamo.reset()  # leave no compiled graphs (and their saved tensors) to later tests


@pytest.mark.parametrize("mode,every,wrapped", [
    ("full", 2, ["layers.0", "layers.1", "layers.2"]),
    ("every_n", 2, ["layers.0", "layers.2"]),
    ("mlp", 2, ["layers.0.mlp", "layers.1.mlp", "layers.2.mlp"]),
    ("attention", 2, ["layers.0.attention", "layers.1.attention", "layers.2.attention"]),
    ("none", 2, []),
])
def test_checkpointing_modes_wrap_their_modules_and_keep_the_numbers(mode, every, wrapped):
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    torch.manual_seed(0)
    cfg = model_config("debug", vocab_size=128, max_seq_len=32, attention="sdpa", n_layers=3)
    plain = Transformer(cfg)
    ckpt = copy.deepcopy(plain)
    assert apply_activation_checkpointing(ckpt, mode, every) == wrapped
    assert [n for n, m in ckpt.named_modules() if type(m).__name__ == "CheckpointWrapper"] == wrapped
    assert list(get_model_state_dict(ckpt)) == list(plain.state_dict())  # checkpoints unchanged
    ids = torch.randint(0, 128, (2, 33))
    losses = []
    for m in (plain, ckpt):
        loss = m.loss_sum(m(ids[:, :-1]), ids[:, 1:])
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == losses[1]
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_checkpointing_saves_less_for_backward():
    """What each mode keeps from the forward pass for backward (saved tensors, recorded by
    a saved-tensors hook; a checkpointed module saves nothing): full < every_n < none, and the
    selective modes sit in between."""
    cfg = model_config("debug", vocab_size=128, max_seq_len=32, attention="sdpa", n_layers=4)
    ids = torch.randint(0, 128, (2, 33))
    saved = {}
    for mode in ("none", "mlp", "attention", "every_n", "full"):
        torch.manual_seed(0)
        m = Transformer(cfg)
        apply_activation_checkpointing(m, mode, 2)
        total = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t, total=total: total.append(t.numel()) or t,
                                                      lambda t: t):
            m.loss_sum(m(ids[:, :-1]), ids[:, 1:])
        saved[mode] = sum(total)
    assert saved["full"] < saved["every_n"] < saved["none"]
    assert saved["full"] < saved["mlp"] < saved["none"] and saved["full"] < saved["attention"] < saved["none"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp8 linears need CUDA (H100)")
def test_fp8_linears_replace_the_block_linears():
    from raylm.train.parallel import apply_fp8

    pytest.importorskip("torchao")
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 needs compute capability >= 8.9")
    cfg = model_config("debug", vocab_size=128, max_seq_len=32, attention="sdpa")
    m = Transformer(cfg).cuda()
    apply_fp8(m)
    assert type(m.layers[0].mlp.w1).__name__ == "Float8Linear"


def test_fp8_without_a_gpu_is_a_clear_error():
    from raylm.config import ConfigError
    from raylm.train.config import train_config

    with pytest.raises(ConfigError, match="fp8"):
        train_config({"data": {"path": "x"}, "scale": {"fp8": True}})
