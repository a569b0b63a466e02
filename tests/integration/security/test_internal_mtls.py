"""Internal mutual TLS: the whole stack serves through it; a client without a certificate, or
with one from another CA, is refused at the handshake; the certificate's common name is the
identity the role policy checks."""

from __future__ import annotations

import grpc
import pytest

from llmserve.common.internal_auth import InternalAuth, TlsFiles
from llmserve.gateway.routing.catalog import ModelCatalog
from llmserve.gateway.v1 import generation_pb2 as pb
from llmserve.gateway.v1 import generation_pb2_grpc
from llmserve.worker.v1 import worker_pb2, worker_pb2_grpc
from tests.support.internal_pki import Pki
from tests.support.scripted_engine import ScriptedEngine
from tests.support.stack import API_KEY, MODEL, running_stack


@pytest.fixture
def pki(tmp_path) -> Pki:
    return Pki(tmp_path)


def client(files: dict[str, str]) -> InternalAuth:
    return InternalAuth(tls=TlsFiles.load(files["internal_tls_cert_path"], files["internal_tls_key_path"],
                                          files["internal_tls_ca_path"]))


async def test_stack_over_internal_mtls_and_handshake_refusals(redis_url, pki, tmp_path):
    async with running_stack(redis_url, [ScriptedEngine()], catalog=ModelCatalog.load([MODEL]),
                             internal_tls=pki.issue) as s:
        async with grpc.aio.insecure_channel(s.gateway_address) as channel:
            reply = await generation_pb2_grpc.GenerationServiceStub(channel).Generate(
                pb.GenerateRequest(model=MODEL, prompt="hi", max_tokens=3),
                metadata=(("authorization", f"Bearer {API_KEY}"),), timeout=15)
        assert reply.usage.completion_tokens == 3  # worker -> gateway sink over mTLS

        worker = f"127.0.0.1:{s.workers[0].port}"
        request = worker_pb2.GetStatusRequest()
        # No certificate: TLS to the right CA, but the server demands a client certificate.
        no_cert = grpc.ssl_channel_credentials(pki.ca_path.read_bytes())
        (tmp_path / "rogue").mkdir()
        other_ca = client(Pki(tmp_path / "rogue", "rogue-ca").issue("operator", "mallory"))
        for creds in (no_cert, other_ca.channel_credentials()):
            async with grpc.aio.secure_channel(worker, creds) as ch:
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await worker_pb2_grpc.WorkerServiceStub(ch).GetStatus(request, timeout=3)
                assert e.value.code() == grpc.StatusCode.UNAVAILABLE  # the handshake failed
        # Plaintext to a TLS port: no handshake at all.
        async with grpc.aio.insecure_channel(worker) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await worker_pb2_grpc.WorkerServiceStub(ch).GetStatus(request, timeout=3)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE

        # A valid certificate: its common name is the identity.
        async with client(pki.issue("operator", "alice")).aio_channel(worker) as ch:
            status = await worker_pb2_grpc.WorkerServiceStub(ch).GetStatus(request, timeout=3)
            assert status.worker_id == "w0"
        async with client(pki.issue("scheduler", "s9")).aio_channel(worker) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await worker_pb2_grpc.WorkerServiceStub(ch).LoadModel(worker_pb2.LoadModelRequest(ref="x"), timeout=3)
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
