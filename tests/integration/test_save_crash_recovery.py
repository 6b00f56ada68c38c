"""kill -9 during saves, then restart: a real ``megaload serve`` process is killed (SIGKILL,
no shutdown of any kind) while its save jobs run, several times over, and started again.

Asserted after every kill: no destination holds a partial checkpoint (each is absent or
complete), and the checkpoint being overwritten is complete (the previous one or the new
one, never neither). Asserted after every restart: the leftovers of the killed saves
(staging directories and their owner files) are gone, everything else in the save root is
untouched (look-alike directories without an owner file, foreign owner files, other files),
and every checkpoint found at a destination loads.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import pytest
from serve_process import start_serve

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ROUNDS = 3
SAVES_PER_ROUND = 6


def _complete(path: Path) -> bool:
    tracker = path / "latest_checkpointed_iteration.txt"
    if not tracker.is_file():
        return False
    iter_dir = path / f"iter_{int(tracker.read_text()):07d}"
    return all((iter_dir / name).is_file() for name in (".metadata", "common.pt", "metadata.json", "run_config.yaml"))


def _ours(saves: Path) -> list[str]:
    """What saves leave while they run (or when killed): staging dirs, owner files, displaced
    previous checkpoints."""
    return sorted(p.name for p in saves.iterdir() if (".partial-" in p.name or ".replaced-" in p.name)
                  and not p.name.startswith(".decoy") and not p.name.startswith(".foreign"))


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.timeout(900)
def test_kill_9_during_saves_then_restart(tmp_path):
    ckpts, saves = tmp_path / "ckpts", tmp_path / "saves"
    shutil.copytree(FIXTURES / "mlm_gpt" / "checkpoint", ckpts / "mlm")
    saves.mkdir()
    # things in the save root that are not ours
    decoy = saves / ".decoy.partial-0123456789ab"
    (decoy / "iter_0000000").mkdir(parents=True)
    (decoy / "iter_0000000" / "__0_0.distcp").write_bytes(b"someone else's")
    foreign = saves / ".foreign.partial-abcdefabcdef.owner"
    foreign.write_text(json.dumps({"note": "not written by megaload"}))
    (saves / ".foreign.partial-abcdefabcdef").mkdir()
    (saves / "notes.txt").write_text("keep me")
    (saves / ".cache").mkdir()
    (saves / ".cache" / "blob").write_bytes(b"\0" * 100)
    untouchable = {p: _snapshot(p) if p.is_dir() else p.read_bytes()
                   for p in (decoy, foreign, saves / ".foreign.partial-abcdefabcdef", saves / "notes.txt", saves / ".cache")}
    flags = ("--checkpoint-root", str(ckpts), "--checkpoint-root", str(saves), "--save-root", str(saves),
             "--memory-budget", "1GiB", "--shutdown-grace-seconds", "5")
    rng = random.Random(12)

    server = start_serve(*flags)
    try:
        with server.client() as c:
            model = c.post("/v1/models", json={"checkpoint_path": str(ckpts / "mlm")}).json()["id"]
            job = c.post(f"/v1/models/{model}/save", json={"path": "kept"}).json()["id"]
            while c.get(f"/v1/jobs/{job}").json()["state"] not in ("succeeded", "failed"):
                time.sleep(0.05)
            assert c.get(f"/v1/jobs/{job}").json()["state"] == "succeeded"
    finally:
        server.stop()
    assert _complete(saves / "kept")
    previous = _snapshot(saves / "kept")

    left_by_kills = []
    for round_ in range(ROUNDS + 1):
        server = start_serve(*flags)
        try:
            # the restart removed what the last kill left, and nothing else
            assert _ours(saves) == [], (round_, _ours(saves))
            for path, content in untouchable.items():
                assert (_snapshot(path) if path.is_dir() else path.read_bytes()) == content, path
            with server.client() as c:
                for dest in ["kept", *(p.name for p in saves.glob("new_*"))]:
                    r = c.post("/v1/models", json={"checkpoint_path": str(saves / dest)})
                    assert r.status_code in (200, 201), (dest, r.text)
                if round_ == ROUNDS:
                    break
                model = c.post("/v1/models", json={"checkpoint_path": str(ckpts / "mlm")}).json()["id"]
                bodies = [{"path": f"new_{round_}_{i}"} for i in range(SAVES_PER_ROUND)]
                # the overwrite comes first, in the middle, last: kills land in different saves
                bodies.insert(round_ * SAVES_PER_ROUND // 2, {"path": "kept", "overwrite": True})
                for body in bodies:
                    c.post(f"/v1/models/{model}/save", json=body).raise_for_status()
            # kill while the k-th save is writing (never the last: a save after it keeps the
            # save root busy, so something is left to clean up whatever the timing)
            k, seen = rng.randint(1, SAVES_PER_ROUND - 1), set()
            deadline = time.monotonic() + 120
            while len(seen) < k:
                assert time.monotonic() < deadline, f"only {len(seen)} saves started"
                seen.update(name for name in _ours(saves) if name.endswith(tuple("0123456789abcdef")))
                time.sleep(0.001)
            time.sleep(rng.uniform(0.0, 0.05))
            # a small model's save takes milliseconds: the random pause may fall between two saves,
            # so kill at the next moment one is writing (later saves are still queued)
            while not _ours(saves):
                assert time.monotonic() < deadline, "no save was writing any more"
                time.sleep(0.0002)
            server.kill9()
        finally:
            if server.proc.poll() is None:
                server.stop()
        left_by_kills.append(_ours(saves))
        # no partial checkpoint at any destination; the overwritten one complete
        assert _complete(saves / "kept")
        for dest in saves.glob("new_*"):
            assert _complete(dest), dest
        assert not list(saves.glob("new_*/.*partial*"))
    assert all(left_by_kills[:ROUNDS]), left_by_kills  # every kill left something to clean up
    print("left by each kill:", left_by_kills[:ROUNDS])
    print("kept is the previous checkpoint:", _snapshot(saves / "kept") == previous)


def _owner_of_an_exited_process() -> dict:
    """An owner record of a process that ran on this host and has exited."""
    import socket
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "print(open('/proc/self/stat').read())"],
                         capture_output=True, text=True, check=True).stdout
    with open("/proc/sys/kernel/random/boot_id") as f:
        boot_id = f.read().strip()
    import os

    return {"host": socket.gethostname(), "boot_id": boot_id, "pid_ns": os.readlink("/proc/self/ns/pid"),
            "pid": int(out.split()[0]), "pid_start": int(out.rsplit(")", 1)[1].split()[19])}


def test_a_save_first_removes_dead_saves_to_the_same_destination(service):
    saves = service.save_root
    dead, alive = saves / ".pre_clean.partial-0000000000aa", saves / ".pre_clean.partial-0000000000bb"
    other = saves / ".elsewhere.partial-0000000000cc"
    records = {
        dead: _owner_of_an_exited_process(),
        alive: dict(_owner_of_an_exited_process(), host="another-replica"),  # heartbeat fresh: alive
        other: _owner_of_an_exited_process(),  # dead, but a save to another destination
    }
    for staging, owner in records.items():
        (staging / "iter_0000000").mkdir(parents=True)
        destination = staging.name[1:].split(".partial-")[0]
        (saves / f"{staging.name}.owner").write_text(
            json.dumps({"megaload_save": 1, "destination": destination, "replaced": None, **owner}))
    try:
        model = service.load("mlm_gpt").json()["id"]
        r = service.client.post(f"/v1/models/{model}/save", json={"path": "pre_clean"})
        assert r.status_code == 202, r.text
        assert service.wait_job(r.json()["id"])["state"] == "succeeded"
        assert _complete(saves / "pre_clean")
        assert not dead.exists() and not (saves / f"{dead.name}.owner").exists()
        assert alive.is_dir() and (saves / f"{alive.name}.owner").is_file()
        assert other.is_dir() and (saves / f"{other.name}.owner").is_file()
    finally:  # the save root is shared with other tests, which expect no leftovers
        for staging in records:
            shutil.rmtree(staging, ignore_errors=True)
            (saves / f"{staging.name}.owner").unlink(missing_ok=True)
