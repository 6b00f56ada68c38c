"""The GPT model provider: a TransformerConfig that also knows how to build its GPT model.

It carries what megatron-core's ``GPTModel`` needs beyond ``TransformerConfig`` (vocabulary and
its padding, sequence length, position embeddings, tied embeddings, which layer spec) under the
field names Megatron Bridge uses in ``run_config.yaml``, so the two read each other's files.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, Optional

# GPTModel and its layer specs come with the library, not with the first load (about 0.1 s of
# imports, torch.compile decorators among them, that a load would otherwise pay once)
from megatron.core.models.gpt import GPTModel, gpt_layer_specs
from megatron.core.transformer import TransformerConfig

from ._errors import IncompatibleConfigError, UnsupportedCheckpointError, summarize

__all__ = ["GPTModelProvider", "LAYER_SPECS", "padded_vocab_size", "gpt_layer_spec"]

logger = logging.getLogger(__name__)

# Layer-spec names as Megatron Bridge records them (the function's name in its gpt_provider).
# On-disk keys are the same for all of them: megatron-core's local spec maps its module names
# onto Transformer Engine's, so a checkpoint written with one loads with the other; every one is
# built with the local spec (gpt_layer_spec).
LAYER_SPECS = (
    "local_layer_spec",
    "default_layer_spec",
    "transformer_engine_layer_spec",
    "transformer_engine_full_layer_spec",
    "modelopt_transformer_layer_spec",
)


def padded_vocab_size(vocab_size: int, divisible_by: int, tensor_parallel_size: int = 1) -> int:
    """Round ``vocab_size`` up to a multiple of ``divisible_by * tensor_parallel_size``."""
    if vocab_size <= 0:
        raise IncompatibleConfigError(f"vocab_size must be positive, got {vocab_size}", field="vocab_size")
    multiple = max(1, divisible_by) * max(1, tensor_parallel_size)
    return int(math.ceil(vocab_size / multiple) * multiple)


def _transformer_engine_available() -> bool:
    return bool(getattr(gpt_layer_specs, "HAVE_TE", False))


def gpt_layer_spec(config: TransformerConfig, spec_name: str, *, normalization: str | None = None):
    """The megatron-core ModuleSpec for one GPT layer: the local spec, whatever ``spec_name``
    names and whether or not Transformer Engine is installed, with one exception below.

    The spec decides the model's state-dict keys, which the service streams: megatron-core's
    Transformer Engine spec fuses the layer norms into the next linear layer
    (``self_attention.linear_qkv.layer_norm_weight``, ``mlp.linear_fc1.layer_norm_weight``)
    where the local spec has ``input_layernorm.weight`` and ``pre_mlp_layernorm.weight``.
    Upstream's loader builds the Transformer Engine spec where TE imports, so its keys depend
    on the host; ours are the local spec's on every host. Checkpoint keys do not change: the
    local spec maps its norms onto the fused names on disk, so a checkpoint written with
    either spec loads (the weights are the same; nothing here runs the TE kernels).

    The exception: grouped-GEMM MoE experts (``moe_grouped_gemm``). The local spec builds them
    with the ``grouped_gemm`` kernels; on a host without those but with Transformer Engine, TE's
    spec is built, as upstream does, and the streamed keys are TE's (fused attention norm, TE's
    grouped expert weights). Without either the model is refused.
    """
    if spec_name not in LAYER_SPECS:
        raise UnsupportedCheckpointError(f"unknown transformer layer spec {summarize(spec_name)}; known: {', '.join(LAYER_SPECS)}")
    if getattr(config, "multi_latent_attention", False):
        raise UnsupportedCheckpointError("multi-latent attention (MLA) models are not supported yet")
    if config.num_moe_experts and config.moe_grouped_gemm:
        from megatron.core.transformer.moe.grouped_gemm_util import grouped_gemm_is_available

        if not grouped_gemm_is_available():
            if spec_name != "local_layer_spec" and _transformer_engine_available():
                logger.info("grouped-GEMM experts without the grouped_gemm kernels: building %s with "
                            "Transformer Engine's spec (its state-dict names)", spec_name)  # fmt: skip
                return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec(
                    num_experts=config.num_moe_experts,
                    moe_grouped_gemm=config.moe_grouped_gemm,
                    qk_layernorm=config.qk_layernorm,
                )
            raise IncompatibleConfigError(
                "moe_grouped_gemm is true: grouped-GEMM experts need the grouped_gemm kernels or Transformer "
                "Engine (a GPU host); this host has neither. Sequential experts (moe_grouped_gemm: false) "
                "load anywhere",
                field="moe_grouped_gemm",
            )
    if spec_name != "local_layer_spec":
        logger.debug("building %s with the local layer spec (same checkpoint keys, host-independent names)", spec_name)
    return gpt_layer_specs.get_gpt_layer_local_spec(
        num_experts=config.num_moe_experts,
        moe_grouped_gemm=config.moe_grouped_gemm,
        qk_layernorm=config.qk_layernorm,
        normalization=normalization or config.normalization,
    )


@dataclass
class GPTModelProvider(TransformerConfig):
    """TransformerConfig plus the GPT-specific fields; :meth:`provide` builds the model."""

    # Not a dataclass field (no annotation): the Bridge provider class a run config named, e.g.
    # ``megatron.bridge.models.mistral.mistral_provider.MistralModelProvider`` (set when read).
    source_target = "megatron.bridge.models.gpt_provider.GPTModelProvider"

    fp16_lm_cross_entropy: bool = False
    parallel_output: bool = True
    share_embeddings_and_output_weights: bool = True
    make_vocab_size_divisible_by: int = 128
    position_embedding_type: str = "learned_absolute"
    rotary_base: int = 10000
    rotary_percent: float = 1.0
    rope_scaling: bool = False
    rope_scaling_factor: float = 1.0
    rotary_scaling_factor: Optional[float] = None
    seq_len_interpolation_factor: Optional[float] = None
    seq_length: int = 1024
    scatter_embedding_sequence_parallel: bool = True
    tp_comm_overlap_cfg: Optional[Any] = None
    use_transformer_engine_full_layer_spec: bool = False
    use_transformer_engine_op_fuser: bool = False
    transformer_layer_spec: str = "local_layer_spec"
    hf_model_id: Optional[str] = None
    vocab_size: Optional[int] = None
    should_pad_vocab: bool = False
    mtp_enabled: bool = False
    restore_modelopt_state: bool = False
    use_arbitrary_attention_mask: Optional[bool] = None

    def effective_vocab_size(self, tensor_parallel_size: int | None = None) -> int:
        """The vocabulary size the embedding is built with (padded when should_pad_vocab) at
        ``tensor_parallel_size`` (default: this config's)."""
        if self.vocab_size is None:
            raise IncompatibleConfigError("vocab_size must be set to build a GPT model", field="vocab_size")
        if not self.should_pad_vocab:
            return int(self.vocab_size)
        tp = self.tensor_model_parallel_size if tensor_parallel_size is None else tensor_parallel_size
        return padded_vocab_size(self.vocab_size, self.make_vocab_size_divisible_by, tp)

    def provide(self, pre_process: bool | None = None, post_process: bool | None = None, vp_stage: int | None = None):
        """Build the megatron-core ``GPTModel`` for this rank's pipeline stage."""
        from megatron.core import parallel_state

        if getattr(self, "mtp_num_layers", None):
            raise UnsupportedCheckpointError("multi-token-prediction (mtp_num_layers) models are not supported yet")
        if pre_process is None:
            pre_process = parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
        if post_process is None:
            post_process = parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
        spec = gpt_layer_spec(self, self.transformer_layer_spec)
        if self.position_embedding_type not in ("learned_absolute", "rope", "yarn", "none", "mrope"):
            raise IncompatibleConfigError(
                f"unknown position_embedding_type {summarize(self.position_embedding_type)}", field="position_embedding_type"
            )
        return GPTModel(
            config=self,
            transformer_layer_spec=spec,
            vocab_size=self.effective_vocab_size(),
            max_sequence_length=self.seq_length,
            pre_process=pre_process,
            post_process=post_process,
            fp16_lm_cross_entropy=self.fp16_lm_cross_entropy,
            parallel_output=self.parallel_output,
            share_embeddings_and_output_weights=self.share_embeddings_and_output_weights,
            position_embedding_type=self.position_embedding_type,
            rotary_percent=self.rotary_percent,
            rotary_base=self.rotary_base,
            rope_scaling=self.rope_scaling,
            rope_scaling_factor=self.rope_scaling_factor,
            seq_len_interpolation_factor=self.seq_len_interpolation_factor,
            scatter_embedding_sequence_parallel=self.scatter_embedding_sequence_parallel,
            vp_stage=vp_stage,
        )


GPT_PROVIDER_FIELDS = frozenset(f.name for f in dataclasses.fields(GPTModelProvider))
