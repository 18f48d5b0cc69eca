"""On a CUDA device (skipped elsewhere): every attention backend in bf16 gives the fp32
reference's loss and gradients on packed rows, compiled "auto" attention runs FlexAttention,
and a 1-worker Ray Train run learns with bf16 + compile and with fp16 loss scaling."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from raylm.model import Transformer, model_config
from raylm.model.attention import flash_available
from raylm.train.config import train_config
from raylm.train.parallel import apply_compile
from raylm.train.runlog import read_metrics
from raylm.train.trainer import fit, run_dir
from tests.model.batches import packed_batch
from tests.train.sample import config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DOCS = [[100, 28, 128], [256], [7, 249]]  # 3 rows of 256 tokens, 6 documents


def _model(attention: str) -> Transformer:
    torch.manual_seed(0)
    m = Transformer(model_config("debug", vocab_size=512, max_seq_len=256, attention=attention))
    with torch.no_grad():
        m.init_weights()
    return m.cuda()


def _loss_and_grads(m: Transformer, batch: dict, dtype: torch.dtype) -> tuple[float, dict]:
    batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}
    labels = batch.pop("labels")
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        logits = m(**batch)
    loss = m.loss_sum(logits, labels) / (labels != -100).sum()
    loss.backward()
    return loss.item(), {n: p.grad.float() for n, p in m.named_parameters()}


BACKENDS = ["sdpa", "flex", "auto-compiled"] + (["flash"] if flash_available() else [])


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_in_bf16_match_the_fp32_reference(backend):
    batch = packed_batch(DOCS, 512, seed=1)
    ref_loss, ref_grads = _loss_and_grads(_model("sdpa"), copy.deepcopy(batch), torch.float32)
    m = _model("auto" if backend == "auto-compiled" else backend)
    if backend == "auto-compiled":
        apply_compile(m)
    loss, grads = _loss_and_grads(m, copy.deepcopy(batch), torch.bfloat16)
    assert loss == pytest.approx(ref_loss, rel=1e-2)
    for name, g in grads.items():
        rel = (g - ref_grads[name]).norm() / ref_grads[name].norm().clamp_min(1e-12)
        assert rel < 5e-2, f"{backend}: {name} gradient off by {rel:.3f}"


def test_compiled_auto_attention_uses_flex_for_packed_rows_without_flash_attn():
    m = _model("auto")
    ids = torch.zeros(3, 256, dtype=torch.long, device="cuda")
    cu = torch.tensor([0, 100, 128, 256, 512, 519, 768], dtype=torch.int32, device="cuda")
    assert not m._uses_flex(ids, cu, None)  # eager: SDPA (or flash)
    apply_compile(m)
    assert m._uses_flex(ids, cu, None) == (not flash_available())
    one_doc_per_row = torch.tensor([0, 256, 512, 768], dtype=torch.int32, device="cuda")
    assert not m._uses_flex(ids, one_doc_per_row, None)  # plain causal: no mask needed


@pytest.mark.parametrize("precision,compile", [("bf16", True), ("fp16", False)])
def test_one_gpu_worker_learns(ray_session, shards, tmp_path, precision, compile):
    d = config(shards, tmp_path, f"gpu-{precision}", 1, **{
        "scale.use_gpu": True, "scale.precision": precision, "scale.compile": compile,
        "scale.cpus_per_worker": 1, "model.attention": "auto",
    })
    cfg = train_config(d)
    result = fit(cfg)
    assert result.error is None
    rows = read_metrics(run_dir(cfg))
    loss = [r["loss"] for r in rows]
    assert np.isfinite(loss).all() and loss[-1] < loss[0] - 0.5
    assert all(r["mfu"] > 0 for r in rows)
