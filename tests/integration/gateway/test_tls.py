"""TLS on the public gRPC and HTTP ports (the workers' token sink moves to a plaintext internal port),
and mutual TLS: with a client CA set, only clients presenting a certificate it signed get in."""

from __future__ import annotations

import datetime
import ipaddress
import ssl

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from llmserve.gateway.routing.catalog import ModelCatalog
from llmserve.gateway.v1 import generation_pb2 as pb
from llmserve.gateway.v1 import generation_pb2_grpc
from tests.support.scripted_engine import ScriptedEngine
from tests.support.stack import API_KEY, MODEL, running_stack


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            False,
        )
        .sign(key, hashes.SHA256())
    )
    d = tmp_path_factory.mktemp("tls")
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return d


async def test_grpc_and_https_over_tls(redis_url, cert_files):
    catalog = ModelCatalog.load([MODEL])
    tls = {"tls_cert_path": str(cert_files / "cert.pem"), "tls_key_path": str(cert_files / "key.pem")}
    async with running_stack(redis_url, [ScriptedEngine()], catalog, gateway_overrides=tls) as stack:
        creds = grpc.ssl_channel_credentials((cert_files / "cert.pem").read_bytes())
        async with grpc.aio.secure_channel(stack.gateway_address, creds) as channel:
            stub = generation_pb2_grpc.GenerationServiceStub(channel)
            reply = await stub.Generate(
                pb.GenerateRequest(model=MODEL, prompt="hi", max_tokens=2),
                metadata=(("authorization", f"Bearer {API_KEY}"),),
                timeout=10,
            )
            assert reply.usage.completion_tokens == 2
        port = stack.gateway.service.http_port
        async with httpx.AsyncClient(verify=str(cert_files / "cert.pem"), timeout=10) as http:
            response = await http.post(
                f"https://127.0.0.1:{port}/v1/completions",
                json={"model": MODEL, "prompt": "hi", "max_tokens": 2},
                headers={"authorization": f"Bearer {API_KEY}"},
            )
            assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 2
        with pytest.raises(httpx.HTTPError):  # plaintext is refused
            async with httpx.AsyncClient(timeout=3) as plain:
                await plain.get(f"http://127.0.0.1:{port}/v1/models")


# -- mutual TLS ---------------------------------------------------------------------------
def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(subject: str, key, issuer: tuple[x509.Name, object] | None, *, ca: bool, client: bool = False):
    """A certificate for `key`: self-signed when issuer is None, else signed by (name, key)."""
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer or (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if client:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write_pair(directory, stem: str, cert, key) -> None:
    (directory / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / f"{stem}-key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


@pytest.fixture(scope="module")
def client_pki(tmp_path_factory):
    """The clients' CA with one client it signed, and a rogue CA with a client of its own."""
    d = tmp_path_factory.mktemp("mtls")
    for ca_stem, client_stem in (("client-ca", "client"), ("rogue-ca", "rogue")):
        ca_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
        ca_cert = _issue(ca_stem, ca_key, None, ca=True)
        _write_pair(d, ca_stem, ca_cert, ca_key)
        _write_pair(
            d,
            client_stem,
            _issue(f"{client_stem}-app", client_key, (ca_cert.subject, ca_key), ca=False, client=True),
            client_key,
        )
    return d


def _mtls_overrides(cert_files, client_pki) -> dict:
    return {
        "tls_cert_path": str(cert_files / "cert.pem"),
        "tls_key_path": str(cert_files / "key.pem"),
        "tls_client_ca_path": str(client_pki / "client-ca.pem"),
    }


async def _grpc_generate(address: str, cert_files, client_pki, who: str | None) -> pb.GenerateResponse:
    chain = {}
    if who is not None:
        chain = {
            "private_key": (client_pki / f"{who}-key.pem").read_bytes(),
            "certificate_chain": (client_pki / f"{who}.pem").read_bytes(),
        }
    creds = grpc.ssl_channel_credentials((cert_files / "cert.pem").read_bytes(), **chain)
    async with grpc.aio.secure_channel(address, creds) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        return await stub.Generate(
            pb.GenerateRequest(model=MODEL, prompt="hi", max_tokens=2),
            metadata=(("authorization", f"Bearer {API_KEY}"),),
            timeout=10,
        )


def _https_context(cert_files, client_pki, who: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cert_files / "cert.pem"))
    if who is not None:
        context.load_cert_chain(client_pki / f"{who}.pem", client_pki / f"{who}-key.pem")
    return context


async def _https_completion(port: int, context: ssl.SSLContext) -> httpx.Response:
    async with httpx.AsyncClient(verify=context, timeout=5) as http:
        return await http.post(
            f"https://127.0.0.1:{port}/v1/completions",
            json={"model": MODEL, "prompt": "hi", "max_tokens": 2},
            headers={"authorization": f"Bearer {API_KEY}"},
        )


async def test_mutual_tls_serves_only_clients_the_ca_signed_on_grpc(redis_url, cert_files, client_pki):
    catalog = ModelCatalog.load([MODEL])
    async with running_stack(
        redis_url, [ScriptedEngine()], catalog, gateway_overrides=_mtls_overrides(cert_files, client_pki)
    ) as stack:
        reply = await _grpc_generate(stack.gateway_address, cert_files, client_pki, "client")
        assert reply.usage.completion_tokens == 2
        for who in (None, "rogue"):  # no certificate; a certificate from another CA
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await _grpc_generate(stack.gateway_address, cert_files, client_pki, who)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, (who, refused.value)
        # the refusals were handshakes, not requests: the signed client is still served
        assert (await _grpc_generate(stack.gateway_address, cert_files, client_pki, "client")).text


async def test_mutual_tls_serves_only_clients_the_ca_signed_on_https(redis_url, cert_files, client_pki):
    catalog = ModelCatalog.load([MODEL])
    async with running_stack(
        redis_url, [ScriptedEngine()], catalog, gateway_overrides=_mtls_overrides(cert_files, client_pki)
    ) as stack:
        port = stack.gateway.service.http_port
        response = await _https_completion(port, _https_context(cert_files, client_pki, "client"))
        assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 2
        for who in (None, "rogue"):
            with pytest.raises(httpx.HTTPError):  # the handshake fails: no HTTP status at all
                await _https_completion(port, _https_context(cert_files, client_pki, who))
        response = await _https_completion(port, _https_context(cert_files, client_pki, "client"))
        assert response.status_code == 200
