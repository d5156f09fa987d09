"""Server TLS (and mutual TLS) with certificates read again on SIGHUP, without a restart.

gRPC asks `fetch` for a new configuration at each handshake; it gets one after reload() has read
the files again (a file that cannot be read keeps the certificates in use), else None (keep).
"""

import logging
import ssl
from pathlib import Path

import grpc

log = logging.getLogger(__name__)


class TlsError(ValueError):
    pass


class ServerCertificates:
    def __init__(self, cert: Path, key: Path, client_ca: Path | None):
        self.cert, self.key, self.client_ca = Path(cert), Path(key), Path(client_ca) if client_ca else None
        self.initial = self._configuration()
        self._pending: grpc.ServerCertificateConfiguration | None = None

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        try:
            key, chain = self.key.read_bytes(), self.cert.read_bytes()
            roots = self.client_ca.read_bytes() if self.client_ca else None
        except OSError as error:
            raise TlsError(f"cannot read {error.filename}: {error.strerror}") from None
        if b"PRIVATE KEY" not in key or b"CERTIFICATE" not in chain:
            raise TlsError(f"{self.key} and {self.cert} must be a PEM private key and a PEM certificate chain")
        checked = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # what gRPC would refuse later, found now
        try:
            checked.load_cert_chain(self.cert, self.key, password=lambda: b"")  # gRPC takes no passphrase either
            if roots:
                checked.load_verify_locations(cadata=roots.decode(errors="replace"))
        except (ssl.SSLError, ValueError) as error:
            raise TlsError(f"{self.cert}, {self.key} or {self.client_ca}: {error}") from None
        return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=roots)

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self.initial, self._fetch, require_client_authentication=self.client_ca is not None
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        pending, self._pending = self._pending, None
        return pending

    def reload(self) -> None:
        try:
            self._pending = self._configuration()
        except TlsError as error:
            log.error("TLS certificates not reloaded, the previous ones stay in use: %s", error)
            return
        log.info("TLS certificates reloaded from %s", self.cert)
