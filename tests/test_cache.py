"""qcnn.cache against a local HTTP server on 127.0.0.1 (never the internet)."""

import errno
import hashlib
import io
import json
import multiprocessing
import os
import socket
import threading
import time
from pathlib import Path

import platformdirs
import pytest

from qcnn import cache
from qcnn.cache import CacheError, DownloadError

DATA = os.urandom(300_000)
SHA256 = hashlib.sha256(DATA).hexdigest()
SHA1 = hashlib.sha1(DATA).hexdigest()
FAST = {"retries": 2, "backoff": 0.01, "progress": False}


from local_server import Server  # noqa: E402


@pytest.fixture
def server():
    s = Server()
    s.files["/w/model.bin"] = DATA
    yield s
    s.close()


@pytest.fixture
def home(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("QCNN_HOME", str(root))
    monkeypatch.delenv("QCNN_OFFLINE", raising=False)
    monkeypatch.delenv("QCNN_MIRROR", raising=False)
    return root


def closed_port_url(path="/w/model.bin"):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}{path}"


def leftovers(root):
    return sorted(p.name for p in (root / "downloads").iterdir()) if root.exists() else []


def test_cache_root_resolution_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("QCNN_HOME", str(tmp_path / "c"))
    assert cache.cache_root() == tmp_path / "c"
    assert cache.download_path("a.bin") == tmp_path / "c" / "downloads" / "a.bin"
    assert cache.model_path("alexnet", "abc") == tmp_path / "c" / "models" / "alexnet-abc.qcnn"
    assert not (tmp_path / "c").exists()
    monkeypatch.delenv("QCNN_HOME")
    assert cache.cache_root() == Path(platformdirs.user_cache_dir("qcnn", appauthor=False))


def test_download_verifies_and_remembers(server, home, monkeypatch):
    p = cache.fetch(server.url("/w/model.bin"), "model.bin", sha256=SHA256, **FAST)
    assert p == home / "downloads" / "model.bin"
    assert p.read_bytes() == DATA
    record = json.loads((home / "downloads" / "model.bin.verified").read_text())
    assert record["hash"] == SHA256 and record["size"] == len(DATA)
    assert leftovers(home) == ["model.bin", "model.bin.verified"]

    # The second call trusts the sidecar: no request, no re-hash.
    def no_hash(*a, **k):
        raise AssertionError("re-hashed a verified file")

    monkeypatch.setattr(cache, "file_digest", no_hash)
    assert cache.fetch(server.url("/w/model.bin"), "model.bin", sha256=SHA256, **FAST) == p
    assert len(server.log) == 1


def test_sha1_only(server, home):
    p = cache.fetch(server.url("/w/model.bin"), "model.bin", sha1=SHA1.upper(), **FAST)
    assert hashlib.sha1(p.read_bytes()).hexdigest() == SHA1


