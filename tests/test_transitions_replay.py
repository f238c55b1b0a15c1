"""Transition validation and the replay buffer: bad data is refused by name, saves are atomic."""

import os
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict

from worldmodel import CheckpointError, ReplayBuffer, validate_transitions

O, A = 4, 2


def transitions(n: int, start: float = 0.0) -> TensorDict:
    obs = torch.arange(n * O, dtype=torch.float32).view(n, O) + start
    return TensorDict(
        {
            "obs": obs,
            "action": torch.rand(n, A) * 2 - 1,
            "reward": torch.randn(n, 1),
            "next_obs": obs + 0.1,
            "terminated": torch.zeros(n, 1, dtype=torch.bool),
            "truncated": torch.zeros(n, dtype=torch.bool),
        },
        batch_size=[n],
    )


def test_validate_canonicalises_shapes_and_dtypes():
    data = transitions(5)
    data["obs"] = data["obs"].double()
    out = validate_transitions(data, O, A)
    assert out["obs"].dtype == torch.float32
    assert out["reward"].shape == (5,) and out["terminated"].shape == (5,)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("obs", torch.zeros(5, O + 1), r"field 'obs' has shape \[5, 5\], expected \[5, 4\]"),
        ("action", torch.zeros(5), r"field 'action' has shape \[5\]"),
        ("next_obs", torch.full((5, O), float("nan")), r"field 'next_obs' has non-finite values"),
        ("reward", torch.tensor([0.0, float("inf"), 0, 0, 0]), r"field 'reward' has non-finite values .* rows \[1\]"),
        ("obs", torch.zeros(5, O, dtype=torch.int64), r"field 'obs' must be floating point"),
        ("terminated", torch.zeros(5), r"field 'terminated' must be bool"),
        ("reward", torch.zeros(5, 3), r"field 'reward' has shape \[5, 3\]"),
    ],
)
def test_bad_field_is_refused_by_name(field, value, message):
    data = transitions(5)
    data.set(field, value)
    with pytest.raises(ValueError, match=message):
        validate_transitions(data, O, A)


