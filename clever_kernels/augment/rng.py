"""Counter-based random numbers for augmentation parameters.

Every random number is a pure function of a key, so a sample's draws never depend on the batch it
sits in, the device, the rank or the number of data-loader workers, and a fused kernel can
regenerate any draw (in particular the elastic noise field) from the recorded key alone.

The algorithm, exactly (all arithmetic on uint32, wrapping modulo 2**32):

    lowbias32(x):                    # Chris Wellons' two-round integer finaliser
        x ^= x >> 16;  x *= 0x7feb352d
        x ^= x >> 15;  x *= 0x846ca68b
        x ^= x >> 16
        return x

    hash32(w_0, ..., w_{n-1}):       # a mixing chain over the key words, in order
        h = 0x9e3779b9
        for each word w: h = lowbias32(h ^ w)
        return h

    to_unit(h)      = float(h >> 8) * 2**-24        # 24 bits: exact in float32, in [0, 1)
    to_index(h, n)  = ((h >> 8) * n) >> 24          # integer in [0, n), 64-bit product, n < 2**39

A parameter draw hashes nine words, 64-bit values split low word first:

    hash32(seed_lo, seed_hi, step_lo, step_hi, id_lo, id_hi, view, op, draw)

with x_lo = x & 0xffffffff and x_hi = (x >> 32) & 0xffffffff of the two's-complement int64 value
(so negative seeds and ids are allowed). `view` is the view index (0 global 1, 1 global 2,
2.. local views), `op` the op id and `draw` the draw index within the op (the op ids and draw
layout are listed in `clever_kernels.augment.sampler`).

A per-pixel stream from a recorded 32-bit key (the elastic seed) hashes two words:

    hash_uniform(key, counter) = to_unit(hash32(key, counter))

As C++ for a `__host__ __device__` port:

    inline uint32_t lowbias32(uint32_t x) {
        x ^= x >> 16; x *= 0x7feb352du; x ^= x >> 15; x *= 0x846ca68bu; x ^= x >> 16; return x;
    }
    inline float hash_uniform(uint32_t key, uint32_t counter) {
        uint32_t h = lowbias32(lowbias32(0x9e3779b9u ^ key) ^ counter);
        return (float)(h >> 8) * 0x1p-24f;
    }

Here the uint32 values live in int64 tensors masked to 32 bits. The multiplication is split into
16-bit halves so that no intermediate product leaves the int64 range: (x * c) mod 2**32 =
(x_lo16 * c + ((x_hi16 * c) mod 2**16) * 2**16) mod 2**32. The functions accept Python ints as well
as tensors, and broadcast the tensor words against each other.
"""
from typing import Union

import torch

Tensor = torch.Tensor
IntLike = Union[int, Tensor]

MASK32 = 0xFFFFFFFF
HASH_INIT = 0x9E3779B9
MUL1 = 0x7FEB352D
MUL2 = 0x846CA68B
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1


def _mul32(x: IntLike, c: int) -> IntLike:
    if isinstance(x, int):
        return (x * c) & MASK32
    return ((x & 0xFFFF) * c + (((x >> 16) * c) & 0xFFFF) * 0x10000) & MASK32


def lowbias32(x: IntLike) -> IntLike:
    """The integer finaliser on uint32 values (Python int or int64 tensor with values < 2**32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, MUL1)
    x = x ^ (x >> 15)
    x = _mul32(x, MUL2)
    return x ^ (x >> 16)


def hash32(*words: IntLike) -> IntLike:
    """hash32(w_0, ..., w_{n-1}) as in the module docstring; words are masked to 32 bits.

    Returns a Python int when every word is an int, else an int64 tensor (values in [0, 2**32))
    broadcast over the tensor words.
    """
    h = HASH_INIT
    for w in words:
        h = lowbias32(h ^ (w & MASK32))
    return h


def check_int64(name: str, value: IntLike) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, Tensor)):
        raise TypeError(f"{name} must be an int or an int64 tensor, got {type(value).__name__}")
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValueError(f"{name} must fit in int64, got {value}")
    elif value.dtype != torch.int64:
        raise TypeError(f"{name} must be an int64 tensor, got dtype {value.dtype}")


def split64(value: IntLike):
    """(low, high) 32-bit words of an int64 value, as the key hashes them."""
    return value & MASK32, (value >> 32) & MASK32


def hash_bits(seed: IntLike, step: IntLike, ids: IntLike, view: int, op: int, draw: IntLike) -> IntLike:
    """The 32-bit hash of a parameter draw: hash32(seed_lo, seed_hi, step_lo, step_hi, id_lo, id_hi,
    view, op, draw). Tensor arguments broadcast; ids (B,) against draw (D,) needs ids[:, None]."""
    for name, value in (("seed", seed), ("step", step), ("ids", ids), ("view", view), ("op", op),
                        ("draw", draw)):
        check_int64(name, value)
    seed_lo, seed_hi = split64(seed)
    step_lo, step_hi = split64(step)
    id_lo, id_hi = split64(ids)
    return hash32(seed_lo, seed_hi, step_lo, step_hi, id_lo, id_hi, view, op, draw)


def to_unit(bits: Tensor) -> Tensor:
    """uint32 hash values (int64 tensor) -> float32 uniform in [0, 1) with 24 random bits."""
    return (bits >> 8).to(torch.float32) * (2.0 ** -24)


def to_index(bits: Tensor, n: IntLike) -> Tensor:
    """uint32 hash values -> integers uniform in [0, n) (int64), exact integer arithmetic.

    n may be a tensor (broadcast) with values in [1, 2**39)."""
    return ((bits >> 8) * n) >> 24


def uniform(seed: IntLike, step: IntLike, ids: IntLike, view: int, op: int, draw: IntLike) -> Tensor:
    """Uniform float32 in [0, 1) keyed by (seed, step, sample id, view, op, draw); see module docstring.

    At least one of the arguments must be a tensor (usually ids, shape (B,)); the result has the
    broadcast shape and the tensors' device.
    """
    bits = hash_bits(seed, step, ids, view, op, draw)
    if not isinstance(bits, Tensor):
        raise TypeError("uniform needs at least one tensor argument (usually ids); "
                        "use hash32 for Python ints")
    return to_unit(bits)


def hash_uniform(key: Tensor, counter: Tensor) -> Tensor:
    """Per-element stream from a 32-bit key: to_unit(hash32(key, counter)), float32 in [0, 1).

    key and counter are int64 tensors with values in [0, 2**32) (higher bits are masked off) and
    broadcast against each other. This is the function a kernel writes as
    `hash_uniform(uint32_t key, uint32_t counter)`.
    """
    return to_unit(hash32(key, counter))
