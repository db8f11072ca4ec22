"""The cache: where reference weights and quantized models live, and how the weights get there.

Layout under `cache_root()` (no folder is created before the first write)::

    downloads/<filename>            reference weights, as published
    downloads/<filename>.verified   sidecar: the checked hash, and the size/mtime checked
    downloads/<filename>.part       an unfinished download, resumed with an HTTP Range request
    models/<name>-<settings>.qcnn   quantized files (written through `atomic_write`)
    locks/<filename>.lock           one lock per file: two processes never fetch or build it twice

`fetch` follows pooch (a known hash for every file, stream to a temporary file in the target
folder, verify, rename) and adds what pooch lacks: offline mode, mirrors, resumed downloads, a
lock, and errors that say which file is wrong and what to do. See docs/cache.md.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

# requests, filelock and platformdirs are imported where used: a run that finds its quantized file
# in the cache needs none of them (requests alone took 45 ms and ~5 MB at start-up).
if TYPE_CHECKING:
    import filelock
    import requests

__all__ = [
    "CacheError",
    "DownloadError",
    "CacheEntry",
    "cache_root",
    "download_path",
    "model_path",
    "fetch",
    "locked",
    "atomic_write",
    "cache_info",
    "clear",
]

_FOLDERS = {"download": "downloads", "model": "models"}
_CHUNK = 1 << 20  # for reading local files
_NET_CHUNK = 1 << 16  # small: the bytes of an unfinished network read are lost when it is cut
_HASH_LENGTHS = {"sha256": 64, "sha1": 40}
_TRUE = {"1", "true", "yes", "on"}
_SIDECAR = ".verified"
_PART = ".part"


class CacheError(OSError):
    """The cache cannot be used: a folder cannot be created or written, the disk is full, or a lock
    is held too long. A subclass of `OSError`, so ``except OSError`` catches it too."""


class DownloadError(CacheError):
    """A file could not be fetched: no network, HTTP error, hash mismatch, disk full, permission
    denied, offline mode with the file missing. `fetch` raises nothing else for these failures; the
    message says which file or URL and what to do. A subclass of `CacheError` (hence `OSError`)."""


class _Busy(CacheError):
    """A lock is still held by someone else after the timeout."""


@dataclass(frozen=True)
class CacheEntry:
    """One file in the cache, as listed by `cache_info`."""

    path: Path  # absolute path of the file
    kind: str  # "download" (finished weights), "partial" (.part or temporary file), "model" (.qcnn)
    size: int  # bytes


def cache_root() -> Path:
    """The cache folder: ``$QCNN_HOME`` if set, else the platform's user cache folder for "qcnn".

    The one place the root is resolved; nothing is created here.

    Examples
    --------
    >>> cache_root()  # doctest: +SKIP
    PosixPath('/home/me/.cache/qcnn')
    """
    home = os.environ.get("QCNN_HOME", "").strip()
    if home:
        return Path(home).expanduser().absolute()
    import platformdirs

    return Path(platformdirs.user_cache_dir("qcnn", appauthor=False))


def download_path(filename: str) -> Path:
    """Where `fetch` keeps `filename`: ``<root>/downloads/<filename>``.

    Examples
    --------
    >>> download_path("bvlc_alexnet.caffemodel").name
    'bvlc_alexnet.caffemodel'
    """
    return cache_root() / _FOLDERS["download"] / _check_name(filename)


def model_path(name: str, settings_hash: str) -> Path:
    """Where a quantized model lives: ``<root>/models/<name>-<settings_hash>.qcnn``.

    Write it with ``atomic_write`` inside ``locked(path.name)``.

    Examples
    --------
    >>> model_path("alexnet", "1a2b3c4d").name
    'alexnet-1a2b3c4d.qcnn'
    """
    return cache_root() / _FOLDERS["model"] / _check_name(f"{name}-{settings_hash}.qcnn")


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name or name in (".", "..") or re.search(r"[/\\\0]", name):
        raise ValueError(f"a cache file name must be a plain file name without folders, "
                         f"got {name!r}")
    return name


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def _local_error(exc: OSError, path: Path, action: str, cls: type[CacheError] = CacheError):
    """A CacheError (or `cls`) for an OSError on a local path, with what to do about it."""
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        msg = (f"disk full: could not {action} {path}. Free some space, or set QCNN_HOME to a "
               f"folder on a disk with room (the cache is now {cache_root()}).")
    elif isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        msg = (f"permission denied: could not {action} {path}. Set QCNN_HOME to a folder you can "
               f"write, e.g. `export QCNN_HOME=$HOME/qcnn-cache`.")
    else:
        msg = (f"could not {action} {path}: {exc.strerror or exc}. Check that path, or set "
               f"QCNN_HOME to another folder (the cache is now {cache_root()}).")
    return cls(msg)


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _local_error(e, path, "create the cache folder") from e


def _fsync_dir(path: Path) -> None:
    # Makes a rename durable on Linux; some file systems (and Windows) refuse it, which is harmless.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb") -> Iterator:
    """Write a file all at once or not at all.

    Yields an open file in the target's folder (its ``.name`` is the temporary path, for writers
    that want a path: close the file first, then write to that path). On success the data is
    fsynced and the file renamed onto `path` with `os.replace`; on any exception, KeyboardInterrupt
    included, the temporary file is removed and `path` is left as it was. Creates the folder.

    Parameters
    ----------
    path : str or Path
        The final file.
    mode : {"wb", "w"}
        Binary or text (UTF-8).

    Raises
    ------
    CacheError
        The folder cannot be created or the disk is full (with what to do).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.bin"
    >>> with atomic_write(p) as f:
    ...     _ = f.write(b"data")
    >>> p.read_bytes()
    b'data'
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    _make_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        f = open(tmp, mode, encoding=None if "b" in mode else "utf-8",
                 opener=lambda p, flags: os.open(p, flags | os.O_EXCL, 0o666))
    except OSError as e:
        raise _local_error(e, path.parent, "create a file in") from e
    try:
        yield f
        if not f.closed:
            f.flush()
            os.fsync(f.fileno())
            f.close()
        else:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        f.close()
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", 0)):
            raise _local_error(e, path, "write") from e
        raise
    _fsync_dir(path.parent)


