"""Plain-PyTorch definitions of every op. Readable and slow on purpose: kernels are tested
against these, never the other way round."""
