"""TLS to Docker engine endpoints: a CA to trust and a client certificate to show.

One client identity for every ``tcp://`` endpoint the server talks to (a swarm's manager and
its nodes, or the one Docker engine), laid out as Docker's own ``DOCKER_CERT_PATH``: a folder
holding ``ca.pem``, ``cert.pem`` and ``key.pem``. The node side is ``dockerd --tlsverify
--tlscacert ca.pem --tlscert server-cert.pem --tlskey server-key.pem -H tcp://ADDR:2376``
(Docker's "Protect the Docker daemon socket"): each side proves itself to the other.
"""

from __future__ import annotations

import dataclasses
import ssl
from pathlib import Path

import docker
import docker.tls
import requests

from hgrun.errors import InputError

FILES = ("ca.pem", "cert.pem", "key.pem")


@dataclasses.dataclass(frozen=True)
class EngineTLS:
    ca: Path
    cert: Path
    key: Path

    @classmethod
    def load(cls, folder: Path | str) -> EngineTLS:
        """The three files of ``folder``, checked now: a missing or unusable file is bad
        configuration, told before anything serves."""
        base = Path(folder)
        missing = [name for name in FILES if not (base / name).is_file()]
        if missing:
            raise InputError(
                f"--engine-tls {base}: {', '.join(missing)} missing",
                "the folder holds ca.pem, cert.pem and key.pem (as DOCKER_CERT_PATH does)",
            )
        tls = cls(base / "ca.pem", base / "cert.pem", base / "key.pem")
        try:
            tls.context()
        except (OSError, ssl.SSLError) as e:
            raise InputError(
                f"--engine-tls {base}: cannot load its certificates: {e}",
                "ca.pem: the CA that signed the engines' certificates; cert.pem and key.pem:"
                " the client certificate it signed for hgrun, and its key (PEM)",
            ) from e
        return tls

    def context(self) -> ssl.SSLContext:
        """A client context: the engine's certificate must chain to ``ca`` and name the host
        (an IP address in its subjectAltName for an address); ``cert`` is shown to it."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca))
        context.load_cert_chain(str(self.cert), str(self.key))
        return context

    def docker(self) -> docker.tls.TLSConfig:
        """The same for docker-py (its requests session); see :func:`trust_only`."""
        return docker.tls.TLSConfig(
            client_cert=(str(self.cert), str(self.key)), ca_cert=str(self.ca), verify=True
        )


def trust_only(session: requests.Session) -> None:
    """Make a TLS docker-py client trust its own CA only. requests lets REQUESTS_CA_BUNDLE (or
    CURL_CA_BUNDLE) replace a session's CA per request (psf/requests#3829): the engines'
    private CA would be swapped for the system's bundle, and every call would fail."""
    session.trust_env = False


def api_client(
    base_url: str, *, version: str, timeout: float, tls: EngineTLS | None
) -> docker.APIClient:
    """A docker-py API client; with ``tls`` for a ``tcp://`` URL, TLS with the client
    certificate, trusting ``tls.ca`` only."""
    use = tls if tls is not None and base_url.startswith("tcp://") else None
    client = docker.APIClient(
        base_url=base_url,
        version=version,
        timeout=timeout,
        tls=use.docker() if use is not None else False,
    )
    if use is not None:
        trust_only(client)
    return client
