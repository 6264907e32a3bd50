"""Files and their names, one rule each: which names are FITS, a file's stem, a shard's sibling
catalogue, where a path or URI opens (with timeouts), reading a file's bytes (retrying transient
failures), a file's SHA-256, and the input list of a job.

:func:`list_inputs` expands files, directories and globs (local or ``s3://``/``gs://``) once per
job into :class:`Inputs`, with each file's size from the same listing; everything downstream
(grouping files for the actors, Ray Data's read tasks) takes that list instead of asking the
filesystem again (on object stores every stat is a request).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.io.schema import PERMANENT, TRANSIENT

FITS_SUFFIXES = (".fits", ".fits.gz", ".fit", ".fit.gz", ".fts", ".fits.fz")
SMALL_FILE_BYTES = 4 << 20  # a file smaller than this shares its unit of work with neighbours
_GLOB_CHARS = "*?["
# Remote filesystems never wait forever (a gs:// or s3:// open with no network hung before):
# seconds, unless the URI's query sets them (s3: connect_timeout, request_timeout; gs:
# retry_limit_seconds).
CONNECT_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 60.0
GCS_RETRY_LIMIT_S = 30.0
_S3_TIMEOUTS = ("connect_timeout", "request_timeout")  # ours: pyarrow's S3 URIs refuse them


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
    """'s3://bucket/key?endpoint_override=h:9000' -> 'bucket/key' (a path as its pyarrow
    filesystem names it)."""
    return (uri.split("://", 1)[1] if "://" in uri else uri).split("?", 1)[0]


def filesystem_from_uri(uri: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path on it) for a URI, as ``pyarrow.fs.FileSystem.from_uri`` makes
    them (options in the query: ``?endpoint_override=host:9000&scheme=http``...), with timeouts:
    S3 connect/request timeouts (:data:`CONNECT_TIMEOUT_S`, :data:`REQUEST_TIMEOUT_S`, or
    ``connect_timeout=``/``request_timeout=`` in the query), a GCS retry limit
    (:data:`GCS_RETRY_LIMIT_S`, or ``retry_limit_seconds=``)."""
    from urllib.parse import parse_qsl, urlencode

    from pyarrow.fs import FileSystem, S3FileSystem

    base, _, query = uri.partition("?")
    options = dict(parse_qsl(query, keep_blank_values=True))
    timeouts = {k: float(options.pop(k)) for k in _S3_TIMEOUTS if k in options}
    if base.startswith("gs://") or base.startswith("gcs://"):
        options.setdefault("retry_limit_seconds", str(GCS_RETRY_LIMIT_S))
    fs, path = FileSystem.from_uri(f"{base}?{urlencode(options)}" if options else base)
    if isinstance(fs, S3FileSystem):
        kwargs = fs.__reduce__()[1][0]  # the options from_uri resolved (region...)
        kwargs["connect_timeout"] = timeouts.get("connect_timeout", CONNECT_TIMEOUT_S)
        kwargs["request_timeout"] = timeouts.get("request_timeout", REQUEST_TIMEOUT_S)
        fs = S3FileSystem._reconstruct(kwargs)
    elif timeouts:
        raise ValueError(f"{uri}: {', '.join(timeouts)} apply to s3:// URIs only")
    return fs, path