def test_interrupted_transfer_resumes_with_range(server, home):
    server.plan["/w/model.bin"] = ["cut"]
    p = cache.fetch(server.url("/w/model.bin"), "model.bin", sha256=SHA256, **FAST)
    assert p.read_bytes() == DATA
    assert len(server.log) == 2
    assert server.log[0][1] is None
    resumed_at = int(server.log[1][1].removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_at <= len(DATA) // 2
    assert server.sent < 2 * len(DATA)
    assert not (home / "downloads" / "model.bin.part").exists()


def test_server_ignoring_range_restarts_cleanly(server, home):
    server.plan["/w/model.bin"] = ["cut", "norange"]
    p = cache.fetch(server.url("/w/model.bin"), "model.bin", sha256=SHA256, **FAST)
    assert server.log[1][1] is not None  # asked for a range, got the whole file
    assert p.read_bytes() == DATA


def test_stale_part_from_other_file_is_not_trusted(server, home):
    d = home / "downloads"
    d.mkdir(parents=True)
    (d / "model.bin.part").write_bytes(b"garbage" * 1000)
    # Resuming on garbage gives a wrong hash: the part is dropped and the file fetched from zero.
    p = cache.fetch(server.url("/w/model.bin"), "model.bin", sha256=SHA256, **FAST)
    assert p.read_bytes() == DATA
    assert server.log == [("/w/model.bin", "bytes=7000-"), ("/w/model.bin", None)]


def test_ctrl_c_keeps_only_the_part_and_the_next_run_resumes(server, home, monkeypatch):
    calls = []

    def interrupt(self, done):
        calls.append(done)
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(cache._Progress, "update", interrupt)
        with pytest.raises(KeyboardInterrupt):
            cache.fetch(server.url("/w/model.bin"), "model.bin", sha256=SHA256, **FAST)
    assert leftovers(home) == ["model.bin.part"]  # never trusted: no final name, no sidecar
    p = cache.fetch(server.url("/w/model.bin"), "model.bin", sha256=SHA256, **FAST)
    assert p.read_bytes() == DATA
    assert server.log[1][1] == f"bytes={calls[0]}-"


def test_404_names_the_url_and_is_not_retried(server, home):
    url = server.url("/w/missing.bin")
    with pytest.raises(DownloadError, match="404") as e:
        cache.fetch(url, "missing.bin", sha256=SHA256, **FAST)
    assert url in str(e.value)
    assert len(server.log) == 1
    assert not (home / "downloads" / "missing.bin").exists()


def test_wrong_bytes_fail_the_hash_and_leave_nothing(server, home):
    server.plan["/w/model.bin"] = ["wrong"]
    bad = hashlib.sha256(bytes(b ^ 0xFF for b in DATA)).hexdigest()
    with pytest.raises(DownloadError) as e:
        cache.fetch(server.url("/w/model.bin"), "model.bin", sha256=SHA256, **FAST)
    msg = str(e.value)
    assert "model.bin" in msg and SHA256 in msg and bad in msg
    assert leftovers(home) == []  # no file, no part, no sidecar a later run could trust


def test_retry_after_500(server, home):
    server.plan["/w/model.bin"] = ["500", "500"]
    p = cache.fetch(server.url("/w/model.bin"), "model.bin", sha256=SHA256, **FAST)
    assert p.read_bytes() == DATA
    assert len(server.log) == 3


def test_retries_run_out(server, home):
    server.plan["/w/model.bin"] = ["500"] * 10
    t = time.monotonic()
    with pytest.raises(DownloadError, match="500"):
        cache.fetch(server.url("/w/model.bin"), "model.bin", sha256=SHA256, retries=2,
                    backoff=0.05, progress=False)
    assert len(server.log) == 3
    assert time.monotonic() - t >= 0.05 + 0.1  # back-off doubled: 0.05 then 0.1


def test_fallback_url(server, home):
    p = cache.fetch([server.url("/w/gone.bin"), server.url("/w/model.bin")], "model.bin",
                    sha256=SHA256, **FAST)
    assert p.read_bytes() == DATA
    assert server.paths() == ["/w/gone.bin", "/w/model.bin"]


def test_mirror_is_tried_first(server, home, monkeypatch):
    server.files["/mirror/model.bin"] = DATA
    monkeypatch.setenv("QCNN_MIRROR", server.url("/mirror/"))
    p = cache.fetch(closed_port_url(), "model.bin", sha256=SHA256, **FAST)
    assert p.read_bytes() == DATA
    assert server.paths() == ["/mirror/model.bin"]


def test_mirror_argument_and_fallback_after_a_bad_mirror(server, home, monkeypatch):
    monkeypatch.setenv("QCNN_MIRROR", closed_port_url("/"))
    p = cache.fetch(server.url("/w/model.bin"), "model.bin", sha256=SHA256,
                    mirror=server.url("/empty"), **FAST)
    assert p.read_bytes() == DATA
    assert server.paths() == ["/empty/model.bin", "/w/model.bin"]


def test_offline_raises_without_any_request(server, home, monkeypatch):
    monkeypatch.setenv("QCNN_OFFLINE", "1")
    with pytest.raises(DownloadError) as e:
        cache.fetch(server.url("/w/model.bin"), "model.bin", sha256=SHA256, **FAST)
    msg = str(e.value)
    assert "model.bin" in msg and "--weights" in msg
    assert str(home / "downloads" / "model.bin") in msg
    assert server.log == []
    assert not home.exists()


def test_offline_accepts_a_copied_file(server, home):
    target = cache.download_path("model.bin")
    target.parent.mkdir(parents=True)
    target.write_bytes(DATA)
    assert cache.fetch(server.url("/w/model.bin"), "model.bin", sha256=SHA256, offline=True,
                       **FAST) == target
    assert server.log == []
    assert json.loads(target.with_name("model.bin.verified").read_text())["hash"] == SHA256


def test_no_network(home):
    url = closed_port_url()
    with pytest.raises(DownloadError) as e:
        cache.fetch(url, "model.bin", sha256=SHA256, retries=1, backoff=0.01, progress=False)
    msg = str(e.value)
    assert url in msg and "connection refused" in msg and "QCNN_MIRROR" in msg


def test_corrupt_cached_file_is_downloaded_again(server, home):
    p = cache.fetch(server.url("/w/model.bin"), "model.bin", sha256=SHA256, **FAST)
    p.write_bytes(DATA[:-1] + b"x")
    with pytest.warns(UserWarning, match="changed since it was verified"):
        p2 = cache.fetch(server.url("/w/model.bin"), "model.bin", sha256=SHA256, **FAST)
    assert p2.read_bytes() == DATA
    assert len(server.log) == 2


def test_corrupt_cached_file_offline(server, home):
    p = cache.fetch(server.url("/w/model.bin"), "model.bin", sha256=SHA256, **FAST)
    p.write_bytes(b"x" * 10)
    with pytest.raises(DownloadError, match="changed since it was verified") as e:
        cache.fetch(server.url("/w/model.bin"), "model.bin", sha256=SHA256, offline=True, **FAST)
    assert str(p) in str(e.value)
    assert not p.exists()
    assert len(server.log) == 1


def test_size_mismatch(server, home):
    with pytest.raises(DownloadError, match="expected 12"):
        cache.fetch(server.url("/w/model.bin"), "model.bin", sha256=SHA256, size=12, **FAST)
    assert leftovers(home) == []


def test_permission_denied_suggests_qcnn_home(server, home, monkeypatch):
    def deny(self, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", deny)
    with pytest.raises(DownloadError, match="permission denied") as e:
        cache.fetch(server.url("/w/model.bin"), "model.bin", sha256=SHA256, **FAST)
    assert "QCNN_HOME" in str(e.value)
    assert server.log == []


def test_cache_root_under_a_file(server, tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("QCNN_HOME", str(tmp_path / "afile" / "cache"))
    with pytest.raises(DownloadError, match="QCNN_HOME"):
        cache.fetch(server.url("/w/model.bin"), "model.bin", sha256=SHA256, **FAST)


def test_disk_full(server, home, monkeypatch):
    class Full(io.FileIO):
        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache, "open", lambda path, mode="r", **k: Full(path, mode),
                        raising=False)
    with pytest.raises(DownloadError, match="disk full") as e:
        cache.fetch(server.url("/w/model.bin"), "model.bin", sha256=SHA256, **FAST)
    assert "QCNN_HOME" in str(e.value)
    assert leftovers(home) == []
    assert len(server.log) == 1  # not retried


def test_a_hash_is_required_unless_unverified(server, home):
    with pytest.raises(ValueError, match="unverified=True"):
        cache.fetch(server.url("/w/model.bin"), "model.bin", **FAST)
    with pytest.raises(ValueError, match="64 hex digits"):
        cache.fetch(server.url("/w/model.bin"), "model.bin", sha256="abc", **FAST)
    with pytest.raises(ValueError, match="plain file name"):
        cache.fetch(server.url("/w/model.bin"), "../model.bin", sha256=SHA256, **FAST)
    p = cache.fetch(server.url("/w/model.bin"), "model.bin", unverified=True, **FAST)
    assert p.read_bytes() == DATA


def _fetch_in_child(home, url, sha256, barrier, results):
    os.environ["QCNN_HOME"] = home
    from qcnn import cache as c

    barrier.wait(timeout=60)
    results.put(str(c.fetch(url, "model.bin", sha256=sha256, progress=False, retries=0)))


def test_two_processes_download_once(server, home):
    server.plan["/w/model.bin"] = ["slow"]  # 0.5 s of transfer: the other process must wait
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_fetch_in_child,
                         args=(str(home), server.url("/w/model.bin"), SHA256, barrier, results))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    paths = {results.get(timeout=5) for _ in range(2)}
    assert paths == {str(home / "downloads" / "model.bin")}
    assert server.paths() == ["/w/model.bin"]
    assert (home / "downloads" / "model.bin").read_bytes() == DATA


def test_locked_excludes_others_and_is_reentrant(home):
    held, release = threading.Event(), threading.Event()

    def hold():
        with cache.locked("m.qcnn"):
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    assert held.wait(10)
    try:
        with pytest.raises(CacheError, match="locked by another process"):
            with cache.locked("m.qcnn", timeout=0.1):
                pass
    finally:
        release.set()
        t.join()
    with cache.locked("m.qcnn", timeout=1), cache.locked("m.qcnn", timeout=0):
        pass


def test_atomic_write(tmp_path):
    p = tmp_path / "sub" / "f.bin"
    with cache.atomic_write(p) as f:
        f.write(b"one")
        assert not p.exists()
    assert p.read_bytes() == b"one"
    for exc in (ValueError, KeyboardInterrupt):
        with pytest.raises(exc):
            with cache.atomic_write(p) as f:
                f.write(b"two")
                raise exc()
        assert p.read_bytes() == b"one"
        assert sorted(x.name for x in p.parent.iterdir()) == ["f.bin"]
    with cache.atomic_write(p) as f:  # writers that want a path
        f.close()
        Path(f.name).write_bytes(b"three")
    assert p.read_bytes() == b"three"
    assert sorted(x.name for x in p.parent.iterdir()) == ["f.bin"]


def test_cache_info_and_clear(server, home):
    assert cache.cache_info() == [] and cache.clear() == []
    cache.fetch(server.url("/w/model.bin"), "model.bin", sha256=SHA256, **FAST)
    with cache.atomic_write(cache.model_path("alexnet", "abc")) as f:
        f.write(b"q" * 10)
    (home / "downloads" / "other.bin.part").write_bytes(b"p" * 5)
    info = {(e.path.name, e.kind, e.size) for e in cache.cache_info()}
    assert info == {("model.bin", "download", len(DATA)), ("other.bin.part", "partial", 5),
                    ("alexnet-abc.qcnn", "model", 10)}
    removed = cache.clear("model")
    assert [p.name for p in removed] == ["alexnet-abc.qcnn"]
    assert not (home / "models").exists()
    assert (home / "downloads" / "model.bin").exists()
    removed = cache.clear()
    assert {p.name for p in removed} == {"model.bin", "model.bin.verified", "other.bin.part"}
    assert not home.exists()


def test_progress_bar_only_on_a_terminal(server, home, monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    monkeypatch.setattr("sys.stderr", tty)
    cache.fetch(server.url("/w/model.bin"), "model.bin", sha256=SHA256, retries=0)
    out = tty.getvalue()
    assert "model.bin" in out and "100%" in out and "/s" in out and "ETA" in out
    assert "300.0 kB/300.0 kB" in out

    pipe = io.StringIO()
    monkeypatch.setattr("sys.stderr", pipe)
    cache.clear()
    cache.fetch(server.url("/w/model.bin"), "model.bin", sha256=SHA256, retries=0)
    assert pipe.getvalue() == ""