def test_missing_and_unknown_fields_are_refused():
    data = transitions(3)
    with pytest.raises(ValueError, match=r"lack field\(s\) \['next_obs'\]"):
        validate_transitions(data.exclude("next_obs"))
    data["extra"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['extra'\]"):
        validate_transitions(data)


def test_buffer_grows_then_overwrites_oldest_at_capacity():
    buffer = ReplayBuffer(O, A, capacity=8)
    buffer.extend(transitions(5))
    assert len(buffer) == 5
    buffer.extend(transitions(5, start=1000.0))
    assert len(buffer) == 8
    firsts = sorted(buffer.data()["obs"][:, 0].tolist())
    assert firsts == [8.0, 12.0, 16.0] + [1000.0 + 4 * i for i in range(5)]  # rows 0.0 and 4.0 are gone


@pytest.mark.parametrize("n", [9, 12, 22])
def test_a_batch_larger_than_the_capacity_keeps_its_last_rows_in_order(n, monkeypatch):
    """The last `capacity` rows stay where row-by-row writes would put them (newest() finds them),
    and no storage write holds two rows for one slot (on a GPU which would win is undefined)."""
    buffer = ReplayBuffer(O, A, capacity=4)
    buffer.extend(transitions(3, start=1000.0))
    writes = []
    extend = buffer._rb.extend
    monkeypatch.setattr(buffer._rb, "extend", lambda rows: writes.append(len(rows)) or extend(rows))
    buffer.extend(transitions(n))
    assert max(writes) <= 4 and sum(writes) % 4 == n % 4
    newest = buffer.data()["obs"][buffer.newest(4), 0].tolist()
    assert newest == [4.0 * i for i in range(n - 4, n)]
    buffer.extend(transitions(1, start=-4.0))  # (the write position after it is where it should be)
    assert buffer.data()["obs"][buffer.newest(2), 0].tolist() == [4.0 * (n - 1), -4.0]


def test_buffer_refuses_bad_batches_and_keeps_its_contents():
    buffer = ReplayBuffer(O, A, capacity=10)
    buffer.extend(transitions(3))
    bad = transitions(2)
    bad["obs"][1, 0] = float("nan")
    with pytest.raises(ValueError, match="'obs' has non-finite"):
        buffer.extend(bad)
    with pytest.raises(ValueError, match="'action' has shape"):
        buffer.extend(transitions(2).set("action", torch.zeros(2, A + 1)))
    assert len(buffer) == 3


def test_sample_draws_uniformly_from_stored_rows():
    buffer = ReplayBuffer(O, A, capacity=100)
    buffer.extend(transitions(4))
    batch = buffer.sample(4000)
    counts = torch.bincount((batch["obs"][:, 0] / O).long(), minlength=4)
    assert batch.batch_size == (4000,)
    assert (counts > 850).all() and (counts < 1150).all()


def test_symmetric_sampling_takes_half_from_each_side_of_the_split():
    """RLPD: 100 offline rows, 10 new ones; each batch is half and half, each side uniform."""
    buffer = ReplayBuffer(O, A, capacity=200)
    buffer.extend(transitions(100))
    buffer.extend(transitions(10, start=1e4))
    batch = buffer.sample(1000, split=100)
    new = batch["obs"][:, 0] >= 1e4
    assert new.sum() == 500 and torch.equal(new[500:], torch.ones(500, dtype=torch.bool))
    assert torch.unique(batch["obs"][new, 0]).numel() == 10 and torch.unique(batch["obs"][~new, 0]).numel() > 90
    uniform = buffer.sample(1000, split=110)  # nothing after the split yet: uniform over all
    assert (uniform["obs"][:, 0] >= 1e4).sum() < 200
    full = ReplayBuffer(O, A, capacity=20)
    full.extend(transitions(20))
    assert full.sample(8, split=10).shape == (8,)  # exactly full: nothing overwritten yet (a robot run's last step)
    restored = ReplayBuffer.from_state_dict(full.state_dict())
    assert restored.written == 20 and restored.sample(8, split=10).shape == (8,)
    full.extend(transitions(1))
    with pytest.raises(RuntimeError, match="needs a buffer that never overwrote a row"):
        full.sample(8, split=10)
    with pytest.raises(RuntimeError, match="never overwrote"):  # and after a save and load
        ReplayBuffer.from_state_dict(full.state_dict()).sample(8, split=10)


def test_empty_buffer_sampling_is_a_clear_error():
    with pytest.raises(RuntimeError, match="empty replay buffer"):
        ReplayBuffer(O, A).sample(1)


def test_save_load_round_trip_keeps_rows_and_write_position(tmp_path):
    buffer = ReplayBuffer(O, A, capacity=6)
    buffer.extend(transitions(8))
    buffer.save(tmp_path / "buffer.pt")
    loaded = ReplayBuffer.load(tmp_path / "buffer.pt")
    assert torch.equal(loaded.data()["obs"], buffer.data()["obs"])
    buffer.extend(transitions(1, start=500.0))
    loaded.extend(transitions(1, start=500.0))
    assert torch.equal(loaded.data()["obs"], buffer.data()["obs"])  # same slot overwritten next
    assert list(tmp_path.iterdir()) == [tmp_path / "buffer.pt"]  # no temporary file left behind


def test_corrupt_truncated_or_foreign_file_is_a_clear_error(tmp_path):
    buffer = ReplayBuffer(O, A)
    buffer.extend(transitions(5))
    path = tmp_path / "buffer.pt"
    buffer.save(path)
    blob = path.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        ReplayBuffer.load(tmp_path / "truncated.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        ReplayBuffer.load(tmp_path / "garbage.pt")
    torch.save({"format": "worldmodel.EnsembleDynamics"}, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="expected 'worldmodel.ReplayBuffer'"):
        ReplayBuffer.load(tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        ReplayBuffer.load(tmp_path / "missing.pt")
    torch.save({"format": "worldmodel.ReplayBuffer", "note": Path("x")}, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match=r"holds objects other than tensors and plain values"):
        ReplayBuffer.load(tmp_path / "pickled.pt")


def test_failed_save_leaves_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "buffer.pt"
    buffer = ReplayBuffer(O, A)
    buffer.extend(transitions(3))
    buffer.save(path)
    before = path.read_bytes()

    def crash(obj, f, *args, **kwargs):  # the disk fills half way through the file
        Path(f).write_bytes(b"half a buffer")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    buffer.extend(transitions(3, start=100.0))
    with pytest.raises(OSError, match="disk full"):
        buffer.save(path)
    assert path.read_bytes() == before  # (a plain save would have left "half a buffer" there)
    assert list(tmp_path.iterdir()) == [path]


def test_atomic_write_syncs_the_file_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    from worldmodel import checkpoint

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(checkpoint.os, "fsync", lambda fd: (events.append(("fsync", os.path.isdir(f"/proc/self/fd/{fd}"))),
                                                            real_fsync(fd))[1])  # fmt: skip
    monkeypatch.setattr(checkpoint.os, "replace", lambda a, b: (events.append(("replace", None)), real_replace(a, b))[1])
    with checkpoint.atomic_write(tmp_path / "f.bin") as tmp:
        Path(tmp).write_bytes(b"data")
    assert events == [("fsync", False), ("replace", None), ("fsync", True)]  # file, rename, directory
    assert (tmp_path / "f.bin").read_bytes() == b"data"