def uri_filesystem(uri: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path on it) of a URI whose query holds the filesystem's options,
    ``s3://bucket/key?endpoint_override=host:port&scheme=http`` (any that
    :func:`filesystem_from_uri` reads, timeouts included); the path may hold glob characters."""
    base, _, query = uri.partition("?")
    scheme, rest = base.split("://", 1)
    if scheme not in ("s3", "gs", "gcs"):  # no buckets: pyarrow parses the whole URI
        return filesystem_from_uri(uri)
    bucket = f"{scheme}://{rest.split('/', 1)[0]}"  # (glob characters are no URI syntax)
    return filesystem_from_uri(f"{bucket}?{query}" if query else bucket)[0], rest


def locate(source: str, filesystem: Any = None) -> tuple[Any, str]:
    """(pyarrow filesystem, or None for a plain local open; the path on it) for a path or URI,
    opened through ``filesystem`` when one is given."""
    if "://" not in source:
        from pyarrow.fs import LocalFileSystem

        local = filesystem is None or isinstance(filesystem, LocalFileSystem)
        return (None if local else filesystem), source
    if filesystem is None:
        return filesystem_from_uri(source)
    return filesystem, strip_scheme(source)


# ----------------------------------------------------------------------------- reading bytes
class ReadFailure(OSError):
    """A file that could not be read: ``reason`` (one line) and ``kind`` (``schema.TRANSIENT``
    or ``schema.PERMANENT``), after the retries a transient failure gets."""

    def __init__(self, reason: str, kind: str):
        super().__init__(reason)
        self.reason, self.kind = reason, kind


# A missing file (a dangling symlink), a symlink loop, a directory or a bad name will not mend.
_PERMANENT_ERRNOS = {errno.ENOENT, errno.ELOOP, errno.EISDIR, errno.ENOTDIR, errno.ENAMETOOLONG}


def error_kind(exc: OSError) -> str:
    """Transient or permanent (``pipeline.io.schema``): a missing file, a symlink loop or a
    directory is permanent; anything else the filesystem raises (network, timeout, permission,
    a remote open) is transient, worth another try."""
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        return PERMANENT
    return PERMANENT if exc.errno in _PERMANENT_ERRNOS else TRANSIENT


def retrying(fn: Callable[[], Any], attempts: int = 3, wait: float = 0.5) -> Any:
    """``fn()``, tried up to ``attempts`` times while it raises a transient ``OSError``
    (:func:`error_kind`), waiting ``wait`` s, then twice that... between tries. Raises
    :class:`ReadFailure` with the last error's reason and kind."""
    attempts = max(1, attempts)
    for attempt in range(attempts):
        try:
            return fn()
        except ReadFailure:
            raise
        except OSError as exc:
            kind = error_kind(exc)
            if kind == PERMANENT or attempt == attempts - 1:
                tries = f"; {attempt + 1} attempts" if attempt else ""
                raise ReadFailure(f"{_os_reason(exc)}{tries}", kind) from exc
            time.sleep(wait * 2**attempt)
    raise AssertionError("unreachable")


def _os_reason(exc: OSError) -> str:
    """One line: 'No such file or directory' or pyarrow's message, without newlines."""
    text = exc.strerror or str(exc)
    return " ".join(str(text or type(exc).__name__).split())


