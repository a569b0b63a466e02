"""Service credentials for internal RPCs: who is calling, and may it call this method.

Two ways to prove an identity, chosen by settings (both in `ServiceSettings`):

* **Mutual TLS** (`LLMSERVE_INTERNAL_TLS_CERT_PATH`, `..._KEY_PATH`, `..._CA_PATH`): internal
  servers require a client certificate signed by the CA; the handshake refuses a client
  without one. The identity is the certificate's common name, `<role>.<id>` (`worker.w1`).
* **Internal tokens** (`LLMSERVE_INTERNAL_SECRET`): one master secret; every identity's token
  is derived from it, `v1.<role>.<id>.<mac>` with `mac = base64url(HMAC-SHA256(master,
  "v1|<role>|<id>"))`, sent as `x-llmserve-internal: <token>` metadata and checked in constant
  time (`hmac.compare_digest`). A client that does not hold the master is given only its own
  token (`LLMSERVE_INTERNAL_TOKEN`, made by `llmserve internal-token ROLE ID`): it can prove
  that identity and no other. Servers hold the master to verify.

Roles: `worker`, `scheduler`, `gateway`, `monitor`, `operator` (people and the CLI). Each
internal service declares a policy, full method name -> roles allowed; a method missing from
it is refused to every role (a new RPC cannot be left open by accident). Health checks need no
credential (probes). No credential or a wrong one: UNAUTHENTICATED; a valid identity of a role
the method does not allow: PERMISSION_DENIED.

With neither configured, internal calls are not authenticated, and so internal ports may bind
only to loopback: `check_bind` refuses any other address, naming the setting.
"""

from __future__ import annotations

import base64
import contextvars
import hashlib
import hmac
import inspect
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

ROLES = frozenset({"worker", "scheduler", "gateway", "monitor", "operator"})
METADATA_KEY = "x-llmserve-internal"
VERSION = "v1"
#: Longest credential accepted; anything bigger is refused before any work.
MAX_TOKEN_BYTES = 1024
_HEALTH_PREFIX = "/grpc.health.v1.Health/"
SECRET_SETTING = "LLMSERVE_INTERNAL_SECRET"
TLS_SETTING = "LLMSERVE_INTERNAL_TLS_CERT_PATH"


class InternalAuthError(ValueError):
    """Internal authentication is configured in a way that cannot work (raised at start)."""


@dataclass(frozen=True)
class Caller:
    """An authenticated internal caller."""

    role: str
    id: str


_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("llmserve_internal_caller", default=None)


def current_caller() -> Caller | None:
    """The caller of the RPC being served; None when internal auth is off (loopback only)."""
    return _caller.get()


