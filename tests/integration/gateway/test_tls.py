"""TLS on the public gRPC and HTTP ports (the workers' token sink moves to a plaintext internal port)."""

from __future__ import annotations

import datetime
import ipaddress

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from llmserve.gateway.catalog import ModelCatalog
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
