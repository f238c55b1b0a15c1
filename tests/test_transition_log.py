"""The crash-safe transition log: round trips, torn tails, damage, and `kill -9` of a real writer."""

import os
import random
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from worldmodel import collect, make_env
from worldmodel.collect import uniform_policy
from worldmodel.datasets import load_dataset
from worldmodel.transition_log import LogCorruptError, TransitionLog

O, A = 11, 3  # hopper


@pytest.fixture(scope="module")
def hopper_steps():
    env = make_env("hopper", seed=0)
    return collect(env, uniform_policy(env), 60)


def assert_same(a, b):
    for key in ("obs", "action", "reward", "next_obs", "terminated", "truncated"):
        assert torch.equal(a[key], b[key]), key


def test_appended_transitions_read_back_across_segments_and_reopening(tmp_path, hopper_steps):
    with TransitionLog(tmp_path / "log", O, A, segment_records=25) as log:
        log.append(hopper_steps[:10])
        for i in range(10, 40):
            log.append(hopper_steps[i : i + 1])
        assert len(log) == 40
    with TransitionLog(tmp_path / "log", O, A, segment_records=25) as log:
        assert len(log) == 40
        log.append(hopper_steps[40:])
        assert_same(log.read(), hopper_steps)
        assert_same(log.read(start=55), hopper_steps[55:])
    assert len(list((tmp_path / "log").glob("segment-*.bin"))) == 3


