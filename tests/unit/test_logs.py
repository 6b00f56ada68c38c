"""quiet_third_party: below debug, exactly megatron-core's accelerator-fallback notes and
torch's deprecation notices met on a load are ignored; every other warning still shows."""

from __future__ import annotations

import logging
import warnings

import pytest

from megaload.logs import quiet_third_party

# (message, category, module): as megatron-core 0.16 and torch 2.13 issue them on a CPU host
QUIETED = [
    ("Transformer Engine and Apex are not installed. Falling back to Torch optimizers.", UserWarning,
     "megatron.core.optimizer"),
    ("Apex is not installed. Falling back to Torch Norm", UserWarning, "megatron.core.models.backends"),
    ("Please use DTensor instead and we are deprecating ShardedTensor.", FutureWarning,
     "torch.distributed.checkpoint.planner_helpers"),
    ("`load_state_dict` is deprecated and will be removed in future versions. Please use `load` instead.",
     FutureWarning, "megaload.checkpoint._reader"),
]
SHOWN = [
    ("full scope is deprecated. Use empty cuda_graph_scope to capture the whole layer.", UserWarning,
     "megatron.core.transformer.transformer_config"),  # megatron, but not an accelerator fallback
    ("Apex is not installed. Falling back to Torch Norm", UserWarning, "someone_else"),  # not megatron's
    ("Transformer Engine and Apex are not installed.", DeprecationWarning, "megatron.core.optimizer"),
]


@pytest.fixture(autouse=True)
def _megatron_log_level():
    logger = logging.getLogger("megatron")
    before = logger.level
    yield
    logger.setLevel(before)


def test_megatron_info_lines_only_at_debug():
    quiet_third_party("info")
    assert not logging.getLogger("megatron.core.distributed.fsdp").isEnabledFor(logging.INFO)
    assert logging.getLogger("megatron.core").isEnabledFor(logging.WARNING)


def _shown(level: str, message: str, category: type[Warning], module: str) -> bool:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party(level)
        warnings.warn_explicit(message, category, filename=module.replace(".", "/") + ".py", lineno=1,
                               module=module, registry={})
    return bool(caught)


@pytest.mark.parametrize(("message", "category", "module"), QUIETED)
def test_quieted_below_debug_shown_at_debug(message, category, module):
    assert not _shown("info", message, category, module)
    assert _shown("debug", message, category, module)


@pytest.mark.parametrize(("message", "category", "module"), SHOWN)
def test_other_warnings_still_show(message, category, module):
    assert _shown("info", message, category, module)
