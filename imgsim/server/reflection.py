"""Server reflection that also answers method symbols, so ghz and grpcurl can resolve `pkg.Service.Method`.

The stock grpcio reflection service looks symbols up in the descriptor pool, which knows services and
messages but not methods, and answers "Symbol not found" for `imgsim.v1.Index.Search` (grpc/grpc#34743,
bojand/ghz#419). This answers a method symbol with the file that defines its service.
"""

import grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer


class MethodAwareReflectionServicer(ReflectionServicer):
    # Extends the library's per-request hook (the one place symbols are resolved) rather than copying its
    # request loop.
    def _file_containing_symbol(self, request, fully_qualified_name):
        response = super()._file_containing_symbol(request, fully_qualified_name)
        if not response.HasField("error_response"):
            return response
        service_name, _, method_name = fully_qualified_name.rpartition(".")
        try:
            service = self._pool.FindServiceByName(service_name)
        except KeyError:
            return response
        if method_name not in service.methods_by_name:
            return response
        return super()._file_containing_symbol(request, service_name)


def enable_reflection(service_names: tuple[str, ...], server: grpc.aio.Server) -> None:
    names = (*service_names, reflection.SERVICE_NAME)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(MethodAwareReflectionServicer(names), server)