def test_a_torn_last_record_is_dropped_and_appending_goes_on(tmp_path, hopper_steps):
    with TransitionLog(tmp_path, O, A) as log:
        log.append(hopper_steps[:10])
        record = log.record_bytes
    segment = tmp_path / "segment-000000.bin"
    with open(segment, "ab") as f:  # a crash in the middle of writing record 10
        f.write(b"\x01" * (record // 2))
    with TransitionLog(tmp_path, O, A) as log:
        assert len(log) == 10
        log.append(hopper_steps[10:12])
        assert_same(log.read(), hopper_steps[:12])
    with open(segment, "ab") as f:  # a whole-length last record whose bytes never all landed
        f.write(b"\x00" * record)
    assert len(TransitionLog(tmp_path, O, A)) == 12


def test_with_fsyncs_every_few_records_only_the_unsynced_tail_may_be_torn(tmp_path, hopper_steps):
    """sync_every=4 (a robot log's is larger): damage within the last 4 records (unsynced at a
    crash) drops the tail from the first bad record; damage one record earlier is an error."""
    for damaged, expect in (((16, 18), 16), ((15,), None)):
        directory = tmp_path / f"log-{damaged[0]}"
        with TransitionLog(directory, O, A, sync_every=4) as log:
            log.append(hopper_steps[:20])
            record = log.record_bytes
        segment = directory / "segment-000000.bin"
        raw = bytearray(segment.read_bytes())
        for i in damaged:
            raw[16 + i * record + 5] ^= 0xFF
        segment.write_bytes(bytes(raw))
        if expect is None:
            with pytest.raises(LogCorruptError, match="record 15 of 20 fails its checksum"):
                TransitionLog(directory, O, A, sync_every=4)
        else:
            with TransitionLog(directory, O, A, sync_every=4) as log:
                assert len(log) == expect
                assert_same(log.read(), hopper_steps[:expect])


def test_damage_before_the_tail_is_an_error_naming_the_record(tmp_path, hopper_steps):
    with TransitionLog(tmp_path, O, A) as log:
        log.append(hopper_steps[:10])
        record = log.record_bytes
    segment = tmp_path / "segment-000000.bin"
    raw = bytearray(segment.read_bytes())
    raw[16 + 3 * record + 5] ^= 0xFF
    segment.write_bytes(bytes(raw))
    with pytest.raises(LogCorruptError, match="segment-000000.bin: record 3 of 10 fails its checksum"):
        TransitionLog(tmp_path, O, A)


def test_other_dimensions_or_a_foreign_file_are_clear_errors(tmp_path, hopper_steps):
    with TransitionLog(tmp_path / "a", O, A) as log:
        log.append(hopper_steps[:3])
    with pytest.raises(LogCorruptError, match="logged obs_dim=11, act_dim=3, but this log was opened with obs_dim=17"):
        TransitionLog(tmp_path / "a", 17, 6)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "segment-000000.bin").write_bytes(b"not a log at all, no")
    with pytest.raises(LogCorruptError, match="not a transition log segment"):
        TransitionLog(tmp_path / "b", O, A)
    bad = hopper_steps[:2].clone()
    bad["reward"][1] = float("nan")
    with TransitionLog(tmp_path / "c", O, A) as log, pytest.raises(ValueError, match="reward"):
        log.append(bad)
    assert len(TransitionLog(tmp_path / "c", O, A)) == 0  # nothing of a bad batch is written


@pytest.mark.parametrize("format", ["d4rl", "minari"])
def test_a_log_exports_as_an_offline_dataset(tmp_path, hopper_steps, format):
    steps = hopper_steps.clone()
    steps["truncated"][29] = True  # (an episode cut by a time limit, as well as the terminations collected)
    with TransitionLog(tmp_path / "log", O, A) as log:
        log.append(steps)
        out = tmp_path / ("robot.hdf5" if format == "d4rl" else "robot")
        log.export(out, format, {"env": "hopper", "quality": "robot"})
    data, metadata = load_dataset(out, O, A)
    assert metadata["quality"] == "robot" and len(data) == 60
    assert_same(data, steps)


WRITER = textwrap.dedent("""
    import sys
    import torch
    from worldmodel import make_env
    from worldmodel.collect import uniform_policy
    from worldmodel.transition_log import TransitionLog
    from worldmodel.transitions import from_rollout

    log = TransitionLog(sys.argv[1], 11, 3)
    env = make_env("hopper", seed=len(log))
    policy, td = uniform_policy(env), env.reset()
    while True:
        td["action"] = policy(td["observation"])
        step, td = env.step_and_maybe_reset(td)
        log.append(from_rollout(step.unsqueeze(0)))
        print(len(log), flush=True)  # acknowledged: on disk
""")


def test_append_returns_only_once_its_records_are_fsynced(tmp_path, hopper_steps, monkeypatch):
    """SIGKILL keeps the page cache, so the kill test below cannot see a missing fsync: count them.
    With sync_every=1 each append syncs its segment (and a new segment's directory entry)."""
    import worldmodel.transition_log as tl

    synced = []
    monkeypatch.setattr(tl.os, "fsync", lambda fd: synced.append(os.path.realpath(f"/proc/self/fd/{fd}")))
    with TransitionLog(tmp_path, O, A, segment_records=3) as log:
        for i in range(4):
            before = len(synced)
            log.append(hopper_steps[i : i + 1])
            on_disk = [p for p in synced[before:] if p.endswith(".bin")]
            assert on_disk and on_disk[-1] == str(log._segments[-1][0])  # the record's own segment, last
        assert str(tmp_path) in synced  # a new segment's directory entry


def test_kill_9_at_random_moments_loses_no_acknowledged_transition(tmp_path):
    """A real writer (hopper steps, one record each) is SIGKILLed three times at random counts;
    every acknowledged record survives, each restart appends after them, and the log stays a
    sequence of whole transitions (within an episode, next_obs is the next row's obs)."""
    rng = random.Random(os.getpid())
    directory = tmp_path / "log"
    acknowledged, restarts = 0, []
    for _ in range(3):
        restarts.append(acknowledged)
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(directory)], stdout=subprocess.PIPE, text=True)
        target = acknowledged + rng.randint(20, 200)
        for line in proc.stdout:
            acknowledged = int(line)
            if acknowledged >= target:
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        log = TransitionLog(directory, O, A)
        assert len(log) >= acknowledged
        acknowledged = len(log)
    data = log.read()
    chained = ~(data["terminated"] | data["truncated"])[:-1]
    chained[[r - 1 for r in restarts[1:]]] = False  # a restarted writer begins a new episode
    assert torch.equal(data["next_obs"][:-1][chained], data["obs"][1:][chained])


@pytest.mark.parametrize("earlier", [0, 1])
def test_a_segment_torn_while_being_created_is_dropped(tmp_path, hopper_steps, earlier):
    with TransitionLog(tmp_path, O, A, segment_records=5) as log:
        log.append(hopper_steps[: 5 * earlier])
    (tmp_path / f"segment-{earlier:06d}.bin").write_bytes(b"WMTL")  # a header cut short by a crash
    with TransitionLog(tmp_path, O, A, segment_records=5) as log:
        assert len(log) == 5 * earlier
        log.append(hopper_steps[10:13])
        assert len(log) == 5 * earlier + 3
        assert_same(log.read()[5 * earlier :], hopper_steps[10:13])



