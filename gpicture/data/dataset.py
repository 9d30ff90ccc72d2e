"""A torch Dataset over a voxel store (batches: :mod:`gpicture.data.batch`).

The store is opened lazily in each process (DataLoader workers included): a dataset
object pickles as its path, never as an open Zarr handle.
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from gpicture.data.store import StoreError, StoreFrame, VoxelStore


class VoxelStoreDataset(Dataset):
    """Frames of a labelled voxel store as :class:`StoreFrame` objects (numpy arrays), for
    the supervised tasks: an unlabelled store (the ``pretrain`` split) is refused."""

    def __init__(self, path: str | Path, frames: list[int] | None = None) -> None:
        self.path = Path(path)
        store = VoxelStore.open(self.path)  # validate now, in the parent, with a clear error
        if not store.labelled:
            raise StoreError(f"{self.path}: an unlabelled store (converted without labels, as the pretrain split): "
                             "a task needs a labelled split (train, val)")
        self.feature_names = store.feature_names
        self.frames = list(range(len(store))) if frames is None else list(frames)
        self._store: VoxelStore | None = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_store"] = None
        return state

    @property
    def store(self) -> VoxelStore:
        if self._store is None:
            self._store = VoxelStore.open(self.path)
        return self._store

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> StoreFrame:
        return self.store[self.frames[i]]
