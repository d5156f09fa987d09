"""neardup: a gRPC near-duplicate image service backed by NVIDIA Triton."""