_LOCKS: dict[str, filelock.FileLock] = {}


@contextlib.contextmanager
def locked(name: str, timeout: float | None = None) -> Iterator[Path]:
    """Hold the cache lock for `name` (``<root>/locks/<name>.lock``), across threads and processes.

    `fetch` takes it for each download; take it around any other make-once step, e.g. quantizing
    into ``model_path(...)``: lock the file's name, check again that it is missing, then build it.
    Re-entrant within a thread. Prints a note on stderr if another holder makes it wait.

    Parameters
    ----------
    name : str
        A plain file name (the file the lock protects).
    timeout : float, optional
        Seconds to wait; None waits as long as it takes.

    Yields
    ------
    Path
        The lock file.

    Raises
    ------
    CacheError
        The lock was still held after `timeout`, or the locks folder cannot be created.

    Examples
    --------
    >>> path = model_path("alexnet", "1a2b3c4d")
    >>> with locked(path.name):  # doctest: +SKIP
    ...     if not path.exists():
    ...         pass  # quantize, then write through atomic_write(path)
    """
    import filelock

    path = cache_root() / "locks" / f"{_check_name(name)}.lock"
    _make_dir(path.parent)
    lock = _LOCKS.get(str(path))
    if lock is None:
        lock = _LOCKS.setdefault(str(path), filelock.FileLock(str(path)))
    first = 1.0 if timeout is None else min(1.0, max(timeout, 0.0))
    busy = _Busy(f"{name} is locked by another process (lock file {path}); waited {timeout} s. "
                      f"Wait for it to finish, or if no qcnn process is running, delete {path}.")
    try:
        try:
            lock.acquire(timeout=first)
        except filelock.Timeout:
            rest = None if timeout is None else timeout - first
            if rest is not None and rest <= 0:
                raise busy from None
            print(f"qcnn: waiting for another process working on {name} (lock {path})",
                  file=sys.stderr)
            lock.acquire(timeout=-1 if rest is None else rest)
    except filelock.Timeout:
        raise busy from None
    except CacheError:
        raise
    except OSError as e:
        raise _local_error(e, path, "create the lock file") from e
    try:
        yield path
    finally:
        lock.release()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + _SIDECAR)


