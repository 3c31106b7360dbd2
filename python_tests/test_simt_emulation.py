"""csrc/testing/simt.h, the CPU emulation that runs the CUDA kernels in the test suite: its
barriers order shared-memory traffic as a GPU's do, a barrier in divergent code is refused, and
threads that return early leave the barrier to the others."""
import pytest
import torch

import cuda_emulation


def test_barriers_order_shared_memory(rng):
    x = torch.randn(5, 64, generator=rng)
    reversed_, sums = cuda_emulation.ops().simt_reverse_and_sum(x)
    assert torch.equal(reversed_, x.flip(1))
    # the tree sum in the kernel's order (stride 32, 16, ..., 1), exactly
    want = x.flip(1).clone()
    stride = 32
    while stride:
        want[:, :stride] += want[:, stride:2 * stride]
        stride //= 2
    assert torch.equal(sums, want[:, 0])


def test_divergent_barrier_is_refused():
    with pytest.raises(RuntimeError, match="different __syncthreads"):
        cuda_emulation.ops().simt_divergent_barrier()


@pytest.mark.parametrize("n", [1, 17, 64])
def test_threads_returning_early_leave_the_barrier(n):
    out = cuda_emulation.ops().simt_early_return(n)
    assert torch.equal(out[:n], torch.arange(n - 1, -1, -1, dtype=torch.float32))
    assert (out[n:] == -1).all()


def test_missing_barrier_is_seen_whichever_thread_writes():
    """Thread 0 broadcasts through shared memory with no barrier before the reads: with the
    threads in index order every reader would run after the writer and see the value."""
    out = cuda_emulation.ops().simt_unsynchronised_broadcast()
    assert (out != 7.0).any()


def test_exception_in_a_thread_reaches_the_caller():
    with pytest.raises(RuntimeError, match="thread 5 refuses"):
        cuda_emulation.ops().simt_throwing_thread()
