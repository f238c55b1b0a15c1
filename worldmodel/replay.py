"""A transition replay buffer: TorchRL's ReplayBuffer with validation and atomic save/load."""

from __future__ import annotations

import logging
import os

import torch
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage
from torchrl.data import ReplayBuffer as _TorchRLReplayBuffer

from worldmodel.checkpoint import CheckpointError, atomic_save, load_checked
from worldmodel.transitions import validate_transitions

logging.getLogger("torchrl").setLevel(logging.WARNING)  # silence per-storage INFO lines

_FORMAT = "worldmodel.ReplayBuffer"


class ReplayBuffer:
    """Holds up to `capacity` transitions (oldest overwritten first); samples uniformly.

    Every batch given to `extend` is validated (shapes, dtypes, finite values), so what is
    stored can always be trained on.
    """

    def __init__(self, obs_dim: int, act_dim: int, capacity: int = 1_000_000, device: str = "cpu"):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.obs_dim, self.act_dim, self.capacity = obs_dim, act_dim, capacity
        self.device = torch.device(device)
        self._rb = _TorchRLReplayBuffer(
            storage=LazyTensorStorage(capacity, device=self.device), batch_size=None
        )
        self.written = 0  # rows ever extended: more than capacity once a row was overwritten

    def __len__(self) -> int:
        return len(self._rb)

    def extend(self, transitions: TensorDict) -> None:
        """Append a batch [N] of transitions (see worldmodel.transitions); of a batch larger than the
        capacity the last `capacity` rows stay, where writing the rows one by one would leave them."""
        batch = validate_transitions(transitions, self.obs_dim, self.act_dim)
        n, cap = len(batch), self.capacity
        # whole laps of the ring that later rows overwrite are skipped; the rest goes in chunks of at
        # most `capacity`, so no write has two rows for one slot (which wins is undefined on a GPU)
        skip = max(n // cap - 1, 0) * cap
        for chunk in batch[skip:].split(cap) if n else ():
            self._rb.extend(chunk.to(self.device))
        self.written += n

    def sample(self, batch_size: int, split: int | None = None) -> TensorDict:
        """`batch_size` transitions drawn uniformly with replacement (torch's global RNG).

        split: RLPD's symmetric sampling. The first `split` rows stored (e.g. an offline dataset)
        and the rows after them each give half the batch; uniform over all while either side is
        empty. Needs a buffer that never overwrote a row (capacity for everything)."""
        if len(self) == 0:
            raise RuntimeError("cannot sample from an empty replay buffer; extend it first")
        if not split or split >= len(self):
            return self._rb.sample(batch_size)
        if self.written > self.capacity:  # (exactly full is fine: nothing was overwritten)
            raise RuntimeError("symmetric sampling needs a buffer that never overwrote a row; give it more capacity")
        half = batch_size // 2
        rows = torch.cat([torch.randint(0, split, (half,)), torch.randint(split, len(self), (batch_size - half,))])
        return self._rb[rows]

    def data(self) -> TensorDict:
        """Every stored transition, [len(self)] (storage order, not insertion order once full)."""
        if len(self) == 0:
            raise RuntimeError("the replay buffer is empty")
        return self._rb[:]

    def newest(self, count: int) -> torch.Tensor:
        """Where the `count` rows written last are in `data()` (all stored rows at most), oldest
        first: [min(count, len(self))] (e.g. the rows a model has not been fitted on yet)."""
        count = min(max(count, 0), len(self))
        return torch.arange(self.written - count, self.written) % self.capacity

    def state_dict(self) -> dict:
        """Contents, write position and dimensions, as plain tensors and numbers."""
        meta = {"obs_dim": self.obs_dim, "act_dim": self.act_dim, "capacity": self.capacity, "written": self.written}
        return {"format": _FORMAT, "version": 1, **meta, "state": self._rb.state_dict()}

    @classmethod
    def from_state_dict(cls, state: dict, device: str = "cpu", source: str = "state") -> "ReplayBuffer":
        """Rebuild a buffer from `state_dict()`; CheckpointError (naming `source`) if it does not fit."""
        try:
            buffer = cls(state["obs_dim"], state["act_dim"], state["capacity"], device)
            buffer._rb.load_state_dict(state["state"])
            # (saved before the count was kept: a full buffer may have overwritten rows)
            full = len(buffer) == buffer.capacity
            buffer.written = state.get("written", buffer.capacity + 1 if full else len(buffer))
            if len(buffer):
                validate_transitions(buffer._rb[:], buffer.obs_dim, buffer.act_dim)
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"{source}: replay buffer contents do not match its header: {e}") from e
        return buffer

    def save(self, path: str | os.PathLike) -> None:
        """Write the buffer (contents and write position) atomically."""
        atomic_save(self.state_dict(), path)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu") -> "ReplayBuffer":
        """Read a buffer written by `save`; a clear CheckpointError if missing or corrupt."""
        return cls.from_state_dict(load_checked(path, _FORMAT), device, source=str(path))
