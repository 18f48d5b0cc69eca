"""The model: a Llama-style Transformer for packed batches, its config and size flavors.

``raylm.model.config`` does not need torch; ``Transformer`` is imported on first use so that
``from raylm.model import ModelConfig`` stays torch-free too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from raylm.model.config import FLAVORS, ModelConfig, model_config

if TYPE_CHECKING:
    from raylm.model.transformer import Transformer

__all__ = ["FLAVORS", "ModelConfig", "Transformer", "model_config"]


def __getattr__(name: str) -> Any:
    if name == "Transformer":
        from raylm.model.transformer import Transformer

        return Transformer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
