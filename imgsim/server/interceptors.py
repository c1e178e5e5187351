"""Server interceptors (grpc.aio): per-request metrics and logs, and bearer-token authentication."""

import hmac
import inspect
import logging
import time

import grpc

from imgsim.server.metrics import Metrics

log = logging.getLogger("imgsim.requests")
# Probes and discovery stay open, so orchestrators and tools work without the token.
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


def replace_behaviour(handler: grpc.RpcMethodHandler, wrap) -> grpc.RpcMethodHandler:
    """The same handler with its behaviour passed through `wrap(behaviour, streams_responses)`."""
    for kind in KINDS:
        behaviour = getattr(handler, kind)
        if behaviour is not None:
            return handler._replace(**{kind: wrap(behaviour, kind.endswith("_stream"))})
    return handler


def status_code(context, failed: bool) -> str:
    code = context.code()
    if code is None:
        return "UNKNOWN" if failed else "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    return next((c.name for c in grpc.StatusCode if c.value[0] == code), str(code))


class ObservingInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every call by method and status code; logs one line per call at debug level."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method

        def peer_of(context) -> str:
            # Read at the start, never after the call ends: grpc core frees the peer string with the
            # transport, and a late context.peer() on a cancelled call can crash the process.
            return context.peer() if log.isEnabledFor(logging.DEBUG) else ""

        def finish(context, started, failed, peer):
            code = status_code(context, failed)
            seconds = time.perf_counter() - started
            self.metrics.observe_request(method, code, seconds)
            log.debug("rpc", extra={"rpc_method": method, "code": code, "ms": round(1000 * seconds, 3),
                                    "peer": peer})

        def wrap(behaviour, streams_responses):
            if streams_responses and inspect.isasyncgenfunction(behaviour):
                async def observed_stream(request, context):
                    started, failed, peer = time.perf_counter(), True, peer_of(context)
                    try:
                        async for response in behaviour(request, context):
                            yield response
                        failed = False
                    finally:
                        finish(context, started, failed, peer)
                return observed_stream

            async def observed(request, context):
                started, failed, peer = time.perf_counter(), True, peer_of(context)
                try:
                    response = await behaviour(request, context)
                    failed = False
                    return response
                finally:
                    finish(context, started, failed, peer)
            return observed

        return replace_behaviour(handler, wrap)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without `authorization: Bearer <token>` with UNAUTHENTICATED (health and reflection stay open)."""

    def __init__(self, token: str):
        self.expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_PREFIXES):
            return handler
        sent = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        if isinstance(sent, str) and hmac.compare_digest(sent.encode(), self.expected):
            return handler

        def refuse(behaviour, streams_responses):
            async def refused(request, context):
                await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                    "missing or wrong bearer token: send metadata 'authorization: Bearer <token>'")
            return refused

        return replace_behaviour(handler, refuse)
