"""The `qcnn` command: help everywhere, results on stdout, errors on stderr, documented exit codes."""

import json
import os
import subprocess
import sys

import pytest

from qcnn.cli import EXIT, main

COMMANDS = ["classify", "models", "fetch", "quantize", "eval", "bench", "cache"]


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "qcnn.cli", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=120)


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_everywhere(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"] if command else ["--help"])
    assert e.value.code == 0
    assert "usage: qcnn" in capsys.readouterr().out


def test_models_lists_the_zoo_as_text_and_json(capsys):
    assert main(["models", "--json"]) == 0
    names = {m["name"] for m in json.loads(capsys.readouterr().out)}
    assert {"alexnet", "cnn-s", "vgg16", "squeezenet1_1", "alexnet-torchvision", "vgg16-torchvision"} <= names
    assert main(["models"]) == 0
    assert "alexnet" in capsys.readouterr().out


def test_cache_shows_and_clears(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("QCNN_HOME", str(tmp_path / "c"))
    (tmp_path / "c" / "models").mkdir(parents=True)
    (tmp_path / "c" / "models" / "x-123.qcnn").write_bytes(b"0" * 2048)
    assert main(["cache", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["root"] == str(tmp_path / "c") and info["files"][0]["bytes"] == 2048
    assert main(["cache", "--clear", "models"]) == 0
    assert "removed 1 files" in capsys.readouterr().out
    assert not (tmp_path / "c" / "models" / "x-123.qcnn").exists()


def test_usage_error_exits_2():
    r = run("classify")
    assert r.returncode == EXIT["usage"] == 2 and "IMAGE" in r.stderr and r.stdout == ""


def test_unknown_model_is_an_input_error(tmp_path):
    img = tmp_path / "x.png"
    img.write_bytes(b"")
    r = run("classify", img, "--model", "no-such-model", env={"QCNN_HOME": str(tmp_path / "c")})
    assert r.returncode == EXIT["input"] and "no-such-model" in r.stderr and "Traceback" not in r.stderr


def test_missing_weights_file_is_an_input_error(tmp_path):
    r = run("classify", tmp_path / "x.jpg", "--model", "squeezenet1_1", "--weights", tmp_path / "nope.pth",
            env={"QCNN_HOME": str(tmp_path / "c")})
    assert r.returncode == EXIT["input"] and "nope.pth" in r.stderr and "Traceback" not in r.stderr


def test_offline_fetch_is_a_download_error(tmp_path):
    r = run("fetch", "alexnet", env={"QCNN_HOME": str(tmp_path / "c"), "QCNN_OFFLINE": "1"})
    assert r.returncode == EXIT["download"] and "bvlc_alexnet.caffemodel" in r.stderr


def test_the_program_exits_with_main_codes_and_quietly_when_the_reader_stops(tmp_path):
    """`python -m qcnn.cli` runs cli.run(): main's exit code, no interpreter teardown, and a reader
    that closes the pipe early (`qcnn models | head -1`) is not an error."""
    r = run("classify", tmp_path / "missing.jpg", "--model", tmp_path / "missing.json")
    assert r.returncode == EXIT["input"] and "Traceback" not in r.stderr
    p = subprocess.Popen([sys.executable, "-m", "qcnn.cli", "models"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=dict(os.environ))
    p.stdout.close()  # before the program prints anything: its write or flush fails with EPIPE
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == EXIT["ok"], err
    assert "Traceback" not in err and "BrokenPipe" not in err
