"""Platform assumptions behind the ARM / Termux support (docs/arm.md).

- The whole package works without Numba (Termux without numba): every module imports, the first
  kernel call warns once.
- File bytes do not depend on the byte order of the arrays handed in (the format is little-endian).
- No module pins an x86 CPU for Numba or names x86-only instructions.

The same tests run natively and, through ``.ci/arm64``, on emulated aarch64 with and without Numba.
"""

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from qcnn import qfile

ROOT = Path(__file__).resolve().parent.parent


def test_every_module_imports_without_numba():
    # As on a phone without numba: `import numba` fails, every qcnn module must still import, the
    # user sees exactly one NumbaMissingWarning, and a quantized layer still computes.
    code = textwrap.dedent("""
        import importlib, json, pkgutil, sys, warnings
        sys.modules["numba"] = None  # as if numba were not installed
        warnings.simplefilter("always")
        with warnings.catch_warnings(record=True) as caught:
            import qcnn
            pkgs = [qcnn]
            try:  # the built-in zoo entries: there when installed, not from a bare checkout
                import qcnn._zoo
                pkgs.append(qcnn._zoo)
            except ModuleNotFoundError:
                pass
            names = sorted({m.name for pkg in pkgs
                            for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")})
            for name in names:
                importlib.import_module(name)
            at_import = len(caught)  # nothing warns before a kernel runs
            import numpy as np
            from qcnn import _jit, layers, qlayers
            rng = np.random.default_rng(0)
            q = qlayers.QConv2d(rng.standard_normal((3, 4, 2), np.float32),
                                rng.integers(0, 4, (5, 3, 3, 3), dtype=np.uint8), None,
                                in_channels=6, stride=2, padding=1)
            x = rng.standard_normal((2, 6, 7, 7)).astype(np.float32)
            ref = layers.Conv2d(q.weight(), None, stride=2, padding=1)(x)
            y = q(x)
        print(json.dumps({
            "modules": names, "have_numba": _jit.HAVE_NUMBA,
            "numba_loaded": sys.modules.get("numba") is not None,
            "warnings": [f"{w.category.__name__}: {w.message}" for w in caught
                         if w.category.__name__ == "NumbaMissingWarning"],
            "at_import": at_import,
            "max_err": float(np.max(np.abs(y - ref))), "scale": float(np.max(np.abs(ref)))}))
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert "qcnn.kernels" in info["modules"] and "qcnn.cli" in info["modules"]
    assert info["have_numba"] is False and info["numba_loaded"] is False
    assert len(info["warnings"]) == 1 and info["at_import"] == 0, info
    assert info["max_err"] <= 1e-5 * max(1.0, info["scale"])


def _raw_tensors(path: Path) -> dict[str, tuple[str, bytes]]:
    """Parse a safetensors-layout file by hand: name -> (dtype name, the tensor's bytes)."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    return {k: (v["dtype"], data[v["data_offsets"][0]:v["data_offsets"][1]])
            for k, v in header.items() if k != "__metadata__"}


def test_file_bytes_do_not_depend_on_byte_order(tmp_path):
    # Arrays of either byte order (a big-endian array may come from a foreign file) must be stored
    # little-endian, so a file written on one machine reads the same on any other.
    rng = np.random.default_rng(1)
    values = {"a.weight": rng.standard_normal((3, 5)).astype(np.float32),
              "a.bias": rng.standard_normal(4).astype(np.float16),
              "b.index": rng.integers(-(2**40), 2**40, 6)}
    for order in "<>":
        tensors = {k: v.astype(v.dtype.newbyteorder(order)) for k, v in values.items()}
        f = tmp_path / f"t{'le' if order == '<' else 'be'}.qcnn"
        qfile.write_tensors(f, tensors)
        raw = _raw_tensors(f)
        for k, v in values.items():
            assert raw[k][1] == v.astype(v.dtype.newbyteorder("<")).tobytes(), (order, k)
        back, _ = qfile.read_tensors(f)
        for k, v in values.items():
            assert back[k].dtype.byteorder in "<=|" and np.array_equal(back[k], v), (order, k)


# Settings that would tie Numba's code to an x86 CPU, and names of x86-only instructions.
_CPU_SPECIFIC = ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", "CPU_NAME", "CPU_FEATURES", "skylake",
                 "haswell", "znver", "x86-64", "avx", "sse4", "immintrin", "_mm_", "__m128",
                 "__m256")


def _code_strings_and_names(tree: ast.AST):
    """String constants (docstrings excluded), names and attribute names in a module's code."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) not in docstrings:
                yield node.lineno, node.value
        elif isinstance(node, ast.Name):
            yield node.lineno, node.id
        elif isinstance(node, ast.Attribute):
            yield node.lineno, node.attr


def test_no_module_pins_an_x86_cpu():
    # A phone's Numba compiles for the phone's CPU: no module may set a CPU name or features for
    # Numba, nor rely on x86 instruction names (comments and docstrings may mention them).
    files = sorted((ROOT / "qcnn").rglob("*.py")) + sorted((ROOT / "zoo").rglob("*.py"))
    assert len(files) > 5
    found = []
    for f in files:
        for line, text in _code_strings_and_names(ast.parse(f.read_text(), str(f))):
            found += [f"{f.relative_to(ROOT)}:{line}: {text!r}" for word in _CPU_SPECIFIC
                      if word.lower() in text.lower()]
    assert not found, "CPU-specific settings in the code:\n" + "\n".join(found)
