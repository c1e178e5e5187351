"""Server interceptors: per-request metrics and logs, and bearer-token authentication."""

import hmac
import logging
import time

import grpc

from imgsim.metrics import Metrics

log = logging.getLogger("imgsim.requests")
# Probes and discovery stay open, so orchestrators and tools work without the token.
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def replace_behaviour(handler: grpc.RpcMethodHandler, wrap) -> grpc.RpcMethodHandler:
    """The same handler with its behaviour passed through `wrap(behaviour, streams_responses)`."""
    for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
        behaviour = getattr(handler, kind)
        if behaviour is not None:
            return handler._replace(**{kind: wrap(behaviour, kind.endswith("_stream"))})
    return handler


def code_name(context: grpc.ServicerContext, failed: bool) -> str:
    code = context.code()
    if code is None:
        return "UNKNOWN" if failed else "OK"
    return code.name


class ObservingInterceptor(grpc.ServerInterceptor):
    """Counts and times every call by method and status code; logs one line per call at debug level."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method

        def finish(context, started, failed):
            code = code_name(context, failed)
            seconds = time.perf_counter() - started
            self.metrics.observe_request(method, code, seconds)
            log.debug("rpc", extra={"rpc_method": method, "code": code, "ms": round(1000 * seconds, 3),
                                    "peer": context.peer()})

        def wrap(behaviour, streams_responses):
            if streams_responses:
                def observed_stream(request, context):
                    started, failed = time.perf_counter(), True
                    try:
                        yield from behaviour(request, context)
                        failed = False
                    finally:
                        finish(context, started, failed)
                return observed_stream

            def observed(request, context):
                started, failed = time.perf_counter(), True
                try:
                    response = behaviour(request, context)
                    failed = False
                    return response
                finally:
                    finish(context, started, failed)
            return observed

        return replace_behaviour(handler, wrap)


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Refuses calls without `authorization: Bearer <token>` with UNAUTHENTICATED (health and reflection stay open)."""

    def __init__(self, token: str):
        self.expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_PREFIXES):
            return handler
        sent = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(sent.encode(), self.expected):
            return handler

        def refuse(behaviour, streams_responses):
            def refused(request, context):
                context.abort(grpc.StatusCode.UNAUTHENTICATED,
                              "missing or wrong bearer token: send metadata 'authorization: Bearer <token>'")
            return refused

        return replace_behaviour(handler, refuse)
