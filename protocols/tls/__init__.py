"""ferryman.protocols.tls: TLS termination (``server``, session tickets and their key rotation in
``tickets``), TLS dialing (``client``) and the revocation checks (``revocation``: OCSP and CRL). The
development PKI and OCSP responder are developer tooling, in the ``ferryman_devtools`` package
(``ferryman certs DIR``, ``ferryman responder DIR``)."""
