"""What the embedder, the index and the client share: the generated contract (imgsim.v1) and its plumbing."""
