"""``raylm export``: a checkpoint as a Hugging Face Llama folder that ``transformers`` loads and
vLLM-style servers read, with no custom code.

The folder holds ``config.json`` (a ``LlamaConfig``, ``architectures: [LlamaForCausalLM]``,
``torch_dtype``), ``model.safetensors`` (sharded with an index past 5 GB) under Llama's
parameter names (``raylm.model.hf``), ``generation_config.json`` (the tokenizer's bos, eos and
pad ids) and the tokenizer: the run's SentencePiece model converted to a ``tokenizers``
``tokenizer.json`` that encodes exactly as SentencePiece does (byte fallback, user-defined
pieces, the dummy prefix), and the ``tokenizer.model`` itself. ``AutoTokenizer`` adds
``<bos>`` when the training documents started with it.

What a Llama cannot hold is decided here, never silently:

* MTP heads (``model.mtp_heads``) are dropped: Llama has no multi-token prediction, and the
  main model does not use them (they only add a training signal and drafts for
  ``raylm generate --speculative``).
* μP's multipliers are folded into the weights (``raylm.model.mup.fold_multipliers``), so the
  exported model computes exactly the logits of ours; a tied embedding whose input and output
  multipliers differ is written untied.
* An encoder (``model.causal: false``) is refused: ``LlamaForCausalLM`` is causal.

The checkpoint is read only through ``raylm.infer.checkpoint`` (``resolve_checkpoint``,
``read_config``, ``model_state_dict``), so every checkpoint format it reads exports alike.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from raylm.data.tokenizer import SPECIAL_TOKENS, load_tokenizer
from raylm.infer.checkpoint import model_state_dict, read_config, resolve_checkpoint
from raylm.model import ModelConfig
from raylm.model.hf import llama_config, llama_name
from raylm.model.mup import fold_multipliers
from raylm.storage import InputError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclasses.dataclass(kw_only=True, slots=True)
class ExportSummary:
    """What ``export`` wrote and decided, for the command's printout."""

    output: str
    checkpoint: str
    step: int
    params: int
    """Parameters of the exported model (a tied matrix counted once)."""
    dtype: str
    tokenizer: str
    add_bos: bool
    dropped_mtp_heads: int
    dropped_mtp_params: int
    folded_mup: bool
    untied: bool


