"""An example ferryman listener plug-in: ``echo``, a line-based TCP protocol.

A client connects and gets the ``greeting`` line; when the listener has a ``token``, the client's first
line must be that token (else ``ERR bad token`` and the connection closes); then every line it sends comes
back. A line longer than ``max_line`` bytes gets ``ERR line too long`` and the connection closes.

Settings (``[[listener]]`` with ``protocol = "echo"``): the common keys ``name``, ``address`` (no
``target``: the kind names no target schemes), the shared key ``max_connections``, and its own keys
``greeting``, ``max_line`` and ``token`` (a secret: masked by ``ferryman check --print``), declared in
``KIND`` below and checked by ``ferryman check`` like every other key.
"""

from .kind import KIND
from .listener import EchoListener

__all__ = ["KIND", "EchoListener"]