def _read_sidecar(path: Path) -> dict | None:
    try:
        record = json.loads(_sidecar(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _write_sidecar(path: Path, algorithm: str, digest: str) -> None:
    st = path.stat()
    record = {"algorithm": algorithm, "hash": digest, "size": st.st_size,
              "mtime_ns": st.st_mtime_ns}
    # Losing the sidecar only costs a re-hash next time, so a failure to write it is not an error.
    with contextlib.suppress(OSError), atomic_write(_sidecar(path), "w") as f:
        json.dump(record, f)


def _sidecar_matches(path: Path, algorithm: str, expected: str, record: dict | None) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    return (record is not None and record.get("algorithm") == algorithm
            and record.get("hash") == expected and record.get("size") == st.st_size
            and record.get("mtime_ns") == st.st_mtime_ns)


def file_digest(path: Path, algorithm: str, hasher=None) -> str:
    """Hex digest of a file (or feed it into `hasher`, which is returned as its digest)."""
    h = hasher if hasher is not None else hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _remove(*paths: Path) -> None:
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _format_size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _format_time(seconds: float) -> str:
    s = int(seconds + 0.5)
    h, m, s = s // 3600, s // 60 % 60, s % 60
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class _Progress:
    """A one-line progress bar on stderr (bytes, percentage, rate, ETA); silent off a terminal."""

    def __init__(self, name: str, total: int | None, done: int, enabled: bool):
        self.stream = sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = bool(enabled and isatty is not None and isatty())
        self.name, self.total, self.start, self.done = name, total, done, done
        self.t0 = self.last = time.monotonic()
        self.width = 0

    def update(self, done: int) -> None:
        self.done = done
        now = time.monotonic()
        if self.enabled and now - self.last >= 0.2:
            self.last = now
            self._draw(now)

    def close(self) -> None:
        if self.enabled:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self, now: float) -> None:
        rate = (self.done - self.start) / max(now - self.t0, 1e-6)
        parts = [self.name]
        if self.total:
            parts += [f"{100 * self.done / self.total:3.0f}%",
                      f"{_format_size(self.done)}/{_format_size(self.total)}"]
        else:
            parts.append(_format_size(self.done))
        parts.append(f"{_format_size(rate)}/s")
        if self.total and rate > 0:
            parts.append(f"ETA {_format_time(max(self.total - self.done, 0) / rate)}")
        line = "  ".join(parts)
        self.width = max(self.width, len(line))
        self.stream.write("\r" + line.ljust(self.width))
        self.stream.flush()


class _Transient(Exception):
    """A failure worth retrying on the same URL (connection, timeout, 5xx, cut transfer)."""


class _URLFailed(Exception):
    """This URL will not give the file (404, hash mismatch, retries used up): try the next one."""


def _describe_connection_error(e: Exception) -> str:
    import requests

    text = str(e)
    if re.search(r"NameResolution|Name or service not known|getaddrinfo|nodename nor servname|"
                 r"Temporary failure in name resolution|No address associated", text):
        return "host name could not be resolved (no network, or DNS failure)"
    if "Connection refused" in text or "ConnectionRefused" in text:
        return "connection refused (no server there, or no network)"
    if isinstance(e, requests.Timeout):
        return "timed out"
    if "Network is unreachable" in text:
        return "network is unreachable (no network)"
    return f"connection failed ({text})"


def _transfer(session, url, part, name, algorithm, expected, size, progress, timeout) -> str:
    """One GET of `url` into `part` (resumed if it exists); returns the whole file's digest."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        _remove(part)
        offset = 0
    if size is not None and offset == size:
        # A finished transfer that was never renamed (killed at the wrong moment): check it.
        digest = file_digest(part, algorithm)
        if expected is None or digest == expected:
            return digest
        _remove(part)
        offset = 0
    import requests

    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        r = session.get(url, headers=headers, stream=True, timeout=timeout)
    except requests.exceptions.SSLError as e:
        raise _URLFailed(f"TLS/SSL error ({e}); check the system clock and certificates") from e
    except (requests.ConnectionError, requests.Timeout) as e:
        raise _Transient(_describe_connection_error(e)) from e
    except requests.RequestException as e:
        raise _URLFailed(f"request failed: {e}") from e
    with r:
        code = r.status_code
        hasher = hashlib.new(algorithm)
        if code == 206 and offset:
            m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", r.headers.get("Content-Range", ""))
            if not m or int(m[1]) != offset:
                _remove(part)
                raise _Transient(f"server answered the resume request with the wrong range "
                                 f"({r.headers.get('Content-Range')!r}); starting again")
            total = int(m[2]) if m[2] != "*" else size
            file_digest(part, algorithm, hasher)
            mode, resumed = "ab", True
        elif code == 200:
            # A server that ignores Range sends it all: restart cleanly.
            offset, mode, resumed = 0, "wb", False
            length = r.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else size
        elif code == 416:
            _remove(part)
            raise _Transient("server refused to resume (HTTP 416); starting again")
        elif code in (408, 429) or code >= 500:
            raise _Transient(f"HTTP {code} {r.reason}")
        elif code == 404:
            raise _URLFailed("HTTP 404 Not Found: the URL is wrong or the file has moved")
        else:
            raise _URLFailed(f"HTTP {code} {r.reason}")
        if size is not None and total is not None and total != size:
            raise _URLFailed(f"the server's file has {total} bytes, expected {size}: not the "
                             f"same file")
        try:
            f = open(part, mode)
        except OSError as e:
            raise _local_error(e, part, "write", DownloadError) from e
        bar = _Progress(name, total, offset, progress)
        done = offset
        try:
            with f:
                for chunk in r.iter_content(_NET_CHUNK):
                    f.write(chunk)
                    hasher.update(chunk)
                    done += len(chunk)
                    bar.update(done)
                f.flush()
                os.fsync(f.fileno())
        except (requests.RequestException, ConnectionError, TimeoutError) as e:
            raise _Transient(f"connection lost after {done} bytes ({type(e).__name__})") from e
        except OSError as e:
            _remove(part)  # a disk-full part is deleted to give the space back
            raise _local_error(e, part, "write", DownloadError) from e
        finally:
            bar.close()
    if total is not None and done < total:
        raise _Transient(f"connection closed after {done} of {total} bytes")
    if size is not None and done != size:
        _remove(part)
        raise _URLFailed(f"got {done} bytes, expected {size}; the bad file was deleted")
    digest = hasher.hexdigest()
    if expected is not None and digest != expected and resumed:
        # The kept part may be what was wrong (another server's bytes): once more from zero.
        _remove(part)
        return _transfer(session, url, part, name, algorithm, expected, size, progress, timeout)
    if expected is not None and digest != expected:
        _remove(part)
        raise _URLFailed(f"{algorithm} mismatch for {name}: expected {expected}, got {digest}; "
                         f"the bad file was deleted (the server changed the file, or something "
                         f"on the way corrupted it)")
    return digest


def _fetch_url(session, url, part, name, algorithm, expected, size, progress, retries, backoff,
               timeout) -> str:
    failures = 0
    best = part.stat().st_size if part.exists() else 0
    while True:
        try:
            return _transfer(session, url, part, name, algorithm, expected, size, progress,
                             timeout)
        except _Transient as e:
            now = part.stat().st_size if part.exists() else 0
            if now > best:  # a cut transfer that got further is not counted against the retries
                best = now
            else:
                failures += 1
                if failures > retries:
                    raise _URLFailed(f"{e} (gave up after {failures} attempts)") from e
            time.sleep(backoff * 2 ** max(failures - 1, 0))


def _verify_cached(target: Path, algorithm: str, expected: str | None, offline: bool,
                   urls: Sequence[str]) -> bool:
    """True if `target` holds the right file (hashing it once if needed); deletes a bad one."""
    if not target.exists():
        return False
    if expected is None:
        return True
    record = _read_sidecar(target)
    if _sidecar_matches(target, algorithm, expected, record):
        return True
    actual = file_digest(target, algorithm)
    if actual == expected:
        _write_sidecar(target, algorithm, actual)
        return True
    _remove(target, _sidecar(target))
    why = ("changed since it was verified" if record and record.get("hash") == expected
           else "not the expected file")
    msg = (f"the cached {target} is {why}: {algorithm} {actual}, expected {expected}. "
           f"It was deleted")
    if offline:
        raise DownloadError(f"{msg}, and offline mode is on so it cannot be downloaded again. "
                            f"Copy a good copy to {target}, pass one with `--weights FILE`, or "
                            f"unset QCNN_OFFLINE to download it from {urls[0]}.")
    warnings.warn(f"{msg}; downloading it again.", stacklevel=3)
    return False


def _expected_hash(sha256, sha1, unverified) -> tuple[str, str | None]:
    for algorithm, value in (("sha256", sha256), ("sha1", sha1)):
        if value is not None:
            value = str(value).strip().lower()
            if not re.fullmatch(f"[0-9a-f]{{{_HASH_LENGTHS[algorithm]}}}", value):
                raise ValueError(f"{algorithm} must be {_HASH_LENGTHS[algorithm]} hex digits, "
                                 f"got {value!r}")
            return algorithm, value
    if not unverified:
        raise ValueError("fetch needs sha256= or sha1= to verify the file; pass unverified=True "
                         "to accept whatever the server sends")
    return "sha256", None


def fetch(urls: str | Sequence[str], filename: str, sha256: str | None = None,
          sha1: str | None = None, size: int | None = None, progress: bool = True,
          offline: bool | None = None, mirror: str | None = None,
          session: requests.Session | None = None, *, unverified: bool = False,
          retries: int = 3, backoff: float = 1.0, timeout: float = 30.0) -> Path:
    """The path of `filename` in the cache, downloading and verifying it first if needed.

    A cached file whose hash was verified before (recorded in ``<file>.verified`` with its size and
    mtime) is returned without re-hashing. Otherwise, holding ``locked(filename)``, the file is
    streamed to ``<file>.part`` (resumed with a Range request after an interruption), its hash is
    checked, and it is renamed into place. URLs are tried in order, the mirror's first; each URL is
    retried with exponential back-off on connection errors, timeouts and HTTP 5xx (not on 404).

    Parameters
    ----------
    urls : str or sequence of str
        Where to download from, in order of preference.
    filename : str
        The cached file's name (in ``<root>/downloads``), also the name asked of a mirror.
    sha256, sha1 : str, optional
        Expected hex digest; sha256 is used when both are given. One is required.
    size : int, optional
        Expected size in bytes: checked early, and shown by the progress bar.
    progress : bool
        Show a progress bar on stderr when it is a terminal.
    offline : bool, optional
        Never touch the network; default: ``$QCNN_OFFLINE`` is 1/true/yes/on.
    mirror : str, optional
        Base URL tried first, as ``<mirror>/<filename>``; default ``$QCNN_MIRROR``.
    session : requests.Session, optional
        Reused for every request (not closed); a new one by default.
    unverified : bool
        Allow a download without any hash (the file is then trusted as sent).
    retries : int
        Extra attempts per URL after a transient failure (a cut transfer that got further is
        not counted).
    backoff : float
        First wait in seconds before a retry; doubled each time.
    timeout : float
        Seconds to wait for the connection and between received bytes.

    Returns
    -------
    Path
        The verified file in the cache.

    Raises
    ------
    DownloadError
        Every failure (no network, HTTP error, hash mismatch, disk full, permission denied, offline
        with the file missing); the message names the file or URL and what to do.
    ValueError
        Bad arguments: no hash without `unverified`, a malformed hash, a file name with folders.

    Examples
    --------
    >>> path = fetch("http://dl.caffe.berkeleyvision.org/bvlc_alexnet.caffemodel",
    ...              "bvlc_alexnet.caffemodel",
    ...              sha1="9116a64c0fbe4459d18f4bb6b56d647b63920377")  # doctest: +SKIP
    """
    urls = [urls] if isinstance(urls, str) else list(urls)
    _check_name(filename)
    algorithm, expected = _expected_hash(sha256, sha1, unverified)
    offline = _env_flag("QCNN_OFFLINE") if offline is None else bool(offline)
    mirror = os.environ.get("QCNN_MIRROR", "").strip() if mirror is None else mirror.strip()
    if mirror:
        first = f"{mirror.rstrip('/')}/{filename}"
        urls = [first] + [u for u in urls if u != first]
    if not urls:
        raise ValueError(f"fetch needs at least one URL (or a mirror) for {filename}")
    target = download_path(filename)

    if expected is None and target.exists():
        return target
    if _sidecar_matches(target, algorithm, expected, _read_sidecar(target)):
        return target
    try:
        if offline and not target.exists():
            what = f"{algorithm} {expected}" if expected else "no hash given"
            if size is not None:
                what += f", {size} bytes"
            raise DownloadError(
                f"{filename} is not in the cache and offline mode is on (QCNN_OFFLINE or "
                f"offline=True), so nothing was downloaded. Pass the file with `--weights FILE`, "
                f"or copy it to {target} ({what}), or unset QCNN_OFFLINE to download it from "
                f"{urls[0]}.")
        with locked(filename):
            if _verify_cached(target, algorithm, expected, offline, urls):
                return target
            if offline:  # another process deleted it while we waited for the lock
                raise DownloadError(f"{filename} vanished from {target} and offline mode is on: "
                                    f"copy it there, or pass it with `--weights FILE`.")
            _download(urls, target, algorithm, expected, size, progress, session, retries,
                      backoff, timeout)
            return target
    except DownloadError:
        raise
    except CacheError as e:
        raise DownloadError(str(e)) from e
    except OSError as e:  # reading a cached file failed (I/O error)
        raise _local_error(e, target, "read", DownloadError) from e


def _download(urls, target, algorithm, expected, size, progress, session, retries, backoff,
              timeout) -> None:
    _make_dir(target.parent)
    part = target.with_name(target.name + _PART)
    import requests

    own = session is None
    session = requests.Session() if own else session
    failures = []
    try:
        for url in urls:
            try:
                digest = _fetch_url(session, url, part, target.name, algorithm, expected, size,
                                    progress, retries, backoff, timeout)
            except _URLFailed as e:
                failures.append(f"{url}: {e}")
                continue
            _remove(_sidecar(target))
            try:
                os.replace(part, target)
            except OSError as e:
                raise _local_error(e, target, "move the download into", DownloadError) from e
            _fsync_dir(target.parent)
            _write_sidecar(target, algorithm, digest)
            return
    finally:
        if own:
            session.close()
    raise DownloadError(
        f"could not download {target.name}:\n" + "".join(f"  - {f}\n" for f in failures)
        + f"Check your network and the URL(s); set QCNN_MIRROR to a server holding {target.name}; "
        f"or get the file yourself and pass it with `--weights FILE` or copy it to {target}.")


def _lock_name(path: Path) -> str:
    """The lock that guards a cache file: that of its finished name."""
    name = path.name
    m = re.fullmatch(r"\.(.+)\.[0-9a-f]{8}\.tmp", name)
    if m:
        name = m[1]
    for suffix in (_PART, _SIDECAR):
        name = name.removesuffix(suffix)
    return name


def cache_info() -> list[CacheEntry]:
    """Every file in the cache: finished downloads, partial ones, and quantized models.

    Sidecars and lock files are not listed (they are tiny and follow their file).

    Examples
    --------
    >>> sum(e.size for e in cache_info() if e.kind == "model") >= 0
    True
    """
    entries = []
    root = cache_root()
    for kind, folder in _FOLDERS.items():
        d = root / folder
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
            if not p.is_file() or p.name.endswith(_SIDECAR):
                continue
            partial = p.name.endswith(_PART) or _lock_name(p) != p.name
            entries.append(CacheEntry(p, "partial" if partial else kind, p.stat().st_size))
    return entries


def clear(kind: str | None = None) -> list[Path]:
    """Delete cached files: downloads (`kind="download"`), models (`"model"`) or both (None).

    A file another process is using (its lock is held) is skipped with a warning. Clearing
    everything also deletes the lock files no one holds. Empty folders are removed afterwards, the
    root included.

    Returns
    -------
    list of Path
        The files deleted.

    Examples
    --------
    >>> removed = clear("model")  # doctest: +SKIP
    """
    if kind not in (None, *_FOLDERS):
        raise ValueError(f"kind must be None, 'download' or 'model', got {kind!r}")
    root = cache_root()
    removed = []
    for k, folder in _FOLDERS.items():
        d = root / folder
        if kind not in (None, k) or not d.is_dir():
            continue
        groups: dict[str, list[Path]] = {}
        for p in sorted(d.iterdir()):
            if p.is_file():
                groups.setdefault(_lock_name(p), []).append(p)
        for name, paths in groups.items():
            try:
                with locked(name, timeout=0):
                    for p in paths:
                        try:
                            p.unlink()
                        except FileNotFoundError:
                            continue
                        except OSError as e:
                            raise _local_error(e, p, "delete") from e
                        removed.append(p)
            except _Busy:
                warnings.warn(f"kept {name}: another process is using it", stacklevel=2)
    locks = root / "locks"
    if kind is None and locks.is_dir():
        # Lock files are deleted only while held, so no other process is using them right now.
        for p in sorted(locks.glob("*.lock")):
            with contextlib.suppress(_Busy), locked(p.name.removesuffix(".lock"), timeout=0):
                _remove(p)
    for d in (root / "downloads", root / "models", locks, root):
        with contextlib.suppress(OSError):
            d.rmdir()  # only succeeds when empty
    return removed
