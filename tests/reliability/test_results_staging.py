"""Results folders: one per model (not per folder basename), written as a whole-folder swap
under a lock, with a rerun rule that never silently mixes or drops an earlier run's files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mlsafe import results
from mlsafe.errors import UserError
from mlsafe.results import check_rerun, run_lock, staged_run, write_json


def test_two_local_folders_with_the_same_basename_get_different_slugs(tmp_path):
    """Before: a/qwen2 and b/qwen2 both wrote results/qwen2/ (the second overwrote the first)."""
    a, b = tmp_path / "a" / "qwen2", tmp_path / "b" / "qwen2"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    sa, sb = results.model_slug(str(a)), results.model_slug(str(b))
    assert sa != sb and sa.startswith("qwen2-") and sb.startswith("qwen2-") and len(sa) == len("qwen2-") + 8
    assert results.model_slug(str(a) + "/") == sa                       # the same folder, spelled twice
    assert results.model_slug(str(tmp_path / "a" / "." / "qwen2")) == sa
    for name in ("organism", "gemma-270m", "qwen2.5-coder-0.5b"):       # built-in names keep the layout
        assert results.model_slug(name) == name
    assert results.model_slug("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen--Qwen2.5-0.5B-Instruct"


def _fill(folder, seed, *extra):
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "summary.json", {"seed": seed, "asr": {}})
    for name in ("responses_before.csv", "responses_after.csv", "edit.safetensors", *extra):
        (folder / name).write_text(f"{name} of seed {seed}\n")


def _contents(folder):
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


def test_a_staged_run_swaps_the_whole_folder_and_keeps_other_commands_files(tmp_path):
    out = tmp_path / "m" / "th"
    _fill(out, 0, "diagnostics.json")
    (out / "ablations.csv").write_text("ablation rows\n")           # another command's file
    (out / ".summary.json.x.tmp").write_text("debris")                # a killed write_atomic
    with staged_run(out) as stage:
        assert stage.parent == out.parent and stage != out
        _fill(stage, 1, "diagnostics.json")
        assert json.loads((out / "summary.json").read_text())["seed"] == 0  # nothing visible yet
    got = _contents(out)
    assert json.loads(got.pop("summary.json"))["seed"] == 1
    assert got == {"ablations.csv": "ablation rows\n", "diagnostics.json": "diagnostics.json of seed 1\n",
                   "edit.safetensors": "edit.safetensors of seed 1\n",
                   "responses_after.csv": "responses_after.csv of seed 1\n",
                   "responses_before.csv": "responses_before.csv of seed 1\n"}
    assert sorted(p.name for p in out.parent.iterdir()) == [".th.lock", "th"]   # no staging folders left


def test_a_failed_run_leaves_the_old_set_untouched(tmp_path):
    out = tmp_path / "m" / "th"
    _fill(out, 0)
    old = _contents(out)
    with pytest.raises(RuntimeError, match="boom"):
        with staged_run(out) as stage:
            _fill(stage, 1)
            raise RuntimeError("boom")
    assert _contents(out) == old
    assert sorted(p.name for p in out.parent.iterdir()) == [".th.lock", "th"]


def test_stale_staging_folders_of_dead_runs_are_cleaned(tmp_path):
    out = tmp_path / "m" / "th"
    _fill(out, 0)
    dead = out.parent / ".th.staging-999999"
    _fill(dead, 7)
    with staged_run(out) as stage:
        assert not dead.exists()
        _fill(stage, 1)
    assert json.loads((out / "summary.json").read_text())["seed"] == 1


def test_a_second_concurrent_run_stops_at_once(tmp_path):
    """Before: two concurrent runs both exited 0 and printed "wrote"; the last writer won."""
    out = tmp_path / "m" / "th"
    with run_lock(out):
        busy = rf"{out} is being written by another mlsafe run \(pid {os.getpid()}\)"
        with pytest.raises(UserError, match=busy):
            with staged_run(out):
                pass
        code = f"from mlsafe.results import run_lock\nwith run_lock({str(out)!r}): pass"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0 and "being written by another mlsafe run" in proc.stderr
    with staged_run(out) as stage:  # released: the next run goes ahead
        _fill(stage, 0)


@pytest.mark.parametrize("files, blocks, dropped", [
    ({"summary.json", "responses_before.csv", "responses_after.csv", "edit.safetensors"},
     {"seed", "asr"}, "diagnostics.json, edit_seed1.safetensors, responses_after_seed1.csv, "
                      "responses_before_seed1.csv, summary block 'over_seeds'"),
    ({"summary.json", "responses_before.csv", "responses_after.csv", "edit.safetensors", "diagnostics.json",
      "edit_seed1.safetensors", "responses_after_seed1.csv", "responses_before_seed1.csv"},
     {"seed", "asr"}, "summary block 'over_seeds'"),
])
def test_a_rerun_that_drops_earlier_files_or_blocks_is_refused_unless_forced(tmp_path, files, blocks, dropped):
    """Before: a rerun with fewer seeds or no extras dropped over_seeds and left stale
    diagnostics.json and edit_seed1.safetensors beside the new summary."""
    out = tmp_path / "m" / "th"
    _fill(out, 0, "diagnostics.json", "edit_seed1.safetensors", "responses_before_seed1.csv",
          "responses_after_seed1.csv", "ablations.csv")
    write_json(out / "summary.json", {"seed": 0, "asr": {}, "over_seeds": {"seeds": [0, 1]}})
    with pytest.raises(UserError, match=f"would drop {dropped} of the earlier run.*--force"):
        check_rerun(out, files, blocks)
    check_rerun(out, files, blocks, force=True)
    with pytest.raises(UserError, match="would drop"):    # the final check of the swap refuses too
        with staged_run(out) as stage:
            for name in files:
                (stage / name).write_text("new\n")
            write_json(stage / "summary.json", {b: 1 for b in blocks})
    assert (out / "edit_seed1.safetensors").read_text().endswith("seed 0\n")
    with staged_run(out, force=True) as stage:            # forced: the new complete set, nothing stale
        for name in files:
            (stage / name).write_text("new\n")
    assert set(_contents(out)) == files | {"ablations.csv"}


def test_results_path_must_not_be_a_file(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the results folder should be")
    with pytest.raises(UserError, match="is a file"):
        results.check_writable(blocker / "m" / "th")
    with pytest.raises(UserError, match="is a file"):
        results.check_writable(blocker)


def test_results_path_must_be_writable(tmp_path):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root)")
        with pytest.raises(UserError, match="not writable"):
            results.check_writable(locked / "m" / "th")
    finally:
        locked.chmod(0o700)


def test_the_swap_without_renameat2_and_a_crash_between_its_renames(tmp_path, monkeypatch):
    """Where RENAME_EXCHANGE is unsupported the swap is two renames; a crash between them (the old
    set moved aside, no folder in place) is undone by the next run before it starts."""
    out = tmp_path / "m" / "th"
    _fill(out, 0)
    old = _contents(out)
    monkeypatch.setattr(results, "_exchange", lambda a, b: False)
    with staged_run(out) as stage:
        _fill(stage, 1)
    assert json.loads((out / "summary.json").read_text())["seed"] == 1
    assert sorted(p.name for p in out.parent.iterdir()) == [".th.lock", "th"]
    crashed = out.parent / ".th.old-4242"
    out.rename(crashed)                                   # the state a SIGKILL between the renames leaves
    (out.parent / ".th.staging-4242").mkdir()
    with pytest.raises(RuntimeError, match="abort"):
        with staged_run(out):
            assert json.loads((out / "summary.json").read_text())["seed"] == 1   # restored first
            raise RuntimeError("abort")
    assert sorted(p.name for p in out.parent.iterdir()) == [".th.lock", "th"]
    assert _contents(out) != old and json.loads((out / "summary.json").read_text())["seed"] == 1
