"""``python -m qcnn``: the same as the ``qcnn`` command."""

from .cli import run

if __name__ == "__main__":
    run()
