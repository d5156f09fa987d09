"""The service's security settings made live: the token file, the TLS certificates, and the
listening port (TLS or plaintext); all of it re-read on SIGHUP."""

import logging
from dataclasses import dataclass

import grpc

from service.api.auth import Authentication, TokenFileError, Tokens
from service.api.tls import ServerCertificates, TlsError
from service.config import Settings
from service.flags import LOOPBACK

log = logging.getLogger(__name__)


class SecurityError(RuntimeError):
    pass


@dataclass
class Security:
    tokens: Tokens | None
    certificates: ServerCertificates | None

    @classmethod
    def load(cls, settings: Settings) -> "Security":
        options = settings.security
        try:
            tokens = Tokens(options.auth_tokens) if options.auth_tokens else None
            certificates = (
                ServerCertificates(options.tls_cert, options.tls_key, options.tls_client_ca or None)
                if options.tls_cert
                else None
            )
        except (TokenFileError, TlsError) as error:
            raise SecurityError(str(error)) from None
        if settings.server.host not in LOOPBACK and tokens is None:
            log.warning(
                "INSECURE: listening on %s without --auth-tokens: anyone who reaches the port can read and delete "
                "every record (--insecure)",
                settings.server.host,
            )
        return cls(tokens, certificates)

    def interceptor(self) -> grpc.aio.ServerInterceptor | None:
        return Authentication(self.tokens) if self.tokens else None

    def add_port(self, server: grpc.aio.Server, address: str) -> int:
        if self.certificates:
            return server.add_secure_port(address, self.certificates.credentials())
        return server.add_insecure_port(address)

    def describe(self) -> str:
        tls = "plaintext"
        if self.certificates:
            tls = "mutual TLS" if self.certificates.client_ca else "TLS"
        auth = f"{len(self.tokens.callers)} tokens" if self.tokens else "no auth"
        return f"{tls}, {auth}"

    def reload(self) -> None:
        """SIGHUP: read the token file and the certificates again."""
        if self.tokens:
            self.tokens.reload()
        if self.certificates:
            self.certificates.reload()
