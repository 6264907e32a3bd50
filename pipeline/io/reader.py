"""``read_cutouts``: FITS cutouts from files, directories, globs or URIs into a Ray Dataset.

Ray has no FITS reader, so :class:`FitsDatasource` subclasses Ray Data's ``FileBasedDatasource``:
we list the files once (:func:`pipeline.io.files.list_inputs`), Ray schedules the read tasks,
and each task reads its files with :func:`pipeline.io.decode.read_fits_file` (pyarrow
filesystems: local, s3://, gs://, ...), as the cascade's actors do: one way to open a file, retry
a transient failure and turn any failure into error rows, so no read task ever fails on a bad
or unreachable file. Files are read whole into memory and parsed there (no memmap), so open
handles never pile up.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from ray.data.datasource import DefaultFileMetadataProvider, FileBasedDatasource

from pipeline.io import schema
from pipeline.io.decode import ReadOptions, read_fits_file
from pipeline.io.files import SMALL_FILE_BYTES, Inputs, list_inputs

if TYPE_CHECKING:
    import pyarrow
    import ray.data

_BLOCK_BYTES = 32 << 20  # image bytes per output block (small files are grouped up to this)
_TENSORS = (schema.IMAGE, schema.CLEAN)


class FitsDatasource(FileBasedDatasource):
    """Ray Data datasource yielding one row per cutout (see :mod:`pipeline.io.decode`), over
    files already listed (:class:`~pipeline.io.files.Inputs`: Ray asks the filesystem nothing)."""

    def __init__(self, inputs: Inputs, options: ReadOptions, **file_based_kwargs: Any):
        super().__init__(list(inputs.files), filesystem=inputs.filesystem,
                         meta_provider=_Listed(inputs.sizes), **file_based_kwargs)
        self._options = options
        first = inputs.files[0] if inputs.files else ""
        # Ray strips "s3://" & co. from the paths it hands us; put it back for the source column.
        self._scheme = first.split("://", 1)[0] + "://" if "://" in first else ""

    def _open_input_source(self, filesystem, path: str, **open_args) -> _Unopened:
        # Ray would open (and inflate *.gz) here, outside our error handling: a failed open or
        # a truncated gzip stream failed the task. _read_stream opens it instead.
        return _Unopened(filesystem.unwrap() if hasattr(filesystem, "unwrap") else filesystem)

    def _read_stream(self, f: _Unopened, path: str) -> Iterator[Any]:
        # Yields NumPy batches, not blocks: get_read_tasks groups a task's small files into
        # one Arrow block (building a block costs more than decoding a small file; docs/io.md).
        source = path if "://" in path else self._scheme + path
        yield read_fits_file(source, self._options, f.filesystem)

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None):
        from ray.data.datasource import ReadTask

        tasks = super().get_read_tasks(
            parallelism, per_task_row_limit=per_task_row_limit, data_context=data_context
        )
        return [
            ReadTask(_grouped(t.read_fn), t.metadata, t.schema, t.per_task_row_limit) for t in tasks
        ]


class _Unopened:
    """What Ray's read task holds for a file instead of an open stream: its filesystem."""

    def __init__(self, filesystem):
        self.filesystem = filesystem

    def __enter__(self) -> _Unopened:
        return self

    def __exit__(self, *exc) -> None:
        return None


class _Listed(DefaultFileMetadataProvider):
    """File sizes from our own listing, in the order of the paths (Ray's default stats them)."""

    def __init__(self, sizes: Sequence[int]):
        self.sizes = list(sizes)

    def expand_paths(self, paths, filesystem, partitioning=None, ignore_missing_paths=False):
        if len(paths) != len(self.sizes):
            raise ValueError(f"{len(paths)} paths for {len(self.sizes)} listed sizes")
        yield from zip(paths, self.sizes, strict=True)


def _grouped(read_fn):
    """Wrap a read task: concatenate its files' batches into blocks of ~_BLOCK_BYTES."""

    def read_blocks() -> Iterator[Any]:
        from ray.data.block import BlockAccessor

        pending: list[dict[str, np.ndarray]] = []
        size = 0
        for batch in read_fn():
            big = _nbytes(batch[schema.IMAGE]) >= SMALL_FILE_BYTES
            if pending and (big or size >= _BLOCK_BYTES or _kind(batch) != _kind(pending[0])):
                yield schema.string_nulls(BlockAccessor.batch_to_block(_concat(pending)))
                pending, size = [], 0
            if big:  # a cube shard is a block by itself: no copy into a concatenation
                for chunk in _chunks(batch):
                    yield schema.string_nulls(BlockAccessor.batch_to_block(chunk))
                continue
            for chunk in _chunks(batch):
                pending.append(chunk)
                size += _nbytes(chunk[schema.IMAGE])
                if size >= _BLOCK_BYTES:
                    yield schema.string_nulls(BlockAccessor.batch_to_block(_concat(pending)))
                    pending, size = [], 0
        if pending:
            yield schema.string_nulls(BlockAccessor.batch_to_block(_concat(pending)))

    return read_blocks


