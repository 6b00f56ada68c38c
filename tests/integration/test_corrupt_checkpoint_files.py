"""Hostile or broken small files inside a checkpoint: always a 422 problem naming the file,
at a cost bounded by limits rather than by what the file asks for.

- nesting: a ``run_config.yaml`` or ``metadata.json`` nested 100,000 levels deep (before:
  RecursionError, a 500);
- unknown keys in ``metadata.json``, which newer writers add: ignored, the checkpoint loads
  (before: TypeError inside megatron-core, a 500);
- YAML aliases: a 1 KB run config whose aliases expand to millions of nodes (before: a 72 MB
  problem response, or a multi-megabyte log line per request), and values too long to show
  whole: refused while parsing / shown as bounded summaries;
- size: a 200 MiB ``metadata.json`` (before: about 900 MiB of server memory and seconds of
  stalled event loop): refused before it is read, measured on a real ``megaload serve``
  process through its peak RSS.

Each file is a copy of a real fixture checkpoint with one member replaced.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from pathlib import Path

import pytest
import yaml
from serve_process import start_serve

from megaload_client import problems

BRIDGE = "bridge_gpt_tied_rope_fp32"
MAX_PROBLEM_BYTES = 8192  # a problem response with a bounded detail fits in this


def _copy(service, copy_checkpoint, fixture: str, name: str) -> Path:
    dest = service.ckpt_root / name
    if dest.exists():
        shutil.rmtree(dest)
    copy_checkpoint(fixture, dest)
    return next(dest.glob("iter_*"))


def _assert_corrupt(r, *, names: str) -> dict:
    assert r.status_code == 422, r.text[:2000]
    assert r.headers["content-type"] == "application/problem+json"
    assert len(r.content) <= MAX_PROBLEM_BYTES, len(r.content)
    body = r.json()
    assert body["type"] == problems.CORRUPT_CHECKPOINT, body
    assert names in body["detail"] and body["path"].endswith(names), body
    return body


def _set_model_field(iter_dir: Path, text_of_value: str, field: str = "vocab_size") -> None:
    """Replace ``model.<field>`` of the run config with raw YAML text (anchors kept)."""
    path = iter_dir / "run_config.yaml"
    lines = path.read_text().splitlines()
    start = lines.index("model:")
    for i in range(start + 1, len(lines)):
        if lines[i].startswith(f"  {field}:"):
            lines[i] = f"  {field}: {text_of_value}"
            break
    else:
        lines.insert(start + 1, f"  {field}: {text_of_value}")
    path.write_text("\n".join(lines) + "\n")


def _alias_bomb(levels: int, fan_out: int = 9) -> tuple[str, str]:
    """(document prefix defining anchors, the alias to use as a value): ``levels`` levels of
    ``fan_out`` aliases each, expanding to ``fan_out ** (levels + 1)`` strings."""
    lines = ["bomb_0: &b0 [" + ", ".join(["lol"] * fan_out) + "]"]
    for level in range(1, levels + 1):
        lines.append(f"bomb_{level}: &b{level} [" + ", ".join([f"*b{level - 1}"] * fan_out) + "]")
    return "\n".join(lines) + "\n", f"*b{levels}"


def _with_bomb(iter_dir: Path, levels: int, field: str) -> int:
    prefix, alias = _alias_bomb(levels)
    _set_model_field(iter_dir, alias, field)
    path = iter_dir / "run_config.yaml"
    path.write_text(prefix + path.read_text())
    return len(prefix)


@pytest.fixture
def log_lines():
    """Every log record the server (in this process) formats, as text."""
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Collect(level=logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    old = root.level
    root.setLevel(logging.INFO)
    yield records
    root.removeHandler(handler)
    root.setLevel(old)


def test_a_deeply_nested_run_config_is_corrupt(service, copy_checkpoint):
    iter_dir = _copy(service, copy_checkpoint, BRIDGE, "deep_run_config")
    _set_model_field(iter_dir, "[" * 100_000 + "]" * 100_000)
    body = _assert_corrupt(service.client.get("/v1/checkpoints/config", params={"path": "deep_run_config"}),
                           names="run_config.yaml")
    assert "nest" in body["detail"]
    _assert_corrupt(service.load("deep_run_config"), names="run_config.yaml")
    assert service.client.get("/readyz").status_code == 200


@pytest.mark.parametrize("depth", [100_000, 30_000])
def test_a_deeply_nested_metadata_json_is_corrupt(service, copy_checkpoint, depth):
    name = f"deep_metadata_{depth}"
    iter_dir = _copy(service, copy_checkpoint, "mlm_gpt", name)
    (iter_dir / "metadata.json").write_text('{"sharded_backend": "torch_dist", "x": ' + "[" * depth + "]" * depth + "}")
    for r in (service.client.get("/v1/checkpoints/tensors", params={"path": name}), service.load(name)):
        _assert_corrupt(r, names="metadata.json")


def test_unknown_metadata_json_keys_are_ignored(service, copy_checkpoint):
    iter_dir = _copy(service, copy_checkpoint, "mlm_gpt", "metadata_new_keys")
    meta = json.loads((iter_dir / "metadata.json").read_text())
    meta["written_by"] = {"megatron_core": "99.0", "features": ["something-new"]}
    meta["another_new_key"] = 1
    (iter_dir / "metadata.json").write_text(json.dumps(meta))
    reference = service.client.get("/v1/checkpoints/tensors", params={"path": "mlm_gpt"}).json()["tensors"]
    r = service.client.get("/v1/checkpoints/tensors", params={"path": "metadata_new_keys"})
    assert r.status_code == 200, r.text
    assert r.json()["tensors"] == reference
    r = service.load("metadata_new_keys")
    assert r.status_code == 201, r.text
    # a key megatron-core defines, with a value of the wrong type, is still refused
    meta["sharded_backend_version"] = "one"
    (iter_dir / "metadata.json").write_text(json.dumps(meta))
    _assert_corrupt(service.client.get("/v1/checkpoints/tensors", params={"path": "metadata_new_keys"}),
                    names="metadata.json")


def test_an_alias_bomb_in_a_run_config_is_refused_small(service, copy_checkpoint, log_lines):
    iter_dir = _copy(service, copy_checkpoint, BRIDGE, "alias_bomb")
    prefix_bytes = _with_bomb(iter_dir, 7, "vocab_size")
    assert prefix_bytes < 1024  # the bomb itself is under 1 KB
    for r in (service.client.get("/v1/checkpoints/config", params={"path": "alias_bomb"}), service.load("alias_bomb")):
        body = _assert_corrupt(r, names="run_config.yaml")
        assert "alias" in body["detail"]
    # in a field whose value is only logged (a runtime callable): refused the same way, and
    # no log line carries the expansion
    iter_dir = _copy(service, copy_checkpoint, BRIDGE, "alias_bomb_logged")
    _with_bomb(iter_dir, 6, "grad_scale_func")
    log_lines.clear()
    _assert_corrupt(service.client.get("/v1/checkpoints/config", params={"path": "alias_bomb_logged"}),
                    names="run_config.yaml")
    assert max(map(len, log_lines), default=0) < 4096, max(map(len, log_lines))


def test_modest_aliases_still_load(service, copy_checkpoint):
    """PyYAML's dumper writes an anchor where one object appears twice: such files load."""
    iter_dir = _copy(service, copy_checkpoint, BRIDGE, "modest_aliases")
    path = iter_dir / "run_config.yaml"
    config = yaml.safe_load(path.read_text())
    shared = {"note": "written once, referred to twice"}
    config["extra_a"] = shared
    config["extra_b"] = shared
    text = yaml.safe_dump(config, sort_keys=False)
    assert "&id001" in text and "*id001" in text
    path.write_text(text)
    r = service.client.get("/v1/checkpoints/config", params={"path": "modest_aliases"})
    assert r.status_code == 200, r.text


