"""Which Hugging Face architecture a checkpoint came from, when its config says so.

A Megatron Bridge import records the provider class it built in ``run_config.yaml``
(``model._target_``: ``...mistral_provider.MistralModelProvider``). Where the model's features
cannot tell two architectures apart (a Mistral without a sliding window computes what a Llama
does), that name keeps the original's. It is a hint: :func:`megaload.hf.hf_view` uses it only
when that architecture can hold the model. The class is never imported.
"""

from __future__ import annotations

import os

from ..checkpoint import CheckpointError, inspect_layout
from ..checkpoint._layout import RUN_CONFIG_FILENAME, CheckpointFormat
from ..checkpoint._run_config import read_run_config

__all__ = ["architecture_hint", "architecture_of_provider"]

# Provider class name (lowercased) fragments, most specific first.
_PROVIDER_FRAGMENTS = (
    ("qwen3moe", "Qwen3MoeForCausalLM"),
    ("qwen3", "Qwen3ForCausalLM"),
    ("qwen2", "Qwen2ForCausalLM"),
    ("qwen25", "Qwen2ForCausalLM"),
    ("mistral", "MistralForCausalLM"),
    ("llama", "LlamaForCausalLM"),
)


def architecture_of_provider(target: str) -> str | None:
    """The HF architecture a Bridge provider class (``module.ClassName``) stands for, if any."""
    name = target.rsplit(".", 1)[-1].lower().replace("_", "")
    if "nemotron" in name or "vl" in name:
        return None
    for fragment, architecture in _PROVIDER_FRAGMENTS:
        if fragment in name:
            return architecture
    return None


def architecture_hint(checkpoint_path: str | os.PathLike) -> str | None:
    """The architecture named by a Bridge checkpoint's provider class; None for Megatron-LM
    checkpoints, generic providers and anything unreadable."""
    try:
        layout = inspect_layout(checkpoint_path)
        if layout.format is not CheckpointFormat.BRIDGE:
            return None
        model = read_run_config(layout.iteration_dir / RUN_CONFIG_FILENAME).get("model")
    except CheckpointError:
        return None
    target = model.get("_target_") if isinstance(model, dict) else None
    return architecture_of_provider(target) if isinstance(target, str) else None
