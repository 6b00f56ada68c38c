"""megatron-core's GPT forward on a CPU-only torch, to check exported weights against.

A CPU forward of megatron-core 0.16 meets CUDA in four places; each is met here for one model
instance inside one process group, changing neither megatron-core nor torch:

- the default causal mask is built on CUDA: an explicit boolean mask is passed;
- attention dropout forks the CUDA RNG tracker: the inference tracker megatron-core provides
  (``initialize_rng_tracker(inference_rng_tracker=True)``) forks nothing;
- the unfused attention takes its score buffer from the global memory buffer, allocated on
  CUDA: the buffer is filled with a CPU tensor first (the buffer is data, reset with the group);
- ``RotaryEmbedding.get_emb`` and ``TopKRouter.gating`` move a CPU tensor to CUDA first: the
  model's own instances get the same computation without the move (rotary: frequencies
  concatenated, non-interleaved; router: the gating linear layer, which megatron-core computes
  with Transformer Engine's GEMM when installed and plain ``F.linear`` otherwise).

Importable from every test folder (``tests/`` is on ``sys.path``).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

__all__ = ["cpu_forward_context", "megatron_logits"]

_BUFFER_ELEMENTS = 1 << 20


@contextlib.contextmanager
def cpu_forward_context():
    """The RNG tracker megatron-core uses for inference, for the body; the default one after.
    Call inside a process group with model-parallel state (``temporary_distributed_context``)."""
    from megatron.core.tensor_parallel import random as mp_random

    mp_random.initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)
    try:
        yield
    finally:
        mp_random.initialize_rng_tracker(force_reset=True)


def _rotary_on_cpu(rope) -> None:
    def get_emb(max_seq_len: int, offset: int = 0) -> torch.Tensor:
        if rope.rotary_interleaved:
            raise NotImplementedError("interleaved rotary embedding")
        freqs = rope.get_freqs_non_repeated(max_seq_len, offset)
        return torch.cat((freqs, freqs), dim=-1)[:, None, None, :]

    rope.get_emb = get_emb


def _router_on_cpu(router) -> None:
    def gating(hidden: torch.Tensor) -> torch.Tensor:
        dtype = {"fp32": torch.float32, "fp64": torch.float64}.get(router.config.moe_router_dtype, hidden.dtype)
        bias = router.bias.to(dtype) if router.bias is not None else None
        return F.linear(hidden.to(dtype), router.weight.to(dtype), bias)

    router.gating = gating


def megatron_logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits ``[batch, seq, padded_vocab]`` (float32) of a megatron-core GPTModel on CPU, causal."""
    from megatron.core import parallel_state
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
    from megatron.core.transformer.moe.router import TopKRouter

    for module in model.modules():
        if isinstance(module, RotaryEmbedding):
            _rotary_on_cpu(module)
        elif isinstance(module, TopKRouter):
            _router_on_cpu(module)
    dtype = next(model.parameters()).dtype
    buffer = parallel_state.get_global_memory_buffer()
    for kind in {dtype, torch.float32}:
        buffer.buffer[("mpu", kind)] = torch.empty(_BUFFER_ELEMENTS, dtype=kind)
    seq = input_ids.shape[1]
    mask = torch.triu(torch.ones(seq, seq, dtype=torch.bool), diagonal=1)[None, None]
    positions = torch.arange(seq)[None].expand_as(input_ids)
    model.eval()
    with cpu_forward_context(), torch.no_grad():
        logits = model(input_ids=input_ids, position_ids=positions, attention_mask=mask)
    return logits.float()
