"""Loading into the model's own memory: huge-page homes for large tensors, no zeroing of
tensors the checkpoint covers whole, gated-MLP halves merged in place. A model large enough to
take these paths (tensors past 2 MiB, a gated MLP) round-trips bit for bit against the weights
it was saved from."""

from __future__ import annotations

import torch

from megaload.checkpoint import (
    GPTModelProvider,
    load_megatron_model,
    megatron_cpu_init_context,
    model_state_dict,
    save_megatron_model,
    temporary_distributed_context,
)
from megaload.checkpoint._inplace import HUGE_PAGE_MIN_BYTES, rehome_on_huge_pages

# fc1 is [2 * 2048, 512] fp32 = 8 MiB: past the huge-page threshold, and gated (two halves on disk)
GATED = dict(
    num_layers=2, hidden_size=512, num_attention_heads=8, ffn_hidden_size=2048, vocab_size=1000,
    seq_length=64, position_embedding_type="rope", gated_linear_unit=True, normalization="RMSNorm",
    share_embeddings_and_output_weights=False,
)


def _saved_gated_model(path):
    provider = GPTModelProvider(**GATED)
    with temporary_distributed_context():
        torch.manual_seed(3)
        with megatron_cpu_init_context(provider):
            model = provider.provide()
        weights = {k: v.clone() for k, v in model_state_dict(model).items()}
        save_megatron_model(model, path)
    return weights


def test_large_gated_model_round_trips_bit_for_bit(tmp_path, assert_bitwise_equal):
    weights = _saved_gated_model(tmp_path / "ckpt")
    assert weights["model.decoder.layers.0.mlp.linear_fc1.weight"].nbytes >= HUGE_PAGE_MIN_BYTES
    state = load_megatron_model(tmp_path / "ckpt", return_state_dict=True, use_cpu_init=True)
    assert_bitwise_equal({f"model.{k}": v for k, v in state["model"].items() if isinstance(v, torch.Tensor)}, weights)
    model = load_megatron_model(tmp_path / "ckpt", use_cpu_init=True)
    assert_bitwise_equal(model_state_dict(model), weights)


def test_gated_halves_are_read_into_the_parameter_itself(tmp_path):
    """The returned fc1 is the model's parameter (its two halves read in place), not a
    concatenated copy of them."""
    from megaload.checkpoint._model import build_model, load_weights, _single_rank_config
    from megaload.checkpoint import load_model_config

    _saved_gated_model(tmp_path / "ckpt")
    config, _ = load_model_config(tmp_path / "ckpt")
    _single_rank_config(config, use_cpu_init=True, mp_overrides=None)
    with temporary_distributed_context():
        with megatron_cpu_init_context(config):
            model = build_model(config)
        state = load_weights(model, tmp_path / "ckpt", return_state_dict=True)
        fc1 = model[0].decoder.layers[0].mlp.linear_fc1.weight
        assert state["model"]["decoder.layers.0.mlp.linear_fc1.weight"].data_ptr() == fc1.data_ptr()


def test_rehome_moves_large_tensors_once_and_keeps_parameters():
    module = torch.nn.Module()
    module.big = torch.nn.Parameter(torch.empty(1 << 20, dtype=torch.float32))  # 4 MiB
    module.small = torch.nn.Parameter(torch.ones(16))
    module.register_buffer("table", torch.empty(1 << 20, dtype=torch.bfloat16))  # 2 MiB
    child = torch.nn.Module()
    child.shared = module.big  # the same Parameter in two places
    module.child = child
    module.big.tensor_model_parallel = True
    big, small, old_ptr = module.big, module.small, module.big.data_ptr()
    moved = rehome_on_huge_pages([module])
    assert moved == (4 << 20) + (2 << 20)
    assert module.big is big and module.child.shared is big and big.tensor_model_parallel  # identity, attributes
    assert big.data_ptr() != old_ptr and big.shape == (1 << 20,) and big.dtype == torch.float32
    assert module.small is small and small.data_ptr() == small.data_ptr() and torch.equal(small, torch.ones(16))
    assert module.table.dtype == torch.bfloat16 and module.table.shape == (1 << 20,)
    big.data.fill_(2.0)  # writable, and the memory stays valid while the tensor lives
    assert float(big.sum()) == 2.0 * (1 << 20)
