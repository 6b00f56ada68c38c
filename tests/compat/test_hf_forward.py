"""The mapping checked by two implementations we did not write: megatron-core's forward of a
Megatron model against transformers' forward of its export, for every architecture.

Each case is a small random megatron-core GPTModel (float32, padded vocabulary, norms and
biases moved away from their initial values so a misplaced one shows), run on CPU
(``tests/mcore_cpu_forward.py``); its state dict goes through the HF view into a directory
that ``AutoModelForCausalLM.from_pretrained`` loads (transformers 5 also re-fuses the MoE
experts on load). Logits agree to 1e-4 over the true vocabulary.

Where a Python with transformers 4.x is at hand (``tests/transformers4.py``), that version
loads the same directories and computes the same logits too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mcore_cpu_forward import megatron_logits
from transformers4 import needs_transformers4, transformers4_logits

from megaload.checkpoint import GPTModelProvider, model_state_dict, temporary_distributed_context
from megaload.hf import hf_view, write_hf_directory


def _mcore_version() -> tuple[int, ...]:
    from importlib.metadata import version

    return tuple(int(x) for x in version("megatron-core").split(".")[:2])


# megatron-core before 0.16 moves the rotary embedding's inv_freq to torch.cuda.current_device()
# inside forward, so its forward cannot run on a CPU-only torch; the mapping is checked on 0.16+.
pytestmark = pytest.mark.skipif(
    _mcore_version() < (0, 16), reason="megatron-core < 0.16: the rotary embedding's forward needs CUDA"
)

INPUT_IDS = torch.randint(0, 100, (1, 48), generator=torch.Generator().manual_seed(7))
VOCAB = 100  # padded to 128 in the Megatron model

CASES = {
    # base 10000 over head_dim 16: wavelengths up to ~20k tokens, so Llama 3's scaling (beyond 2k) acts
    "llama3": (dict(rope_scaling=True, rope_scaling_factor=8.0, rotary_base=10000, seq_length=64), None),
    "mistral": (dict(), "MistralForCausalLM"),
    "qwen2_tied": (dict(add_qkv_bias=True, share_embeddings_and_output_weights=True, rotary_base=1000000.0), None),
    "qwen3_head_dim": (dict(qk_layernorm=True, kv_channels=32), None),  # head_dim != hidden / heads
    "qwen3_moe": (dict(qk_layernorm=True, num_moe_experts=4, moe_router_topk=2, moe_ffn_hidden_size=32,
                       moe_token_dispatcher_type="allgather", moe_aux_loss_coeff=0.0), None),
    "qwen3_moe_pre_softmax": (dict(qk_layernorm=True, num_moe_experts=4, moe_router_topk=2, moe_ffn_hidden_size=32,
                                   moe_router_pre_softmax=True, moe_token_dispatcher_type="allgather"), None),
}
EXPECTED_ARCHITECTURE = {
    "llama3": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2_tied": "Qwen2ForCausalLM",
    "qwen3_head_dim": "Qwen3ForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM", "qwen3_moe_pre_softmax": "Qwen3MoeForCausalLM",
}


def _provider(**overrides) -> GPTModelProvider:
    fields = dict(
        num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=96, kv_channels=16,
        add_bias_linear=False, gated_linear_unit=True, activation_func=F.silu, normalization="RMSNorm",
        layernorm_epsilon=1e-6, position_embedding_type="rope", rotary_base=10000,
        share_embeddings_and_output_weights=False, vocab_size=VOCAB, should_pad_vocab=True,
        make_vocab_size_divisible_by=64, seq_length=64, bf16=False, params_dtype=torch.float32, hidden_dropout=0.0,
        attention_dropout=0.0, use_cpu_initialization=True, perform_initialization=True, init_method_std=0.15,
    )
    fields.update(overrides)
    return GPTModelProvider(**fields)


def _random_model_logits_and_state(provider: GPTModelProvider):
    with temporary_distributed_context("gloo"):
        torch.manual_seed(1234)
        model = provider.provide(pre_process=True, post_process=True)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "layernorm" in name:
                    param.add_(torch.randn_like(param) * 0.3)
                elif name.endswith("bias"):
                    param.normal_(0.0, 0.1)
        logits = megatron_logits(model, INPUT_IDS)
        state = {k: v.detach().clone() for k, v in model_state_dict(model).items()}
    return logits, state


def _hf_logits(directory: Path) -> torch.Tensor:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(INPUT_IDS).logits.float()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """case -> (directory, megatron logits, view), made once for the module."""
    out = {}
    for case, (overrides, architecture) in CASES.items():
        provider = _provider(**overrides)
        logits, state = _random_model_logits_and_state(provider)
        assert logits.shape[-1] == 128  # the padded vocabulary
        view = hf_view(provider, architecture=architecture)
        directory = tmp_path_factory.mktemp(case)
        write_hf_directory(view, state, directory)
        out[case] = (directory, logits, view, state)
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_transformers_computes_megatron_cores_logits(exported, case):
    directory, want, view, _ = exported[case]
    assert view.architecture == EXPECTED_ARCHITECTURE[case]
    config = json.loads((directory / "config.json").read_text())
    assert config["architectures"] == [view.architecture] and config["vocab_size"] == VOCAB
    got = _hf_logits(directory)
    assert got.shape == (1, INPUT_IDS.shape[1], VOCAB)
    torch.testing.assert_close(got, want[..., :VOCAB], atol=1e-4, rtol=0)


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_tables_read_backwards_give_the_megatron_tensors_back(exported, case):
    """HF -> Megatron with the same tables: every tensor back, bit for bit; vocabulary rows past
    the true vocabulary (dropped on export) come back as zeros."""
    from safetensors.torch import load_file

    directory, _, view, state = exported[case]
    hf = {}
    for shard in sorted(directory.glob("model-*.safetensors")):
        hf.update(load_file(str(shard)))
    back = dict(view.import_tensors(hf, padded_vocab_size=128))
    assert back.keys() == state.keys()
    for name, tensor in state.items():
        if name.endswith(("word_embeddings.weight", "output_layer.weight")):
            assert torch.equal(back[name][:VOCAB], tensor[:VOCAB]) and not back[name][VOCAB:].any(), name
        else:
            assert torch.equal(back[name], tensor) and back[name].dtype == tensor.dtype, name


def test_the_llama3_rope_scaling_matters(exported, tmp_path):
    """Without its rope_scaling the same weights compute logits off by far more than the tolerance."""
    import shutil

    directory, want, _, _ = exported["llama3"]
    plain = tmp_path / "plain"
    shutil.copytree(directory, plain)
    config = json.loads((plain / "config.json").read_text())
    assert config["rope_scaling"]["rope_type"] == "llama3"
    config["rope_scaling"] = None
    (plain / "config.json").write_text(json.dumps(config))
    assert (_hf_logits(plain) - want[..., :VOCAB]).abs().max() > 1e-2


@needs_transformers4
@pytest.mark.parametrize("case", sorted(CASES))
def test_transformers_4_computes_the_same_logits(exported, case):
    directory, want, view, _ = exported[case]
    got, loaded = transformers4_logits(directory, INPUT_IDS, torch.float32)
    assert loaded.split()[1:] == [view.architecture.replace("ForCausalLM", "Config"), view.architecture]
    torch.testing.assert_close(got, want[..., :VOCAB], atol=1e-4, rtol=0)