def merge_batches(batches: Iterable[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
    """Runs of consecutive batches with the same columns, each as one batch (order kept):
    many one-cutout files make full model batches."""
    for _, run in itertools.groupby(batches, key=_kind):
        yield _concat(list(run))


def _kind(batch: dict[str, np.ndarray]) -> tuple:
    """Batches with the same columns can share a block."""
    return tuple(batch)


def _nbytes(images: np.ndarray) -> int:
    return images.nbytes if images.dtype != object else sum(im.nbytes for im in images)


def _concat(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(batches) == 1:
        return batches[0]
    out = {}
    for key in batches[0]:
        parts = [b[key] for b in batches]
        if any(p.dtype == object and p.ndim == 1 and key in _TENSORS for p in parts) or (
            key in _TENSORS and len({p.shape[1:] for p in parts}) > 1
        ):
            items = [im for p in parts for im in p]
            out[key] = np.empty(len(items), dtype=object)
            out[key][:] = items
        else:
            out[key] = np.concatenate(parts)
    return out


def _chunks(batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    """Split a big cube shard's batch into pieces of at most _BLOCK_BYTES of images."""
    n = len(batch[schema.ID])
    row_bytes = _nbytes(batch[schema.IMAGE]) // max(n, 1)
    step = max(1, _BLOCK_BYTES // row_bytes) if row_bytes else n
    if n <= step:
        yield batch
        return
    for start in range(0, n, step):
        yield {k: v[start : start + step] for k, v in batch.items()}


# ----------------------------------------------------------------------------- public API
def read_cutouts(
    paths: str | os.PathLike | Sequence[str | os.PathLike] | Inputs,
    bands: Sequence[str] | None = None,
    size: int | None = None,
    *,
    strict: bool = False,
    clean: bool = False,
    geometry: bool = False,
    pixel_scale: float | None = None,
    band_names: Sequence[str] | None = None,
    max_nonfinite: float = 0.1,
    attempts: int = 3,
    override_num_blocks: int | None = None,
    filesystem: pyarrow.fs.FileSystem | None = None,
    shuffle: str | None = None,
    ray_remote_args: dict[str, Any] | None = None,
) -> ray.data.Dataset:
    """Read FITS cutouts into a Ray Dataset, one row per cutout (schema: :mod:`pipeline.io.schema`).

    Args:
        paths: files, directories (recursive FITS files), globs (``"dir/*.fits"``, ``"dir/**/x*.fits"``)
            or URIs Ray's filesystems handle (``s3://``, ``gs://``), or a list of these, or the
            :class:`~pipeline.io.files.Inputs` that :func:`~pipeline.io.files.list_inputs` made.
        bands: band names to read, e.g. ``["VIS"]`` or ``["VIS", "NIR_H"]``: matched against
            EXTNAMEs (``VIS`` or ``VIS_FLUX``), shard BANDn keywords, or taken in file order from
            files whose planes carry no names (see :mod:`pipeline.io.decode`). None: every band.
        size: centre-crop / pad every cutout to ``size x size`` (never resampled; padding uses the
            band median). None keeps native shapes (then ``image`` may vary between rows).
        strict: raise :class:`~pipeline.io.decode.CutoutReadError` on the first unreadable file or
            cutout instead of returning an error row.
        clean: also read the noiseless ``clean`` images of cube shards (error row otherwise).
        geometry: also give each row its ``pixel_scale`` (arcsec/px from the WCS or a PIXSCALE
            keyword, NaN when unknown) and ``band_names`` (from EXTNAMEs or BANDn keywords).
        pixel_scale: arcsec/px to give every row instead of what its headers say (implies
            ``geometry``).
        band_names: names of the planes of files that name none (e.g. ``["g", "r", "i", "z",
            "y"]`` for HSC cubes): an unnamed cutout with another number of planes is an error.
        max_nonfinite: fraction of NaN/inf pixels per band above which a cutout is an error row;
            below it they are replaced by the band median.
        attempts: tries of a file read that fails transiently (network, timeout, permission),
            with a growing wait between them; then its rows are errors of kind "transient".
        override_num_blocks: number of read tasks. Default: one per file, capped so that each task
            has ~32 MiB of files or there are 4 tasks per CPU in the cluster (Ray's default split
            of few big files into many blocks is slower; docs/io.md).
        filesystem: a ``pyarrow.fs.FileSystem`` to use instead of inferring one from the paths.
        shuffle: ``"files"`` to read files in random order (Ray's file shuffle).
        ray_remote_args: Ray options of the read tasks (e.g. ``{"num_cpus": 0.5}``).

    Returns:
        A lazy ``ray.data.Dataset`` with columns id, ra, dec, image, source, index, error, kind
        (+ label columns of cube shards, + ``clean``). Error rows carry "<file>: <reason>" and
        their kind, "transient" or "permanent".
    """
    import ray

    from pipeline._ray import ensure_ray

    options = ReadOptions(
        bands=tuple(bands) if bands is not None else None,
        size=size,
        clean=clean,
        geometry=geometry,
        pixel_scale=pixel_scale,
        band_names=tuple(band_names) if band_names is not None else None,
        max_nonfinite=max_nonfinite,
        strict=strict,
        attempts=attempts,
    )
    inputs = list_inputs(paths, filesystem)
    ensure_ray()
    source = FitsDatasource(inputs, options, shuffle=shuffle)
    if override_num_blocks is None:
        override_num_blocks = _default_blocks(len(inputs), source.estimate_inmemory_data_size())
    return ray.data.read_datasource(
        source, override_num_blocks=override_num_blocks, ray_remote_args=ray_remote_args or {}
    )


def _default_blocks(n_files: int, total_bytes: int | None) -> int:
    """One read task per file, but no more than max(4 per CPU, one per 32 MiB of files)."""
    import ray

    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    by_bytes = math.ceil((total_bytes or 0) / (32 << 20))
    return max(1, min(n_files, max(4 * cpus, by_bytes)))
