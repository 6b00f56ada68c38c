"""Megatron models as Hugging Face models: names, layouts, config.json, tokenizer files.

No HTTP here. One declarative table per architecture (:mod:`._architectures`) relates each
Hugging Face tensor to the Megatron tensor it comes from through a named transform
(:mod:`._transforms`: copy, vocabulary rows, q/k/v split per query group, gate/up split)::

    from megaload.checkpoint import load_model_config, load_megatron_model, model_state_dict
    from megaload.hf import hf_view

    config, args = load_model_config(path)
    view = hf_view(config, megatron_args=args, tokenizer=tokenizer)   # UnmappableModelError if none
    view.architecture                          # "Qwen2ForCausalLM"
    view.config_json, view.generation_config_json
    for name, tensor in view.export(model_state_dict(model)): ...

Supported: LlamaForCausalLM (Llama 2/3, ``llama3`` rope scaling), MistralForCausalLM,
Qwen2ForCausalLM (q/k/v biases), Qwen3ForCausalLM (q/k norm), Qwen3MoeForCausalLM (experts,
router). :func:`export_hf` writes the directory ``save_pretrained`` would;
``view.lazy_tensors(state)`` feeds :mod:`megaload.streaming` (what the Hub routes serve, with
:func:`config_files`, :func:`index_json` and :func:`tokenizer_files`); ``view.mcore_plan`` /
``view.import_tensors`` read the same tables the other way (HF -> Megatron).
A Bridge import exports as the architecture it came from (:func:`provider_hint`).
"""

from ..checkpoint import UnmappableModelError
from . import _export
from ._architectures import ARCHITECTURES, Architecture, architecture_named
from ._export import *  # noqa: F403 (its __all__, re-exported below)
from ._facts import ModelFacts, model_facts
from ._hints import architecture_of_provider, provider_hint
from ._import import MegatronTensor
from ._transforms import COPY, GLU, QKV, TRANSFORMS, VOCAB, Dims, Transform
from ._view import HFTensor, HFView, hf_view

__all__ = [
    "hf_view",
    "HFView",
    "HFTensor",
    "MegatronTensor",
    "UnmappableModelError",
    "architecture_of_provider",
    "provider_hint",
    "ARCHITECTURES",
    "Architecture",
    "architecture_named",
    "ModelFacts",
    "model_facts",
    "Transform",
    "Dims",
    "TRANSFORMS",
    "COPY",
    "VOCAB",
    "QKV",
    "GLU",
    *_export.__all__,
]
