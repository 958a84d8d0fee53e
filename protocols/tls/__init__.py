"""ferryman.protocols.tls: TLS support; for now the development PKI generator (``ferryman certs DIR``)."""

from .pki import CONTRACT_FILES, write_dev_pki

__all__ = ["CONTRACT_FILES", "write_dev_pki"]
