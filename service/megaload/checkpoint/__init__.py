"""megatron-core checkpoint library: the parity surface of Megatron Bridge's ``model_load_save``.

Usable without the HTTP service::

    from megaload.checkpoint import load_megatron_model, load_model_config
    state = load_megatron_model("/ckpts/run1", return_state_dict=True, use_cpu_init=True)

A caller that allows reading only below some directories says so with
``with confined_to([root, ...]):`` around the calls; every file a checkpoint names or links to
is then checked against them (:class:`OutsideRootsError` otherwise).
"""

from . import _errors, _tokenizer
from ._config import load_model_config, transformer_config_from_args
from ._distributed import (
    initialize_distributed,
    initialize_model_parallel,
    is_distributed_initialized,
    megatron_cpu_init_context,
    shutdown_distributed,
    temporary_distributed_context,
)
from ._dtypes import dtype_from_hf, dtype_from_str, parse_dtype, torch_dtype_from_mcore_config
from ._errors import *  # noqa: F403 (its __all__, re-exported below)
from ._extra_state import extra_state_names
from ._files import allowed_roots, confined_to
from ._hf_dir import hf_model_dir
from ._hf_load import hf_model_config, import_hf
from ._layout import CheckpointFormat, CheckpointLayout, inspect_layout, resolve_iteration_dir
from ._model import (
    MP_OVERRIDE_FIELDS,
    build_and_load_model,
    build_model,
    effective_model_type,
    load_megatron_model,
    load_weights,
    model_config,
    model_state_dict,
)
from ._partition import (
    PartitionRule,
    assemble_full,
    global_layer_names,
    padded_vocab_rows,
    partition_rules,
    rule_of,
    tp_slice,
    tp_slice_shape,
)
from ._provider import GPTModelProvider, padded_vocab_size
from ._read_progress import reporting_read_progress
from ._reader import TensorMetadata, estimate_model_bytes, read_tensor_metadata
from ._save import check_save_destination, save_megatron_model
from ._staging import remove_stale_saves
from ._stream_names import stream_key, with_stream_keys
from ._tokenizer import *  # noqa: F403 (its __all__, re-exported below)
from ._tokenizer_config import TokenizerConfig
from ._tokenizer_types import MegatronTokenizer

__all__ = [
    # reference API (Megatron Bridge model_load_save)
    "torch_dtype_from_mcore_config",
    "megatron_cpu_init_context",
    "temporary_distributed_context",
    "load_model_config",
    "build_and_load_model",
    "load_megatron_model",
    "save_megatron_model",
    "dtype_from_str",
    "dtype_from_hf",
    # beyond the reference
    "parse_dtype",
    "MegatronTokenizer",
    "TokenizerConfig",
    *_tokenizer.__all__,
    "GPTModelProvider",
    "padded_vocab_size",
    "transformer_config_from_args",
    "build_model",
    "effective_model_type",
    "stream_key",
    "with_stream_keys",
    "load_weights",
    "reporting_read_progress",
    "model_state_dict",
    "extra_state_names",
    "PartitionRule",
    "partition_rules",
    "rule_of",
    "global_layer_names",
    "padded_vocab_rows",
    "assemble_full",
    "tp_slice",
    "tp_slice_shape",
    "model_config",
    "MP_OVERRIDE_FIELDS",
    "inspect_layout",
    "resolve_iteration_dir",
    "CheckpointFormat",
    "CheckpointLayout",
    "read_tensor_metadata",
    "estimate_model_bytes",
    "TensorMetadata",
    "initialize_distributed",
    "initialize_model_parallel",
    "shutdown_distributed",
    "is_distributed_initialized",
    "confined_to",
    "allowed_roots",
    "remove_stale_saves",
    "check_save_destination",
    "import_hf",
    "hf_model_config",
    "hf_model_dir",
    # errors
    *_errors.__all__,
]
