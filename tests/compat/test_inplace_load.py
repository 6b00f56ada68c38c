"""Loading into the model's own memory: no zeroing of tensors the checkpoint covers whole,
gated-MLP halves merged in place. A model past toy size (tensors over 2 MiB, a gated MLP)
round-trips bit for bit against the weights it was saved from."""

from __future__ import annotations

import pytest
import torch

from megaload.checkpoint import (
    GPTModelProvider,
    load_megatron_model,
    megatron_cpu_init_context,
    model_state_dict,
    save_megatron_model,
    temporary_distributed_context,
)

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


@pytest.mark.parametrize("huge_pages", ["on", "off"])
def test_large_gated_model_round_trips_bit_for_bit(tmp_path, assert_bitwise_equal, monkeypatch, huge_pages):
    """With and without huge pages advised for the parameters before the read (MEGALOAD_HUGE_PAGES)."""
    monkeypatch.setenv("MEGALOAD_HUGE_PAGES", huge_pages)
    weights = _saved_gated_model(tmp_path / "ckpt")
    assert weights["model.decoder.layers.0.mlp.linear_fc1.weight"].nbytes >= 2 << 20
    state = load_megatron_model(tmp_path / "ckpt", return_state_dict=True, use_cpu_init=True)
    assert_bitwise_equal({f"model.{k}": v for k, v in state["model"].items() if isinstance(v, torch.Tensor)}, weights)
    model = load_megatron_model(tmp_path / "ckpt", use_cpu_init=True)
    assert_bitwise_equal(model_state_dict(model), weights)


def test_gated_halves_are_read_into_the_parameter_itself(tmp_path):
    """The returned fc1 is the model's parameter (its two halves read in place), not a
    concatenated copy of them."""
    from megaload.checkpoint import load_model_config
    from megaload.checkpoint._model import _single_rank_config, build_model
    from megaload.checkpoint._weights import load_weights

    _saved_gated_model(tmp_path / "ckpt")
    config, _ = load_model_config(tmp_path / "ckpt")
    _single_rank_config(config, use_cpu_init=True, mp_overrides=None)
    with temporary_distributed_context():
        with megatron_cpu_init_context(config):
            model = build_model(config)
        state = load_weights(model, tmp_path / "ckpt", return_state_dict=True)
        fc1 = model[0].decoder.layers[0].mlp.linear_fc1.weight
        assert state["model"]["decoder.layers.0.mlp.linear_fc1.weight"].data_ptr() == fc1.data_ptr()
