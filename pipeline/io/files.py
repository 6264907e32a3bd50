"""Files and their names, one rule each: which names are FITS, a file's stem, a shard's sibling
catalogue, where a path or URI opens, a file's SHA-256, and the input list of a job.

:func:`list_inputs` expands files, directories and globs (local or ``s3://``/``gs://``) once per
job into :class:`Inputs`, with each file's size from the same listing; everything downstream
(grouping files for the actors, Ray Data's read tasks) takes that list instead of asking the
filesystem again (on object stores every stat is a request).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

FITS_SUFFIXES = (".fits", ".fits.gz", ".fit", ".fit.gz", ".fts", ".fits.fz")
SMALL_FILE_BYTES = 4 << 20  # a file smaller than this shares its unit of work with neighbours
_GLOB_CHARS = "*?["


def is_fits_name(path: str) -> bool:
    """A FITS file name a directory scan picks: a FITS suffix, and not hidden or temporary
    ('.' or '_' first: Ray's convention, and the writers' temporary files)."""
    name = path.rsplit("/", 1)[-1]
    return not name.startswith((".", "_")) and name.lower().endswith(FITS_SUFFIXES)


def file_stem(source: str) -> str:
    """File name without directories and FITS suffixes: 's3://b/x/EUCLJ1.5+6.fits.gz' -> 'EUCLJ1.5+6'."""
    name = str(source).rstrip("/").rsplit("/", 1)[-1]
    lower = name.lower()
    for suffix in sorted(FITS_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name.rsplit(".", 1)[0] if "." in name[1:] else name


def sibling_parquet(path: str) -> str:
    """The Parquet catalogue next to a cube shard: 'dir/shard-0001.fits' -> 'dir/shard-0001.parquet'."""
    path = str(path)
    head = path.rstrip("/").rsplit("/", 1)[0] + "/" if "/" in path else ""
    return f"{head}{file_stem(path)}.parquet"


def strip_scheme(uri: str) -> str:
    """'s3://bucket/key' -> 'bucket/key' (a path as its pyarrow filesystem names it)."""
    return uri.split("://", 1)[1] if "://" in uri else uri


def uri_filesystem(uri: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path on it) of a URI whose query holds the filesystem's options,
    ``s3://bucket/key?endpoint_override=host:port&scheme=http`` (any that
    ``pyarrow.fs.FileSystem.from_uri`` reads); the path may hold glob characters."""
    from pyarrow.fs import FileSystem

    base, _, query = uri.partition("?")
    scheme, rest = base.split("://", 1)
    if scheme not in ("s3", "gs", "gcs"):  # no buckets: pyarrow parses the whole URI
        return FileSystem.from_uri(uri)
    bucket = f"{scheme}://{rest.split('/', 1)[0]}"  # (glob characters are no URI syntax)
    return FileSystem.from_uri(f"{bucket}?{query}" if query else bucket)[0], rest


def locate(source: str, filesystem: Any = None) -> tuple[Any, str]:
    """(pyarrow filesystem, or None for a plain local open; the path on it) for a path or URI,
    opened through ``filesystem`` when one is given."""
    if "://" not in source:
        from pyarrow.fs import LocalFileSystem

        local = filesystem is None or isinstance(filesystem, LocalFileSystem)
        return (None if local else filesystem), source
    if filesystem is None:
        from pyarrow.fs import FileSystem

        return FileSystem.from_uri(source)
    return filesystem, strip_scheme(source)


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a local file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- inputs of a job
@dataclass(frozen=True)
class Inputs:
    """A job's input files, listed once: ``files`` (local paths absolute, URIs with their
    scheme), ``sizes`` in bytes from the same listing, and the ``filesystem`` that holds them."""

    files: tuple[str, ...]
    sizes: tuple[int, ...]
    filesystem: Any

    def subset(self, files: Sequence[str]) -> Inputs:
        """The same listing restricted to ``files`` (in that order)."""
        size = dict(zip(self.files, self.sizes, strict=True))
        return Inputs(tuple(files), tuple(size[f] for f in files), self.filesystem)

    def __len__(self) -> int:
        return len(self.files)


