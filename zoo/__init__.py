"""Built-in zoo entries, shipped as ``qcnn._zoo``: one module per entry, each defining ``ENTRY``.

Modules are imported by ``qcnn.zoo`` on the first registry look-up, never at ``import qcnn``.
"""