def read_bytes(source: str, filesystem: Any = None, attempts: int = 3, wait: float = 0.5) -> bytes:
    """The bytes of a local path or URI (through ``filesystem`` when given), as stored: a
    ``.gz`` file is not inflated here. Transient failures are retried (:func:`retrying`);
    raises :class:`ReadFailure`."""
    fs, where = locate(source, filesystem)

    def read() -> bytes:
        if fs is None:
            with open(where, "rb") as f:
                return f.read()
        with fs.open_input_stream(where, compression=None) as f:
            return f.read()

    return retrying(read, attempts, wait)


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
    scheme, no query), ``sizes`` in bytes and ``mtimes`` (ns, None when unknown) from the same
    listing, and the ``filesystem`` that holds them. A file the listing could not follow (a
    dangling or looping symlink) is listed with size 0, to become an error row."""

    files: tuple[str, ...]
    sizes: tuple[int, ...]
    filesystem: Any
    mtimes: tuple[int | None, ...] | None = None

    def subset(self, files: Sequence[str]) -> Inputs:
        """The same listing restricted to ``files`` (in that order)."""
        at = {f: i for i, f in enumerate(self.files)}
        mtimes = None if self.mtimes is None else tuple(self.mtimes[at[f]] for f in files)
        return Inputs(tuple(files), tuple(self.sizes[at[f]] for f in files), self.filesystem,
                      mtimes)

    def stamps(self) -> dict[str, tuple[int, int | None]]:
        """file -> (size, mtime): what tells a changed file from the one read before."""
        mtimes = self.mtimes or (None,) * len(self.files)
        return {f: (s, m) for f, s, m in zip(self.files, self.sizes, mtimes, strict=True)}

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

    found: list[tuple[str, int, int | None]] = []
    for given in paths:
        if "://" in given:
            # a given filesystem is used as it is: building the URI's own would already ask
            # the network (S3 resolves the bucket's region)
            fs, path = ((filesystem, strip_scheme(given)) if filesystem is not None
                        else uri_filesystem(given))
            scheme = given.split("://", 1)[0] + "://"  # the files' names carry no query
        else:
            fs, path, scheme = filesystem or pafs.LocalFileSystem(), os.path.abspath(given), ""
        filesystem = filesystem or fs
        here = _expand_one(fs, path)
        if not here:
            raise FileNotFoundError(f"{given}: no FITS files found (suffixes {FITS_SUFFIXES})")
        found += [(scheme + p, size, mtime) for p, size, mtime in here]
    files, sizes, mtimes = zip(*found, strict=True)
    return Inputs(files, sizes, filesystem, mtimes)


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


def _expand_one(fs, path: str) -> list[tuple[str, int, int | None]]:
    """(path, size, mtime) of the files ``path`` names: itself, a directory's FITS files or a
    glob's matches, sorted."""
    from pyarrow.fs import FileSelector, FileType, LocalFileSystem

    local = isinstance(fs, LocalFileSystem)
    if any(c in path for c in _GLOB_CHARS):
        parts = path.split("/")
        n_static = next(i for i, p in enumerate(parts) if any(c in p for c in _GLOB_CHARS))
        base = "/".join(parts[:n_static]) or "/"
        recursive = "**" in path or n_static < len(parts) - 1
        regex = _glob_regex(path)
        if local:
            return _walk_local(base, regex.fullmatch) if os.path.isdir(base) else []
        infos = fs.get_file_info(FileSelector(base, recursive=recursive, allow_not_found=True))
        return sorted((i.path, i.size, i.mtime_ns) for i in infos
                      if i.type == FileType.File and regex.fullmatch(i.path))
    info = fs.get_file_info(path)
    if info.type == FileType.File:
        return [(path, info.size, info.mtime_ns)]
    if info.type == FileType.Directory:
        if local:
            return _walk_local(path, is_fits_name)
        infos = fs.get_file_info(FileSelector(path, recursive=True))
        return sorted((i.path, i.size, i.mtime_ns) for i in infos
                      if i.type == FileType.File and is_fits_name(i.path))
    raise FileNotFoundError(f"{path}: no such file or directory")


def _walk_local(top: str, keep: Callable[[str], Any]) -> list[tuple[str, int, int | None]]:
    """(path, size, mtime) of the files under local directory ``top`` whose path ``keep``
    accepts, sorted. Directory symlinks are followed once (a link back up the tree is not
    walked again); an entry that cannot be followed (a dangling or looping symlink) is kept
    with size 0, so that reading it gives an error row instead of a silent gap (pyarrow's
    listing drops it, and walks a directory loop until the path is too long)."""
    found: list[tuple[str, int, int | None]] = []
    seen: set[tuple[int, int]] = set()
    todo = [top]
    while todo:
        folder = todo.pop()
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        with os.scandir(folder) as entries:
            for entry in entries:
                try:
                    is_dir = entry.is_dir()  # follows symlinks
                except OSError:
                    is_dir = False
                if is_dir:
                    todo.append(entry.path)
                elif keep(entry.path):
                    try:
                        st = entry.stat()
                        found.append((entry.path, st.st_size, st.st_mtime_ns))
                    except OSError:  # dangling or looping: listed, to be reported
                        found.append((entry.path, 0, None))
    return sorted(found)


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
