"""ferryman_devtools: developer tooling shipped beside the gateway, not part of its runtime.

- ``pki``: the development PKI of ``ferryman certs DIR`` (a CA, server and client leaves, a CRL,
  ``issued.json``);
- ``pki_extra``: a root -> intermediate -> client chain (``ferryman certs --chain``), more clients, revoking;
- ``responder``: the OCSP responder and CRL server of ``ferryman responder DIR``, with fault knobs for tests;
- ``echo``: the HTTP echo target of ``ferryman http-echo``.

The runtime packages (``ferryman.config``, ``.actors``, ``.protocols``, ``.bridge``) never import this package
(tests/unit/test_layering.py checks); ``ferryman/cli.py`` imports it inside the commands above only. It may
import the runtime (the responder reuses ``ferryman.protocols.tls.chain``).
"""

from .pki import CONTRACT_FILES, write_dev_pki

__all__ = ["CONTRACT_FILES", "write_dev_pki"]
