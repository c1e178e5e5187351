"""The index service: holds candidate vectors and answers top-k cosine queries over gRPC."""