def _drop_mtp(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> tuple[ModelConfig, dict[str, torch.Tensor], int]:
    mtp = [k for k in sd if k.startswith("mtp.")]
    dropped = sum(sd[k].numel() for k in mtp)
    return dataclasses.replace(cfg, mtp_heads=0), {k: v for k, v in sd.items() if k not in mtp}, dropped


def llama_weights(cfg: ModelConfig, sd: dict[str, torch.Tensor], dtype: torch.dtype):
    """``(the Llama-equivalent ModelConfig, its weights under Hugging Face's names, MTP
    parameters dropped)``: MTP heads removed, μP folded, cast to ``dtype``."""
    if not cfg.causal:
        raise InputError("export: model.causal is false (an encoder); Hugging Face LlamaForCausalLM is causal")
    cfg, sd, dropped = _drop_mtp(cfg, sd)
    cfg, sd = fold_multipliers(cfg, sd)
    weights = {llama_name(k): v.to(dtype).contiguous() for k, v in sd.items()}
    return cfg, weights, dropped  # a tied model has no lm_head.weight: Llama ties it on load


def hf_tokenizer(model_path: str, add_bos: bool, max_length: int):
    """A ``transformers`` fast tokenizer encoding exactly as the SentencePiece model at
    ``model_path`` (transformers' own conversion of the model proto: its normalizer spec, BPE
    merges or Unigram scores, byte fallback, user-defined pieces kept whole)."""
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    specials = dict(zip(("pad_token", "bos_token", "eos_token", "unk_token"), SPECIAL_TOKENS[:4]))
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(model_path, Path(tmp, "tokenizer.model"))
        return TokenizersBackend.from_pretrained(tmp, legacy=True, add_bos_token=add_bos, add_eos_token=False,
                                                 model_max_length=max_length, clean_up_tokenization_spaces=False,
                                                 **specials)


def write_tokenizer(model_path: str, add_bos: bool, max_length: int, out: Path) -> None:
    """``hf_tokenizer`` saved into ``out`` (``tokenizer.json``, ``tokenizer_config.json``) with
    the SentencePiece model itself (``tokenizer.model``). The config names the class every
    ``transformers`` version has (``PreTrainedTokenizerFast`` loads ``tokenizer.json`` as it is),
    without the loader's bookkeeping that version 5 writes."""
    hf_tokenizer(model_path, add_bos, max_length).save_pretrained(out)
    path = out / "tokenizer_config.json"
    config = json.loads(path.read_text())
    for key in ("backend", "is_local", "local_files_only", "extra_special_tokens"):
        config.pop(key, None)  # extra_special_tokens: only pad/bos/eos again, and a list older versions refuse
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    shutil.copy(model_path, out / "tokenizer.model")


def _tokenizer_path(cfg: Any, tokenizer: str | None) -> tuple[str, bool]:
    from raylm.infer.text import data_tokenizer

    try:
        found, add_bos = data_tokenizer(cfg)
    except InputError:
        if tokenizer is None:
            raise
        found, add_bos = None, False
    path = tokenizer or found
    if not Path(path).is_file():
        raise InputError(f"--tokenizer: {path}: no such file")
    return path, add_bos


def export(path: str | os.PathLike, output: str | os.PathLike, *, tokenizer: str | None = None,
           dtype: str = "float32", overwrite: bool = False) -> ExportSummary:
    """Write checkpoint (or run folder) ``path`` as a Hugging Face Llama folder ``output``.
    ``tokenizer``: a SentencePiece ``.model`` (default: the one the training data was prepared
    with, from its shard manifest). ``dtype``: of the written weights (the checkpoint holds
    float32)."""
    from huggingface_hub import save_torch_state_dict
    from transformers import GenerationConfig

    if dtype not in DTYPES:
        raise InputError(f"--dtype: {dtype!r} is not one of {sorted(DTYPES)}")
    out = Path(output)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{out}: exists and is not empty (--overwrite replaces it)")
    folder = resolve_checkpoint(path)
    cfg = read_config(folder)
    state = json.loads((folder / "state.json").read_text())
    tok_path, add_bos = _tokenizer_path(cfg, tokenizer)
    sp = load_tokenizer(tok_path)
    if sp.get_piece_size() > cfg.model.vocab_size:
        raise InputError(f"the tokenizer {tok_path} has {sp.get_piece_size()} pieces, more than the model's "
                         f"{cfg.model.vocab_size} embedding rows: it is not this model's tokenizer")
    llama_cfg, weights, dropped = llama_weights(cfg.model, model_state_dict(folder), DTYPES[dtype])
    ids = {name: sp.piece_to_id(piece) for name, piece in zip(("pad", "bos", "eos"), SPECIAL_TOKENS[:3])}

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    save_torch_state_dict(weights, out)  # model.safetensors, or shards and their index past 5 GB
    hf_cfg = llama_config(llama_cfg)
    hf_cfg.architectures = ["LlamaForCausalLM"]
    hf_cfg.dtype = DTYPES[dtype]
    hf_cfg.use_cache = True  # for serving; training set it off
    hf_cfg.bos_token_id, hf_cfg.eos_token_id, hf_cfg.pad_token_id = ids["bos"], ids["eos"], ids["pad"]
    hf_cfg.save_pretrained(out)
    config = json.loads((out / "config.json").read_text())  # what older readers look for too
    config.update(torch_dtype=dtype, rope_theta=llama_cfg.rope_theta)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    GenerationConfig(bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"]).save_pretrained(out)
    write_tokenizer(tok_path, add_bos, llama_cfg.max_seq_len, out)
    return ExportSummary(
        output=str(out), checkpoint=str(folder), step=int(state["step"]), params=llama_cfg.num_params(),
        dtype=dtype, tokenizer=tok_path, add_bos=add_bos, dropped_mtp_heads=cfg.model.mtp_heads,
        dropped_mtp_params=dropped, folded_mup=cfg.model.parametrization == "mup" or cfg.model.input_mult != 1
        or cfg.model.output_mult != 1, untied=cfg.model.tie_embeddings and not llama_cfg.tie_embeddings)


def describe(s: ExportSummary) -> str:
    """The command's printout: what was written and what changed on the way."""
    lines = [f"wrote {s.output}: LlamaForCausalLM, {s.params:,} parameters ({s.dtype}) from {s.checkpoint} "
             f"(step {s.step}); tokenizer from {s.tokenizer}" + (" (adds <bos>)" if s.add_bos else "")]
    if s.dropped_mtp_heads:
        lines.append(f"dropped {s.dropped_mtp_heads} MTP head(s) ({s.dropped_mtp_params:,} parameters): Llama has no "
                     "multi-token prediction; the main model is exported whole")
    if s.folded_mup:
        lines.append("folded the μP multipliers into the weights (embedding x input_mult, output matrix x "
                     "output_mult / width_mult, wq x attention-scale ratio): same logits, no custom code"
                     + ("; the tied embedding is written untied" if s.untied else ""))
    lines.append("load: transformers.AutoModelForCausalLM.from_pretrained(DIR), AutoTokenizer.from_pretrained(DIR)")
    return "\n".join(lines)