def _mac(master: bytes, role: str, ident: str) -> str:
    digest = hmac.new(master, f"{VERSION}|{role}|{ident}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def mint_token(master: str, role: str, ident: str) -> str:
    """The token of identity (role, ident), derived from the master secret."""
    if role not in ROLES:
        raise InternalAuthError(f"unknown role {role!r}; one of {sorted(ROLES)}")
    if not ident or any(ch.isspace() for ch in ident):
        raise InternalAuthError(f"identity id {ident!r} must be non-empty without spaces")
    return f"{VERSION}.{role}.{ident}.{_mac(master.encode(), role, ident)}"


def verify_token(master: str, token: str) -> Caller | None:
    """The identity a token proves, or None (malformed, unknown role, wrong MAC)."""
    if len(token) > MAX_TOKEN_BYTES:
        return None
    version, _, rest = token.partition(".")
    role, _, rest = rest.partition(".")
    ident, _, mac = rest.rpartition(".")
    if version != VERSION or role not in ROLES or not ident or not mac:
        return None
    expected = _mac(master.encode(), role, ident)
    if not hmac.compare_digest(expected.encode(), mac.encode()):
        return None
    return Caller(role, ident)


def caller_from_common_name(common_name: str) -> Caller | None:
    role, _, ident = common_name.partition(".")
    return Caller(role, ident) if role in ROLES and ident else None


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of this process's certificate, its key, and the CA every peer is signed by."""

    cert: bytes
    key: bytes
    ca: bytes

    @classmethod
    def load(cls, cert_path: str, key_path: str, ca_path: str) -> TlsFiles:
        missing = [name for name, path in (("CERT", cert_path), ("KEY", key_path), ("CA", ca_path)) if not path]
        if missing:
            raise InternalAuthError(
                "internal mutual TLS needs all of LLMSERVE_INTERNAL_TLS_{CERT,KEY,CA}_PATH; missing "
                + ", ".join(missing))
        return cls(Path(cert_path).read_bytes(), Path(key_path).read_bytes(), Path(ca_path).read_bytes())


@dataclass(frozen=True)
class InternalAuth:
    """This process's side of internal authentication: how it proves itself, how it verifies.

    `secret` verifies tokens (servers); `token` is the credential it sends (clients); `tls`
    switches both to mutual TLS. All None: authentication is off (loopback only)."""

    secret: str | None = None
    token: str | None = None
    tls: TlsFiles | None = None

    @classmethod
    def from_settings(cls, settings, role: str, ident: str) -> InternalAuth:
        """From a ServiceSettings; without an explicit token one is derived from the secret."""
        secret = settings.internal_secret.get_secret_value() or None
        token = settings.internal_token.get_secret_value() or None
        if token is None and secret is not None:
            token = mint_token(secret, role, ident)
        tls = None
        paths = (settings.internal_tls_cert_path, settings.internal_tls_key_path, settings.internal_tls_ca_path)
        if any(paths):
            tls = TlsFiles.load(*paths)
        return cls(secret, token, tls)

    @property
    def enabled(self) -> bool:
        return self.tls is not None or self.secret is not None

    # -- client side --------------------------------------------------------------------------
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((METADATA_KEY, self.token),) if self.token and self.tls is None else ()

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        if self.tls is None:
            return None
        return grpc.ssl_channel_credentials(self.tls.ca, self.tls.key, self.tls.cert)

    def aio_channel(self, address: str, options=()) -> grpc.aio.Channel:
        """An asyncio channel to an internal server that attaches this process's credential."""
        interceptors = _metadata_interceptors(self.metadata()) if self.metadata() else None
        creds = self.channel_credentials()
        if creds is not None:
            return grpc.aio.secure_channel(address, creds, options=list(options), interceptors=interceptors)
        return grpc.aio.insecure_channel(address, options=list(options), interceptors=interceptors)

    def channel(self, address: str, options=()) -> grpc.Channel:
        """The blocking twin of `aio_channel` (the CLI)."""
        creds = self.channel_credentials()
        channel = (grpc.secure_channel(address, creds, options=list(options)) if creds is not None
                   else grpc.insecure_channel(address, options=list(options)))
        if self.metadata():
            channel = grpc.intercept_channel(channel, _SyncAddMetadata(self.metadata()))
        return channel

    # -- server side --------------------------------------------------------------------------
    def server_credentials(self) -> grpc.ServerCredentials | None:
        if self.tls is None:
            return None
        return grpc.ssl_server_credentials([(self.tls.key, self.tls.cert)], root_certificates=self.tls.ca,
                                           require_client_auth=True)

    def check_bind(self, host: str, what: str) -> None:
        """Refuse a non-loopback internal address while nothing authenticates internal calls."""
        if self.enabled or is_loopback(host):
            return
        raise InternalAuthError(
            f"{what} would listen on {host!r} with internal calls unauthenticated: set {SECRET_SETTING} "
            f"(a shared internal secret) or {TLS_SETTING} with its key and CA (mutual TLS), or bind to 127.0.0.1")

    def authenticate(self, context: grpc.aio.ServicerContext) -> Caller | None:
        """The caller's identity; None if it proved none (only meaningful when `enabled`)."""
        if self.tls is not None:
            names = context.auth_context().get("x509_common_name") or []
            return caller_from_common_name(names[0].decode()) if names else None
        values = [v for k, v in (context.invocation_metadata() or ()) if k == METADATA_KEY]
        if len(values) != 1 or not isinstance(values[0], str) or self.secret is None:
            return None  # none, or ambiguous: two credentials are refused, not tried in turn
        return verify_token(self.secret, values[0])


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


Policy = Mapping[str, frozenset[str]]


class InternalAuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates every call on an internal server and checks the method's policy."""

    def __init__(self, auth: InternalAuth, policy: Policy):
        self.auth = auth
        self.policy = policy

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(_HEALTH_PREFIX):
            return handler
        return _wrap(handler, self._gate(details.method))

    def _gate(self, method: str):
        allowed = self.policy.get(method, _reflection_roles(method))

        async def gate(context) -> None:
            if not self.auth.enabled:
                return
            caller = self.auth.authenticate(context)
            if caller is None:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid internal credential")
                return
            if caller.role not in allowed:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"role {caller.role!r} may not call {method}")
            _caller.set(caller)

        return gate


