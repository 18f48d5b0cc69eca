"""Packed test batches laid out like ``raylm.data.loader``'s, from document lengths per row."""

from __future__ import annotations

import itertools

import torch

IGNORE_INDEX = -100


def packed_batch(doc_lens: list[list[int]], vocab_size: int, *, seed: int = 0) -> dict:
    """Random tokens in rows made of documents of ``doc_lens[row]`` tokens (every row sums to
    the same ``L``); see ``batch_for``."""
    L = sum(doc_lens[0])
    g = torch.Generator().manual_seed(seed)
    return batch_for(torch.randint(0, vocab_size, (len(doc_lens), L), generator=g), doc_lens)


def batch_for(input_ids: torch.Tensor, doc_lens: list[list[int]]) -> dict:
    """``input_ids`` ``(B, L)``, ``position_ids`` restarting at every document, ``cu_seqlens``
    (int32, over the flattened batch), ``max_seqlen`` and ``labels`` shifted inside each
    document with -100 at every document's last token."""
    B, L = input_ids.shape
    if len(doc_lens) != B or any(sum(row) != L for row in doc_lens):
        raise ValueError(f"doc_lens {doc_lens} do not fill {B} rows of {L} tokens")
    lens = list(itertools.chain.from_iterable(doc_lens))
    cu_seqlens = torch.tensor([0, *itertools.accumulate(lens)], dtype=torch.int32)
    position_ids = torch.cat([torch.arange(n) for n in lens]).view(B, L)
    flat = input_ids.flatten()
    labels = torch.full_like(flat, IGNORE_INDEX)
    labels[:-1] = flat[1:]
    labels[cu_seqlens[1:].long() - 1] = IGNORE_INDEX
    return {
        "input_ids": input_ids,
        "labels": labels.view(B, L),
        "position_ids": position_ids,
        "cu_seqlens": cu_seqlens,
        "max_seqlen": max(lens),
    }


def doc_slices(doc_lens: list[list[int]]) -> list[list[slice]]:
    """The token slice of every document of every row."""
    return [[slice(a, b) for a, b in itertools.pairwise([0, *itertools.accumulate(row)])] for row in doc_lens]
