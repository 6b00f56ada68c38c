"""Which Hugging Face architecture a checkpoint came from, when its config says so.

A Megatron Bridge import records the provider class it built in ``run_config.yaml``
(``model._target_``: ``...mistral_provider.MistralModelProvider``), which our provider keeps as
``source_target``. Where the model's features cannot tell two architectures apart (a Mistral
without a sliding window computes what a Llama does), that name keeps the original's. It is a
hint: :func:`megaload.hf.hf_view` uses it only when that architecture can hold the model. The
class is never imported.
"""

from __future__ import annotations

__all__ = ["architecture_of_provider", "provider_hint"]

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


def provider_hint(config: object) -> str | None:
    """The architecture a provider's recorded Bridge class (``source_target``) stands for."""
    target = getattr(config, "source_target", None)
    return architecture_of_provider(target) if isinstance(target, str) else None
