"""Runs a loss module on two gloo ranks on the CPU (torch.multiprocessing, spawn) and computes
the centres a single process would get from all ranks' teacher rows."""
import copy
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _ddp_worker(rank, world, port, module_factory, inputs, results):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        module = module_factory()
        for step, (s1, s2, t1, t2) in enumerate(inputs[rank]):
            module(s1, s2, t1, t2, step)
        if hasattr(module, "sync_centers"):  # the fused modules' (the reference's reduce synchronously)
            module.sync_centers()  # what a logger calls before reading the buffers themselves
        read = (module.center.clone(), module.center2.clone())
        state = {name: value.clone() for name, value in module.state_dict().items()}
        read_current = torch.equal(read[0], state["center"]) and torch.equal(read[1], state["center2"])
        # with an update in flight: a copy must not take the collective's handle along, and
        # load_state_dict's centres must win over the update
        s1, s2, t1, t2 = inputs[rank][0]
        module(s1, s2, t1, t2, 0)
        copy.deepcopy(module)
        module(s1, s2, t1, t2, 0)
        module.load_state_dict(state)
        kept = all(torch.equal(value, state[name]) for name, value in module.state_dict().items())
        results[rank] = (state["center"], state["center2"], kept and read_current)
    finally:
        dist.destroy_process_group()


def run_two_ranks(module_factory, inputs):
    """Runs module_factory() on 2 gloo ranks over per-rank inputs; returns each rank's centres
    after the inputs, and whether the buffers read after sync_centers() were those centres and
    centres loaded with load_state_dict survived a later step's update that was still in
    flight."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    manager = mp.get_context("spawn").Manager()
    results = manager.dict()
    mp.start_processes(_ddp_worker, args=(2, port, module_factory, inputs, results), nprocs=2,
                       start_method="spawn")
    return [results[0], results[1]]


def make_rank_inputs(seed, ranks, steps, batch, ncrops, k1, k2):
    gen = torch.Generator().manual_seed(seed)
    return [[(torch.randn(ncrops * batch[r], k1, generator=gen), torch.randn(ncrops * batch[r], k2, generator=gen),
              torch.randn(2 * batch[r], k1, generator=gen) * 2 + r, torch.randn(2 * batch[r], k2, generator=gen))
             for _ in range(steps)] for r in range(ranks)]


def expected_centers(inputs, k1, k2, momentum=0.9):
    c1, c2 = torch.zeros(1, k1), torch.zeros(1, k2)
    for step in range(len(inputs[0])):
        t1 = torch.cat([inputs[r][step][2] for r in range(len(inputs))])
        t2 = torch.cat([inputs[r][step][3] for r in range(len(inputs))])
        c1 = momentum * c1 + (1 - momentum) * t1.mean(0, keepdim=True)
        c2 = momentum * c2 + (1 - momentum) * t2.mean(0, keepdim=True)
    return c1, c2