@pytest.mark.parametrize("begun", [b"", b"WMTL"])
def test_a_reader_of_a_log_being_written_reads_a_segment_just_begun_as_empty(tmp_path, hopper_steps, begun):
    """repair=False (e.g. refit_check on a running run's log) when the writer has created the next
    segment and not yet written its header: the rows before it, nothing changed on disk."""
    with TransitionLog(tmp_path, O, A, segment_records=5) as log:
        log.append(hopper_steps[:5])
    (tmp_path / "segment-000001.bin").write_bytes(begun)
    reader = TransitionLog(tmp_path, O, A, segment_records=5, repair=False)
    assert len(reader) == 5
    assert_same(reader.read(), hopper_steps[:5])
    assert (tmp_path / "segment-000001.bin").read_bytes() == begun

def test_append_fsyncs_every_sync_every_records_and_before_it_returns(tmp_path, hopper_steps, monkeypatch):
    import worldmodel.transition_log as tl

    synced = []
    monkeypatch.setattr(tl.os, "fsync", lambda fd: synced.append(len(log)))
    log = TransitionLog(tmp_path, O, A, sync_every=4)
    log.append(hopper_steps[:10])  # 4, 8, then the last 2 before it returns
    assert [n for n in synced if n] == [4, 8, 10]
    log.close()
    assert_same(TransitionLog(tmp_path, O, A).read(), hopper_steps[:10])


def test_a_log_writer_never_makes_its_caller_wait_on_the_disk(tmp_path, hopper_steps, monkeypatch):
    """With every fsync taking 0.2 s, put() still returns at once; the rows waiting together go
    in one fsync (up to sync_every), and each item reaches `then` in the order put, only once the
    transitions before it are on disk."""
    import time

    import worldmodel.transition_log as tl

    fsync, synced = tl.os.fsync, []
    monkeypatch.setattr(tl.os, "fsync", lambda fd: (synced.append(fd), time.sleep(0.2), fsync(fd)))
    log = TransitionLog(tmp_path, O, A, sync_every=8)
    seen = []  # (item, rows on disk when it was handed on)
    writer = tl.LogWriter(log, then=lambda item: seen.append((item, len(log))))
    began = time.perf_counter()
    for i in range(20):
        writer.put(hopper_steps[i : i + 1])
        if i == 9:
            writer.put("after ten")
    put_s = time.perf_counter() - began
    assert put_s < 0.1 and writer.backlog > 0
    writer.close()
    assert writer.error is None and writer.backlog == 0
    assert [x for x, _ in seen if isinstance(x, str)] == ["after ten"]
    rows = [x for x, _ in seen if not isinstance(x, str)]
    assert torch.equal(torch.cat([r["obs"] for r in rows]), hopper_steps["obs"][:20])  # in order
    handed = 0
    for item, on_disk in seen:
        handed += 1 if not isinstance(item, str) else 0
        assert on_disk >= handed  # nothing handed on before it was logged
        if isinstance(item, str):
            assert handed == 10  # the string came after the first ten transitions, before the rest
    # 20 rows in 4-5 fsyncs (groups of up to 8 around the string; the first group is whatever was
    # queued when the thread woke), not 20; plus the new segment's header and directory entry
    assert len(log) == 20 and 4 + 2 <= len(synced) <= 5 + 2


def test_a_failing_disk_stops_the_writer_with_its_error_and_a_bad_batch_raises_at_put(tmp_path, hopper_steps,
                                                                                      monkeypatch):  # fmt: skip
    import worldmodel.transition_log as tl

    log = TransitionLog(tmp_path, O, A)
    writer = tl.LogWriter(log)
    bad = hopper_steps[:2].clone()
    bad["obs"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="obs"):
        writer.put(bad)

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tl.os, "fsync", full)
    writer.put(hopper_steps[:3])
    writer.close()
    assert isinstance(writer.error, OSError) and "No space left" in str(writer.error)
    with pytest.raises(RuntimeError, match="writer failed: .*No space left"):
        writer.put(hopper_steps[3:4])