def _reflection_roles(method: str) -> frozenset[str]:
    # Reflection only describes the (public) protos: any authenticated service may use it.
    return ROLES if method.startswith("/grpc.reflection.") else frozenset()


def _wrap(handler: grpc.RpcMethodHandler, gate) -> grpc.RpcMethodHandler:
    """The same handler, with `gate(context)` awaited before the servicer runs."""
    codecs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        inner = handler.unary_unary

        async def unary_unary(request, context):
            await gate(context)
            return await inner(request, context)
        return grpc.unary_unary_rpc_method_handler(unary_unary, **codecs)
    if handler.stream_unary:
        inner_su = handler.stream_unary

        async def stream_unary(requests, context):
            await gate(context)
            return await inner_su(requests, context)
        return grpc.stream_unary_rpc_method_handler(stream_unary, **codecs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(_streaming(handler.unary_stream, gate), **codecs)
    return grpc.stream_stream_rpc_method_handler(_streaming(handler.stream_stream, gate), **codecs)


def _streaming(inner, gate):
    async def behaviour(request, context):
        await gate(context)
        result = inner(request, context)
        if inspect.isasyncgen(result):
            async for response in result:
                yield response
        else:  # a servicer that writes through context.write
            await result
    return behaviour


class _WithMetadata:
    def __init__(self, metadata: tuple[tuple[str, str], ...]):
        self._metadata = metadata

    def _details(self, details):
        merged = tuple(details.metadata or ()) + self._metadata
        return details._replace(metadata=grpc.aio.Metadata(*merged))


# grpc.aio files a channel's interceptor under the first call kind it implements only, so
# each kind needs its own instance.
class _AddUnaryUnary(_WithMetadata, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(self._details(details), request)


class _AddUnaryStream(_WithMetadata, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(self._details(details), request)


class _AddStreamUnary(_WithMetadata, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, details, request_iterator):
        return await continuation(self._details(details), request_iterator)


class _AddStreamStream(_WithMetadata, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, details, request_iterator):
        return await continuation(self._details(details), request_iterator)


def _metadata_interceptors(metadata: tuple[tuple[str, str], ...]) -> list:
    """Interceptors that add the credential to every call of an asyncio channel."""
    return [kind(metadata) for kind in (_AddUnaryUnary, _AddUnaryStream, _AddStreamUnary, _AddStreamStream)]


class _SyncAddMetadata(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                       grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds the credential to every call of a blocking channel."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]):
        self._metadata = metadata

    def _details(self, details):
        return _SyncDetails(details.method, details.timeout, tuple(details.metadata or ()) + self._metadata,
                            details.credentials, getattr(details, "wait_for_ready", None),
                            getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)


@dataclass(frozen=True)
class _SyncDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: tuple
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None