def list_inputs(paths, filesystem: Any = None) -> Inputs:
    """Expand files, directories (recursive FITS files) and globs into a sorted list of files.

    ``paths``: a path, URI or :class:`Inputs` (returned as is), or a list of paths/URIs. Local
    paths become absolute; URIs (``s3://``, ``gs://`` ...) keep their scheme and are listed
    through ``pyarrow.fs``. An explicit file is kept whatever its name (a non-FITS file becomes
    an error row); directories yield the names :func:`is_fits_name` accepts.

    Raises:
        FileNotFoundError: a path that does not exist or a glob/directory with no FITS file.
    """
    import pyarrow.fs as pafs

    if isinstance(paths, Inputs):
        return paths
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise ValueError("no input paths given")
    remote = ["://" in p for p in paths]
    if any(remote) and not all(remote):
        raise ValueError(f"mix of local paths and URIs in one read: {paths}")

    files: list[str] = []
    sizes: list[int] = []
    for given in paths:
        if "://" in given:
            fs, path = uri_filesystem(given)
            fs = filesystem or fs
            scheme = given.split("://", 1)[0] + "://"  # the files' names carry no query
        else:
            fs, path, scheme = filesystem or pafs.LocalFileSystem(), os.path.abspath(given), ""
        filesystem = filesystem or fs
        found = _expand_one(fs, path)
        if not found:
            raise FileNotFoundError(f"{given}: no FITS files found (suffixes {FITS_SUFFIXES})")
        files += [scheme + p for p, _ in found]
        sizes += [s for _, s in found]
    return Inputs(tuple(files), tuple(sizes), filesystem)


def group_files(inputs: Inputs, parts: int) -> list[list[str]]:
    """The files in order, in runs of neighbours that make one unit of work each: a file of
    :data:`SMALL_FILE_BYTES` or more alone, smaller files together up to that size, and runs no
    bigger than 1/``parts`` of all bytes (so ``parts`` workers all get some)."""
    cap = max(1, min(SMALL_FILE_BYTES, sum(inputs.sizes) // max(1, parts)))
    groups: list[list[str]] = []
    held = 0  # bytes in the last group
    for path, size in zip(inputs.files, inputs.sizes, strict=True):
        if not groups or held + size > cap:
            groups.append([])
            held = 0
        groups[-1].append(path)
        held += size
    return groups


def _expand_one(fs, path: str) -> list[tuple[str, int]]:
    """(path, size) of the files ``path`` names: itself, a directory's FITS files or a glob's
    matches, sorted."""
    from pyarrow.fs import FileSelector, FileType

    if any(c in path for c in _GLOB_CHARS):
        parts = path.split("/")
        n_static = next(i for i, p in enumerate(parts) if any(c in p for c in _GLOB_CHARS))
        base = "/".join(parts[:n_static]) or "/"
        recursive = "**" in path or n_static < len(parts) - 1
        regex = _glob_regex(path)
        infos = fs.get_file_info(FileSelector(base, recursive=recursive, allow_not_found=True))
        return sorted((i.path, i.size) for i in infos
                      if i.type == FileType.File and regex.fullmatch(i.path))
    info = fs.get_file_info(path)
    if info.type == FileType.File:
        return [(path, info.size)]
    if info.type == FileType.Directory:
        infos = fs.get_file_info(FileSelector(path, recursive=True))
        return sorted((i.path, i.size) for i in infos
                      if i.type == FileType.File and is_fits_name(i.path))
    raise FileNotFoundError(f"{path}: no such file or directory")


def _glob_regex(pattern: str) -> re.Pattern:
    """Shell-style glob to regex: '*' and '?' stay within one directory, '**/' spans many."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 1 :]:
            j = pattern.index("]", i + 1)
            body = pattern[i + 1 : j]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = j + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))
