"""What ``megaload-client`` prints on standard output: JSON under ``--json``, else text.

:class:`Output` chooses between the two for every answer; the functions here render the
service's documents (models, jobs, state-dict indexes) as the text lines the commands print.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from ..sizes import format_size
from ..types import Job, ModelInfo, StateDictIndex

__all__ = [
    "Output", "format_rows", "format_shape", "hint", "index_text", "job_line", "model_line", "model_text",
    "summarize_keys",
]

# What the service's messages call its request fields, as this command line spells them.
_HINTS = ((re.compile(r"\bpass overwrite=true\b", re.I), "pass --overwrite"),)


class Output:
    """Prints each answer: as JSON under ``--json``, else as text."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def emit(self, value: Any, text: str, *, quiet: str | None = None) -> None:
        """``value`` as JSON under ``--json``, else ``text``; ``quiet`` (ids) instead of both when given."""
        if quiet is not None:
            if quiet:
                print(quiet)
        elif self.as_json:
            print(json.dumps(_jsonable(value), indent=2, sort_keys=False))
        else:
            print(text)


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def hint(text: str) -> str:
    """The service's words for its request fields, as this command line's flags."""
    for pattern, flag in _HINTS:
        text = pattern.sub(flag, text)
    return text


def model_line(m: ModelInfo) -> str:
    pin = " pinned" if m.pinned else ""
    return f"{m.id}  {m.dtype:<9} {format_size(m.size_bytes):>10}  {m.parameter_count:>14,} params{pin}  {m.iteration_dir}"


def model_text(m: ModelInfo) -> str:
    rows = [
        ("id", m.id), ("checkpoint", m.checkpoint_path), ("iteration dir", m.iteration_dir),
        ("iteration", m.iteration), ("format", m.format), ("model type", m.model_type), ("dtype", m.dtype),
        ("parameters", f"{m.parameter_count:,}"), ("size", format_size(m.size_bytes)), ("pinned", m.pinned),
        ("loaded at", m.loaded_at.isoformat()), ("last used", m.last_used_at.isoformat()),
        ("load seconds", f"{m.load_seconds:.2f}"), ("active streams", m.active_leases),
    ]
    return format_rows(rows)


def format_rows(rows: Sequence[tuple[str, Any]]) -> str:
    return "\n".join(f"{k:<15} {v}" for k, v in rows if v is not None)


def job_line(j: Job) -> str:
    what = j.target or j.model_id or ""
    phase = f" ({j.phase})" if j.phase and j.state.value == "running" else ""
    line = f"{j.id}  {j.kind.value:<4} {j.state.value:<9} {j.progress:>4.0%}{phase}  {what}"
    if j.error is not None:
        line += f"\n    error: {j.error.title}" + (f": {hint(j.error.detail)}" if j.error.detail else "")
    return line


def format_shape(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(n) for n in shape) + ("," if len(shape) == 1 else "") + ")"


def summarize_keys(keys: Sequence[str], *, show: int = 3) -> str:
    """``keys`` in one short line: how many, their common last part, the first few.

    ``17 entries (*._extra_state): a, b, c and 14 more``; all of them when ``show`` or fewer.
    """
    if not keys:
        return "none"
    tails = {key.rsplit(".", 1)[-1] for key in keys}
    pattern = f" (*.{next(iter(tails))})" if len(tails) == 1 and len(keys) > 1 else ""
    shown = ", ".join(keys[:show])
    more = f" and {len(keys) - show} more (--json lists them all)" if len(keys) > show else ""
    return f"{len(keys)} {'entry' if len(keys) == 1 else 'entries'}{pattern}: {shown}{more}"


def index_text(index: StateDictIndex) -> str:
    lines = []
    for name, tensor in index.tensors.items():
        lines.append(f"{name}  {tensor.dtype}  {format_shape(tensor.shape)}  shard {tensor.shard}")
    if not index.tensors:  # an older service: names only
        lines.extend(f"{name}  {shard}" for name, shard in index.weight_map.items())
    for shard in index.shards:
        lines.append(f"shard {shard.index}: {shard.filename}  {format_size(shard.size)}, {shard.tensor_count} tensors")
    lines.append(f"{len(index.weight_map)} tensors, {format_size(index.total_size)} in {len(index.shards)} shard(s)")
    if index.skipped:
        lines.append(f"left out (not tensors): {summarize_keys(index.skipped)}")
    return "\n".join(lines)

