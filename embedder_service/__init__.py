"""The embedder service: owns the vision encoder and serves embeddings over gRPC."""
