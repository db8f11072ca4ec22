"""Class label lists: the network's output index -> (class id, human-readable name).

Built-in lists live in ``qcnn/data/<name>.txt``, one ``<id> <name>`` line per class, in output
order. ``imagenet1k`` is the 1000 ILSVRC-2012 classes in the standard sorted-wnid order (Caffe,
torchvision).
"""

from __future__ import annotations

import functools
import os
import re
from importlib import resources
from pathlib import Path

__all__ = ["load_labels"]

_LIST_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")


def load_labels(name: str | os.PathLike = "imagenet1k") -> list[tuple[str, str]]:
    """The label list ``name``: a built-in list, or the path of a text file.

    Parameters
    ----------
    name : str or path
        ``"imagenet1k"`` (built-in) or a UTF-8 text file with one ``<id> <name>`` line per class,
        in output order (the format of Caffe's ``synset_words.txt``).

    Returns
    -------
    list of (str, str)
        ``(id, name)`` per output index; the name is the full synonym list, e.g.
        ``"tench, Tinca tinca"`` (its first comma-separated item is the common name).

    Examples
    --------
    >>> labels = load_labels("imagenet1k")
    >>> len(labels), labels[0]
    (1000, ('n01440764', 'tench, Tinca tinca'))
    """
    name = os.fspath(name)
    if _LIST_NAME.fullmatch(name):
        return list(_builtin(name))
    try:
        text = Path(name).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"label file not found: {name}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"label file {name} is not UTF-8 text: {e}") from None
    return list(_parse(text, name))


@functools.lru_cache(maxsize=4)
def _builtin(name: str) -> tuple[tuple[str, str], ...]:
    res = resources.files("qcnn") / "data" / f"{name}.txt"
    if not res.is_file():
        known = sorted(p.name[:-4] for p in (resources.files("qcnn") / "data").iterdir()
                       if p.name.endswith(".txt"))
        raise ValueError(f"unknown label list {name!r}; built-in: {known}, or give the path "
                         "of a text file with one '<id> <name>' line per class")
    return _parse(res.read_text(encoding="utf-8"), f"built-in label list {name!r}")


def _parse(text: str, where: str) -> tuple[tuple[str, str], ...]:
    rows, seen = [], {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2:
            raise ValueError(f"{where}, line {lineno}: expected '<id> <name>', got {line!r}")
        if parts[0] in seen:
            raise ValueError(f"{where}, line {lineno}: class id {parts[0]!r} repeats line "
                             f"{seen[parts[0]]}")
        seen[parts[0]] = lineno
        rows.append((parts[0], parts[1]))
    if not rows:
        raise ValueError(f"{where} holds no labels")
    return tuple(rows)
