"""SIGKILL during a real ``python -m mlsafe reproduce`` (tiny Qwen2, fixtures): the results folder
is always the old complete set or the new complete set, a concurrent second run stops at once,
and the next run cleans what the killed ones left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mlsafe import results, tiny
from mlsafe.edit import SparseEdit

RUN_FILES = ["edit.safetensors", "responses_after.csv", "responses_before.csv", "summary.json"]


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.is_dir() else {}


def _is_new_complete_set(snap: dict, folder) -> bool:
    """The --rank 1 run's files, all of them, consistent with each other."""
    if sorted(snap) != RUN_FILES:
        return False
    edit_block = json.loads(snap["summary.json"])["edit"]
    edit = SparseEdit.load(folder / "edit.safetensors")  # content_sha256 checked
    return edit_block["rank"] == edit.hparams["rank"] == 1 and edit_block["requested_rank"] == 1 \
        and edit_block["n_neurons"] == edit.neurons.numel()


@pytest.mark.slow
def test_sigkill_at_any_point_leaves_the_old_or_the_new_complete_set(tmp_path):
    folder = tiny.build(tmp_path / "tiny", seed=0, archs=("qwen2",))["qwen2"]
    root = tmp_path / "results"
    env = {**os.environ, "MLSAFE_RESULTS": str(root), "DATA": "fixtures", "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "mlsafe", "reproduce", "--model", str(folder), "--lang", "th",
            "--data", "fixtures", "--no-extras"]
    subprocess.run(argv, env=env, check=True, capture_output=True, timeout=300)
    out = root / results.model_slug(str(folder)) / "th"
    old = _snapshot(out)
    assert sorted(old) == RUN_FILES and json.loads(old["summary.json"])["edit"]["rank"] > 1

    def staged(name=None):
        """A staging folder of the current run (not one an earlier killed run left) exists
        (holding `name`)."""
        return any((p / name).exists() if name else True
                   for p in out.parent.glob(".th.staging-*") if p.name not in earlier)

    triggers = [("after 1 s", lambda t: t > 1.0), ("after 3 s", lambda t: t > 3.0),
                ("staging folder created", lambda t: staged()),
                ("summary.json staged", lambda t: staged("summary.json"))]
    outcomes = []
    for label, fire in triggers:
        earlier = {p.name for p in out.parent.glob(".th.staging-*")}
        proc = subprocess.Popen(argv + ["--rank", "1"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        t0 = time.monotonic()
        while proc.poll() is None and not fire(time.monotonic() - t0):
            time.sleep(0.005)
        if label == "staging folder created" and proc.poll() is None:
            # before: two concurrent runs both exited 0 and the last writer won. The first run is
            # frozen while it holds the lock, so it cannot finish before the second one asks.
            proc.send_signal(signal.SIGSTOP)
            second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
            assert second.returncode == 2 and "being written by another mlsafe run" in second.stderr
            assert len(second.stderr.strip().splitlines()) == 1
        proc.kill()
        proc.communicate(timeout=60)
        snap = _snapshot(out)
        if snap == old:
            outcomes.append((label, "old"))
        else:
            assert _is_new_complete_set(snap, out), f"killed {label}: a mixed folder {sorted(snap)}"
            outcomes.append((label, "new"))
            old = snap  # the next kill must leave this set or another complete one
    assert outcomes[0] == ("after 1 s", "old"), outcomes
    assert any(p.name.startswith(".th.staging-") for p in out.parent.iterdir()) or outcomes[-1][1] == "new"
    print("kill outcomes:", outcomes)
    with pytest.raises(RuntimeError, match="abort"):  # the next run (holding the lock) cleans them
        with results.staged_run(out):
            raise RuntimeError("abort")
    assert sorted(p.name for p in out.parent.iterdir()) == [".th.lock", "th"]
    assert _snapshot(out) == old