def test_a_huge_value_is_shown_as_a_bounded_summary(service, copy_checkpoint):
    iter_dir = _copy(service, copy_checkpoint, BRIDGE, "huge_value")
    _set_model_field(iter_dir, "x" * 300_000)  # vocab_size: a 300 KB string
    r = service.client.get("/v1/checkpoints/config", params={"path": "huge_value"})
    assert r.status_code == 422, r.text[:500]
    assert len(r.content) <= MAX_PROBLEM_BYTES, len(r.content)
    assert r.json()["field"] == "vocab_size"


def test_an_oversized_run_config_is_refused_by_size(service, copy_checkpoint):
    iter_dir = _copy(service, copy_checkpoint, BRIDGE, "big_run_config")
    path = iter_dir / "run_config.yaml"
    path.write_text(path.read_text() + "# padding\n" * (600 * 1024))  # 6 MiB of comments
    body = _assert_corrupt(service.client.get("/v1/checkpoints/config", params={"path": "big_run_config"}),
                           names="run_config.yaml")
    assert "limit" in body["detail"]


def test_a_200_mib_metadata_json_costs_no_memory(tmp_path, copy_checkpoint):
    root = tmp_path / "root"
    iter_dir = next(copy_checkpoint("mlm_gpt", root / "big_meta").glob("iter_*"))
    with open(iter_dir / "metadata.json", "w") as f:
        f.write('{"sharded_backend": "torch_dist", "padding": "')
        block = "x" * (1 << 20)
        for _ in range(200):
            f.write(block)
        f.write('"}')
    server = start_serve("--checkpoint-root", str(root), "--memory-budget", "1GiB")
    try:
        with server.client() as c:
            assert c.get("/v1/checkpoints/tensors", params={"path": "mlm_gpt_missing"}).status_code == 404
            before = server.peak_rss_bytes()
            stalls: list[float] = []
            done = threading.Event()

            def probe() -> None:
                with server.client(timeout=30) as p:
                    while not done.is_set():
                        t0 = time.monotonic()
                        p.get("/healthz")
                        stalls.append(time.monotonic() - t0)
                        time.sleep(0.01)

            prober = threading.Thread(target=probe)
            prober.start()
            t0 = time.monotonic()
            answers = [c.get("/v1/checkpoints/tensors", params={"path": "big_meta"}), c.post(
                "/v1/models", json={"checkpoint_path": "big_meta"})]
            seconds = time.monotonic() - t0
            done.set()
            prober.join()
            grown = server.peak_rss_bytes() - before
        for r in answers:
            assert r.status_code == 422, r.text[:500]
            body = r.json()
            assert body["type"] == problems.CORRUPT_CHECKPOINT and "metadata.json" in body["detail"]
            assert "limit" in body["detail"]
        print(f"peak RSS grew by {grown / 2**20:.1f} MiB; two requests took {seconds:.3f} s; "
              f"slowest /healthz {max(stalls, default=0):.3f} s over {len(stalls)} probes")
        assert grown < 64 * 2**20, f"peak RSS grew by {grown / 2**20:.0f} MiB"
    finally:
        server.stop()
