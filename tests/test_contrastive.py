"""InfoNCE over heatmaps: hand-computed values for every arrangement and negative set."""

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cgc_ray.contrastive import info_nce, mse_consistency

TAU = 0.5


def _unit(*v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _dot(u, v):
    return sum(x * y for x, y in zip(u, v))


def _nce(pos, negs):
    """-log softmax of the positive among [pos, *negs], at temperature TAU."""
    logits = [pos / TAU] + [n / TAU for n in negs]
    return -logits[0] + math.log(sum(math.exp(z) for z in logits))


# Three 1x2 "heatmaps" per side, so every cosine is easy to write down.
A = [[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]]
T = [[2.0, 1.0], [0.0, 1.0], [1.0, 3.0]]
UA, UT = [_unit(*v) for v in A], [_unit(*v) for v in T]


def _maps(rows):
    return torch.tensor(rows, dtype=torch.float64).view(len(rows), 1, 2)


def test_identical_maps_give_log_batch_size():
    maps = torch.rand(1, 7, 7).expand(6, 7, 7)
    assert info_nce(maps, maps, TAU).item() == pytest.approx(math.log(6), rel=1e-6)


def test_official_arrangement_by_hand():
    expected = sum(_nce(_dot(UA[i], UT[i]), [_dot(UA[i], UA[j]) for j in range(3) if j != i])
                   for i in range(3)) / 3
    assert info_nce(_maps(A), _maps(T), TAU, "official").item() == pytest.approx(expected, rel=1e-12)


def test_paper_arrangement_by_hand():
    expected = sum(_nce(_dot(UT[i], UA[i]), [_dot(UT[i], UA[j]) for j in range(3) if j != i])
                   for i in range(3)) / 3
    got = info_nce(_maps(A), _maps(T), TAU, "paper").item()
    assert got == pytest.approx(expected, rel=1e-12)
    assert got != pytest.approx(info_nce(_maps(A), _maps(T), TAU, "official").item(), rel=1e-3)


def test_block_negatives_by_hand():
    a4, t4 = A + [[3.0, 1.0]], T + [[1.0, 1.0]]
    ua, ut = [_unit(*v) for v in a4], [_unit(*v) for v in t4]
    partner = {0: 1, 1: 0, 2: 3, 3: 2}  # blocks {0, 1} and {2, 3}
    expected = sum(_nce(_dot(ua[i], ut[i]), [_dot(ua[i], ua[partner[i]])]) for i in range(4)) / 4
    got = info_nce(_maps(a4), _maps(t4), TAU, negatives="block", block_size=2).item()
    assert got == pytest.approx(expected, rel=1e-12)


def test_block_size_must_divide_the_batch():
    with pytest.raises(ValueError, match="block_size dividing the batch 3"):
        info_nce(_maps(A), _maps(T), TAU, negatives="block", block_size=2)


def test_mse_ablation_by_hand():
    expected = sum((x - y) ** 2 for u, v in zip(UA, UT) for x, y in zip(u, v)) / 6
    assert mse_consistency(_maps(A), _maps(T)).item() == pytest.approx(expected, rel=1e-12)


def _global_worker(rank, world, port, a, t, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        n = a.shape[0] // world
        mine = slice(rank * n, (rank + 1) * n)
        a_local = a[mine].clone().requires_grad_()
        loss = info_nce(a_local, t[mine], TAU, negatives="global")
        loss.backward()
        out[rank] = (loss.detach(), a_local.grad)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_global_negatives_across_two_ranks_equal_one_big_batch():
    torch.manual_seed(0)
    a, t = torch.rand(6, 4, 4, dtype=torch.float64), torch.rand(6, 4, 4, dtype=torch.float64)
    out = mp.Manager().dict()
    mp.spawn(_global_worker, args=(2, _free_port(), a, t, out), nprocs=2)
    # Reference: the same 6 rows on one process, local negatives = all 6 images.
    a_ref = a.clone().requires_grad_()
    ref_rows = [info_nce(a_ref, t, TAU, negatives="local")]
    ref_rows[0].backward()
    mean_of_ranks = (out[0][0] + out[1][0]) / 2
    assert mean_of_ranks.item() == pytest.approx(ref_rows[0].item(), rel=1e-12)
    # Each rank's loss is its mean over 3 rows; DDP averages gradients over the
    # 2 ranks; all_gather's backward sums the other rank's part into ours.
    grads = torch.cat([out[0][1], out[1][1]]) / 2
    torch.testing.assert_close(grads, a_ref.grad, rtol=1e-10, atol=1e-12)
