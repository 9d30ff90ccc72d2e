"""Writing a voxel store: frames appended under a temporary folder, moved into place complete.

The writer of :mod:`gpicture.data.store`'s layout (:data:`gpicture.data.schema.FIELDS`):
rows are buffered and flushed to the chunked arrays every ``flush_points`` points; ``commit``
writes the frame table and attributes, sets ``complete`` last and moves the store into place.
The output is claimed first (:func:`gpicture.atomic.claim_output`: one writer per store,
``--force`` replaces only a voxel store), and Zarr's writes are never split by an interrupt
(:func:`gpicture.atomic.signals_deferred`), so Ctrl-C leaves no temporary folder behind.
Before ``complete``, the store records what it must hold (:mod:`gpicture.data.integrity`); a
write that fails (a full disk) is a StoreError naming the store, and the temporary folder is
removed only after Zarr's pending background writes have finished (``chunks.settle_writes``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import field
from pathlib import Path
from typing import Any, Self

import numpy as np
import zarr

from gpicture.atomic import (
    OutputError,
    claim_output,
    move_into_place,
    signals_deferred,
    temp_sibling,
)
from gpicture.data.chunks import WRITE_CONFIG, compressors, settle_writes
from gpicture.data.integrity import RECORD_KEY, check_present, record_store
from gpicture.data.schema import (
    FIELDS,
    FRAME,
    ROW_LEVELS,
    SCHEMA_VERSION,
    Codec,
    Field,
    encode_strings,
    frame_type,
    level_fields,
    rows,
)
from gpicture.data.store import FORMAT, ROW_FIELDS, StoreError

EncodedFrame = frame_type(
    "EncodedFrame",
    "A frame ready to append: a reader's RawFrame plus its voxelization.",
    FIELDS,
    after=[("dropped_nonfinite", "int", field(default=0)), ("sweeps_read", "int", field(default=1))],
    module=__name__,
)



class StoreWriter:
    """Appends frames to a new store under a temporary folder; ``commit`` moves it into place.

    Use as a context manager: on an exception the temporary folder is removed and
    nothing appears at the destination.
    """

    def __init__(self, out: Path, attrs: dict[str, Any], feature_names: list[str], box_classes: list[str],
                 force: bool = False, flush_points: int = 1 << 21, labels: bool = True,
                 log: Callable[[str], None] | None = None) -> None:
        self.out = Path(out)
        # One writer per store; --force replaces only a voxel store (gpicture.atomic.claim_output).
        self._claim = claim_output(self.out, FORMAT, force=force, **({"log": log} if log else {}))
        try:
            self._lock = self._claim.__enter__()
        except OutputError as exc:
            raise StoreError(str(exc)) from None
        try:
            with signals_deferred():
                self.tmp = temp_sibling(self.out)
        except OSError as exc:
            self._claim.__exit__(None, None, None)
            raise StoreError(f"{self.out}: cannot write there ({exc.strerror or exc})") from exc
        try:
            self._setup(attrs, feature_names, box_classes, force, flush_points, labels)
        except BaseException:  # an interrupt too: no temporary folder, no claim left behind
            settle_writes()
            shutil.rmtree(self.tmp, ignore_errors=True)
            self._claim.__exit__(None, None, None)
            raise

    def _setup(self, attrs: dict[str, Any], feature_names: list[str], box_classes: list[str], force: bool,
               flush_points: int, labels: bool) -> None:
        self.force = force
        self.labels = labels  # False: an unlabelled store, no label array (frames must hold none)
        self.attrs = dict(attrs)
        self.feature_names = list(feature_names)
        self.box_classes = list(box_classes)
        self._class_index = {c: i for i, c in enumerate(self.box_classes)}
        self.flush_points = flush_points
        self._buf: list[EncodedFrame] = []
        self._buf_points = 0
        self._counts = {lv.ptr: [0] for lv in ROW_LEVELS}
        self._meta: dict[str, list] = {f.name: [] for f in level_fields(FRAME)}
        self.dropped_nonfinite = 0
        with self._writing():
            self._g = zarr.open_group(str(self.tmp), mode="w")
        self._a: dict[str, zarr.Array] = {}
        # An optional field's array is created when the first frame that has values arrives
        # (earlier frames are back-filled), so a split without any has none.
        self._present = {f.name: not f.optional and (labels or not f.label) for f in ROW_FIELDS}
        for f in ROW_FIELDS:
            if self._present[f.name]:
                self._create(f)

    def _create(self, f: Field) -> None:
        names = self.feature_names if f.codec is Codec.FEATURES else [None]
        for name in names:
            path = f.array if name is None else f"{f.array}/{name}"
            tail = f.stored_shape
            with self._writing():
                self._a[path] = self._g.create_array(path, shape=(0, *tail), chunks=(f.level.chunk, *tail),
                                                     dtype=f.stored_dtype(name).name, compressors=compressors(),
                                                     config=WRITE_CONFIG)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None or self.tmp.exists():  # an exception, or never committed
                settle_writes()  # Zarr's chunk writes still running would recreate the folder
                shutil.rmtree(self.tmp, ignore_errors=True)
        finally:
            self._claim.__exit__(None, None, None)

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Zarr writes, never split by an interrupt (atomic.signals_deferred); a write that fails
        (a full disk, a read-only folder) is a StoreError naming the store and the path written,
        raised only once Zarr's other pending writes have finished (so that the cleanup that
        follows leaves nothing behind)."""
        try:
            with signals_deferred():
                yield
        except OSError as exc:
            settle_writes()
            where = exc.filename or self.tmp
            raise StoreError(f"{self.out}: cannot write the store: {exc.strerror or exc} (writing {where}); "
                             "nothing was left there: free space or choose another --out, then convert again") from None

    def append(self, frame: EncodedFrame) -> None:
        if sorted(frame.features) != sorted(self.feature_names):
            raise StoreError(f"frame {frame.frame_id}: features {sorted(frame.features)}, "
                             f"the store has {sorted(self.feature_names)}")
        seen = self.__dict__.setdefault("_frame_ids", {})  # frame id -> append position: one frame never twice
        if frame.frame_id in seen:
            raise StoreError(f"{self.out}: frame {frame.frame_id!r} (scene {frame.scene}) given twice, as frames "
                             f"{seen[frame.frame_id]} and {len(seen)} (one segment or sample under two names?)")
        seen[frame.frame_id] = len(seen)
        self._buf.append(frame)
        self._buf_points += len(frame.points)
        self.dropped_nonfinite += frame.dropped_nonfinite
        if self._buf_points >= self.flush_points:
            self._flush()

    def _flush(self) -> None:
        if not self._buf:
            return
        with self._writing():  # Zarr's writes complete before an interrupt unwinds (atomic.signals_deferred)
            self._flush_buffer()

    def _flush_buffer(self) -> None:
        fs = self._buf
        for f in ROW_FIELDS:
            if not self._present[f.name]:
                if all(getattr(fr, f.name) is None for fr in fs):
                    continue
                if f.label and not self.labels:
                    bad = next(fr for fr in fs if getattr(fr, f.name) is not None)
                    raise StoreError(f"frame {bad.frame_id}: {f.name} given to an unlabelled store")
                self._present[f.name] = True
                self._create(f)
                n = sum(self._counts[f.level.ptr])
                self._a[f.array].append(np.full((n, *f.shape), f.fill, f.stored_dtype()))
            self._append(f, [self._values(fr, f) for fr in fs])
        for fr in fs:
            for lv in ROW_LEVELS:
                self._counts[lv.ptr].append(rows(fr, lv))
            for name, values in self._meta.items():
                values.append(getattr(fr, name))
        self._buf, self._buf_points = [], 0

    @staticmethod
    def _values(fr: EncodedFrame, f: Field) -> Any:
        """Field ``f`` of a frame; a missing optional one as ``fill`` rows (none for a level it counts)."""
        v = getattr(fr, f.name)
        return np.full((rows(fr, f.level), *f.shape), f.fill, f.stored_dtype()) if v is None else v

    def _append(self, f: Field, values: list) -> None:
        cat = np.concatenate
        match f.codec:
            case Codec.NUMBER:
                self._a[f.array].append(cat([np.reshape(v, (-1, *f.shape)) for v in values]).astype(f.stored_dtype()))
            case Codec.STRING:
                self._a[f.array].append(encode_strings(cat([np.asarray(v, dtype=object) for v in values])))
            case Codec.CLASS:
                names = cat([np.asarray(v, dtype=object) for v in values])
                unknown = sorted({n for n in names if n not in self._class_index})
                if unknown:
                    raise StoreError(f"box classes {unknown} are not in the store's class list")
                self._a[f.array].append(np.array([self._class_index[n] for n in names], dtype=f.stored_dtype()))
            case Codec.FEATURES:
                for name in self.feature_names:
                    raw = cat([v[name] for v in values])
                    dtype = f.stored_dtype(name)
                    stored = raw.astype(dtype)
                    if dtype.kind in "iu" and not np.array_equal(stored, raw):
                        raise StoreError(f"feature {name!r} has values that do not fit {dtype} exactly")
                    self._a[f"{f.array}/{name}"].append(stored)

    def commit(self, allow_empty: bool = False) -> Path:
        """Write the frame table and attributes, mark the store complete, move it into place.

        A store of no frame is refused unless ``allow_empty`` (every source frame was skipped
        by policy: the attrs say so, and :meth:`VoxelStore.open` refuses it to every consumer)."""
        self._flush()
        g = self._g
        n = len(self._meta["frame_id"])
        if n == 0 and not allow_empty:
            raise StoreError(f"{self.out}: no frames to write")

        def small(name: str, data: np.ndarray) -> None:
            with self._writing():
                g.create_array(name, data=data, chunks=(FRAME.chunk, *data.shape[1:]), compressors=compressors(),
                               config=WRITE_CONFIG)

        for ptr, counts in self._counts.items():
            small(f"frames/{ptr}_ptr", np.cumsum(counts).astype(np.int64))
        for f in level_fields(FRAME):
            values = self._meta[f.name]
            small(f.array, encode_strings(values) if f.codec is Codec.STRING
                  else np.asarray(values, dtype=f.dtype).reshape(n, *f.shape))
        attrs = {
            **self.attrs,
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "labels": self.labels,
            "feature_names": self.feature_names,
            "box_classes": self.box_classes,
            **{f.present: self._present[f.name] for f in ROW_FIELDS if f.present},
            "n_frames": n,
            **{lv.total: int(sum(self._counts[lv.ptr])) for lv in ROW_LEVELS if lv.total},
            "dropped_nonfinite_points": int(self.dropped_nonfinite),
        }
        # What must exist (every array's shape and chunk count), checked here once: every chunk is
        # a file (chunks.WRITE_CONFIG), so readers tell a lost chunk from a chunk of fill values.
        record = record_store(self.tmp)
        check_present(self.tmp, {RECORD_KEY: record.to_attrs()}, "a writer bug: Zarr skipped a chunk")
        attrs[RECORD_KEY] = record.to_attrs()
        json.dumps(attrs)  # fail here, not half-way, on a non-JSON attribute
        with self._writing():
            g.attrs.update(attrs)
            g.attrs["complete"] = True
        try:
            move_into_place(self.tmp, self.out, lock=self._lock)  # no marker file: the Zarr format attribute says the kind
        except OutputError as exc:
            raise StoreError(str(exc)) from None
        return self.out
