"""Thread counts: defaults, the environment variable, both pools set, nothing done at import."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qcnn import threads
from qcnn._jit import HAVE_NUMBA

ROOT = Path(__file__).resolve().parent.parent


def _fake_sysfs(tmp_path, freqs):
    for cpu, f in freqs.items():
        d = tmp_path / f"cpu{cpu}" / "cpufreq"
        d.mkdir(parents=True)
        (d / "cpuinfo_max_freq").write_text(f"{f}\n")
    return str(tmp_path)


def test_performance_cores_counts_prime_and_big_not_little(tmp_path, monkeypatch):
    monkeypatch.setattr(threads, "_usable_cpus", lambda: list(range(8)))
    big_little = {i: 1800000 for i in range(4)} | {4: 2400000, 5: 2400000, 6: 2400000,
                                                    7: 3000000}
    assert threads.performance_cores(_fake_sysfs(tmp_path / "a", big_little)) == 4
    two_big = {i: 1800000 for i in range(6)} | {6: 2800000, 7: 2800000}
    assert threads.performance_cores(_fake_sysfs(tmp_path / "b", two_big)) == 2
    same = {i: 2000000 for i in range(8)}
    assert threads.performance_cores(_fake_sysfs(tmp_path / "c", same)) is None
    partial = {i: 2000000 for i in range(3)}
    assert threads.performance_cores(_fake_sysfs(tmp_path / "d", partial)) is None


def test_default_num_threads_env_then_big_cores_then_capped_cpus(monkeypatch):
    monkeypatch.setenv(threads.ENV_VAR, "3")
    assert threads.default_num_threads() == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(threads.ENV_VAR, bad)
        with pytest.raises(ValueError, match="QCNN_NUM_THREADS"):
            threads.default_num_threads()
    monkeypatch.delenv(threads.ENV_VAR)
    monkeypatch.setattr(threads, "performance_cores", lambda: 4)
    assert threads.default_num_threads() == 4
    monkeypatch.setattr(threads, "performance_cores", lambda: None)
    monkeypatch.setattr(threads, "_usable_cpus", lambda: list(range(64)))
    assert threads.default_num_threads() == threads.MAX_DEFAULT_THREADS


def test_set_num_threads_rejects_bad_counts():
    for bad in (0, -2, 1.5):
        with pytest.raises(ValueError, match="whole number >= 1"):
            threads.set_num_threads(bad)


_SCRIPT = """
import ctypes, json, os, sys
import numpy as np
import numba
before = numba.get_num_threads()
import qcnn.threads as T, qcnn.kernels, qcnn.net  # noqa: F401
after_import = numba.get_num_threads()
applied = T.set_num_threads(int(sys.argv[1]))
blas = None
for line in open("/proc/self/maps"):
    path = line.split()[-1]
    if "openblas" in path.lower() and path.startswith("/"):
        lib = ctypes.CDLL(path)
        for name in ("openblas_get_num_threads", "openblas_get_num_threads64_",
                     "scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads"):
            if hasattr(lib, name):
                blas = getattr(lib, name)()
        break
again = T.configure()  # already configured: changes nothing
print(json.dumps({"before": before, "after_import": after_import, "applied": applied,
                  "numba": numba.get_num_threads(), "blas": blas, "again": again,
                  "omp": os.environ.get("OMP_WAIT_POLICY")}))
"""


@pytest.mark.skipif(not HAVE_NUMBA, reason="needs numba")
def test_set_num_threads_sets_numba_and_blas_and_import_changes_nothing():
    env = dict(os.environ, PYTHONPATH=str(ROOT), NUMBA_NUM_THREADS="2",
               OPENBLAS_NUM_THREADS="2")
    env.pop("OMP_WAIT_POLICY", None)
    run = subprocess.run([sys.executable, "-c", _SCRIPT, "1"], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr
    r = json.loads(run.stdout.strip().splitlines()[-1])
    assert r["before"] == r["after_import"] == 2  # importing qcnn set nothing
    assert r["applied"] == r["numba"] == r["again"] == 1
    assert r["blas"] in (None, 1)  # None: a BLAS other than OpenBLAS
    assert r["omp"] == "PASSIVE"
    env.pop("OMP_WAIT_POLICY", None)
    run = subprocess.run([sys.executable, "-c", _SCRIPT, "64"], capture_output=True, text=True,
                         env=dict(env, OMP_WAIT_POLICY="active"), cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr
    r = json.loads(run.stdout.strip().splitlines()[-1])
    assert r["applied"] == r["numba"] == 2  # capped by Numba's pool
    assert r["blas"] in (None, 1)  # BLAS stays at one thread while Numba runs the kernels
    assert r["omp"] == "active"  # the user's choice is kept


def test_configure_applies_the_default_once(monkeypatch):
    calls = []
    monkeypatch.setattr(threads, "_configured", False)
    monkeypatch.setattr(threads, "set_num_threads", lambda n, blas=None: calls.append(n) or n)
    monkeypatch.setattr(threads, "default_num_threads", lambda: 5)
    assert threads.configure() == 5 and calls == [5]
    assert threads.configure(2) == 2 and calls == [5, 2]
    monkeypatch.setattr(threads, "_configured", True)
    threads.configure()
    assert calls == [5, 2]
