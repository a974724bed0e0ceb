"""Shared test parts: certificates made at test time, echo services, TLS clients."""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import burrow


@dataclass
class Cert:
    crt: bytes
    key: bytes

    def der(self) -> bytes:
        return x509.load_pem_x509_certificate(self.crt).public_bytes(serialization.Encoding.DER)


class Pki:
    """A throwaway CA."""

    def __init__(self, name: str = "test CA") -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self._name = subject
        self._cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.ca_pem = self._cert.public_bytes(serialization.Encoding.PEM)

    def _issue(self, cn: str, sans: List[str], client: bool = False) -> Cert:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        b = (
            x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self._name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
        )
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), critical=False)
        if client:
            b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        cert = b.sign(self._key, hashes.SHA256())
        return Cert(
            cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        )

    def leaf(self, *names: str) -> Cert:
        return self._issue(names[0], list(names))

    def client(self, cn: str) -> Cert:
        return self._issue(cn, [], client=True)


def write(tmp: Path, name: str, data: bytes) -> str:
    p = tmp / name
    p.write_bytes(data)
    return str(p)


_open_services: List["Echo"] = []


class Echo:
    """An echo service on 127.0.0.1 in a thread; TLS when given a certificate.
    Closed at the end of the test that made it."""

    def __init__(self, cert: Optional[Cert] = None, tmp: Optional[Path] = None, port: int = 0) -> None:
        self.sock = socket.socket()
        _open_services.append(self)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind(("127.0.0.1", port))
        except OSError:
            self.sock.close()
            raise
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.ctx: Optional[ssl.SSLContext] = None
        self.headers: List[bytes] = []
        if cert is not None and tmp is not None:
            self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.ctx.load_cert_chain(write(tmp, "svc.crt", cert.crt), write(tmp, "svc.key", cert.key))
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        try:
            if self.ctx is not None:
                conn = self.ctx.wrap_socket(conn, server_side=True)
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                conn.sendall(data)
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def close(self) -> None:
        # shutdown() wakes the thread blocked in accept(); close() alone would not.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def tls_client(addr: Tuple[str, int], name: str, ca: bytes, client_cert: Optional[Cert] = None,
               tmp: Optional[Path] = None) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cadata=ca.decode())
    if client_cert is not None and tmp is not None:
        ctx.load_cert_chain(write(tmp, "client.crt", client_cert.crt), write(tmp, "client.key", client_cert.key))
    raw = socket.create_connection(addr, timeout=30)
    return ctx.wrap_socket(raw, server_hostname=name)


def echo_exact(conn: socket.socket, data: bytes, chunk: int = 64 * 1024) -> None:
    """Sends data in chunks, reading each chunk's echo back (one thread: ssl sockets are
    not safe to share between threads); asserts every byte comes back in order."""
    for off in range(0, len(data), chunk):
        piece = data[off:off + chunk]
        conn.sendall(piece)
        got = bytearray()
        while len(got) < len(piece):
            more = conn.recv(len(piece) - len(got))
            assert more, f"connection closed after {off + len(got)} of {len(data)} bytes"
            got.extend(more)
        assert bytes(got) == piece, f"echo differs in the chunk at byte {off}"


def wait_until(done: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Polls ``done`` until it holds or the deadline passes (for events delivered by
    another thread, such as bridged log records)."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def free_port() -> int:
    """A port the OS just gave out on 127.0.0.1 and took back."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def edge_addr(listener: burrow.Listener) -> Tuple[str, int]:
    return ("127.0.0.1", int(listener.url().rsplit(":", 1)[1]))


def host(listener: burrow.Listener) -> str:
    return listener.url().split("://", 1)[1].rsplit(":", 1)[0]


@pytest.fixture
def pki() -> Pki:
    return Pki()


@pytest.fixture(autouse=True)
def _clean_sessions() -> Iterator[None]:
    yield
    burrow.kill()
    while _open_services:
        _open_services.pop().close()


@pytest.fixture(autouse=True)
def _no_ambient_server(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("BURROW_SERVER_ADDR", "BURROW_AUTHTOKEN", "NGROK_AUTHTOKEN"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def data() -> bytes:
    return os.urandom(3 * 1024 * 1024)
