"""torch.distributed, as users cross it: gloo ranks spawned on CPU (tests/ranks.py), each run under a timeout.
FSDP2 and hand-made DTensors (Shard(0) with uneven shards, Shard(1), Replicate) train as one process on the global
batch does, on every kernel backend; a torch.distributed.checkpoint saved on 2 ranks resumes on 3; DDP as one
process."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sparse_rda

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="needs torch.distributed with gloo")

RANKS = Path(__file__).with_name("ranks.py")


def run_ranks(tmp_path, scenario: str, world: int, *args: str, timeout: int = 300, interpret: bool = False):
    """tests/ranks.py's ``scenario`` on ``world`` ranks; what each rank reported, line by line."""
    results = tmp_path / f"{scenario}-{world}"
    results.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    out = subprocess.run([sys.executable, str(RANKS), scenario, str(world), str(results), *args],
                         capture_output=True, text=True, timeout=timeout, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-6000:]
    return {f.name: f.read_text().splitlines() for f in sorted(results.glob("rank*"))}


def needs(backend: str) -> None:
    if backend == "triton":
        if "triton" not in sparse_rda.dispatch.installed():
            pytest.skip(sparse_rda.dispatch._MISSING["triton"])
    elif backend not in sparse_rda.backends():
        pytest.skip(f"backend {backend!r} is not available here")


def same_on_every_rank(found: dict, world: int, lines: list[str]) -> None:
    assert found == {f"rank{r}": lines for r in range(world)}


ALL_CASES = ["mlp-rda-element", "mlp-rda-target", "mlp-grda-element", "mlp-grda-target", "mlp-rda-block",
             "mlp-rda-block-target", "mlp-rda-block-plain-l1", "cnn-rda-kernel", "cnn-rda-channel", "cnn-rda-element",
             "cnn-grda-element", "mlp-rda-nm", "mlp-rda-nm-target", "cnn-rda-nm"]


@pytest.mark.triton_free
@pytest.mark.parametrize("backend, world", [("cpu", 2), ("cpu", 3), ("torch", 3)])
def test_fsdp2_trains_as_one_process(tmp_path, backend, world):
    """RDA (element, kernel, channel, block with tiles straddling the shards, N:M, target_sparsity) and GRDA (element,
    target_sparsity) under fully_shard, an MLP and a CNN, 20 steps: weights, state and tile maps within 1e-6 of
    one process, nonzero counts and the controller's scale equal."""
    needs(backend)
    found = run_ranks(tmp_path, "fsdp2", world, backend, "all")
    same_on_every_rank(found, world, [f"{case} matches" for case in ALL_CASES])


def test_fsdp2_on_triton(tmp_path):
    """The Triton kernels (in the interpreter on CPU) on 2 uneven ranks (17 and 16 rows of the first weight):
    block RDA (the max over shards, tiles straddling them: interior tiles through the kernels), N:M RDA, GRDA."""
    needs("triton")
    cases = ["mlp-grda-element", "mlp-rda-block", "mlp-rda-nm"]  # (in FSDP_CASES order)
    found = run_ranks(tmp_path, "fsdp2", 2, "triton", ",".join(cases), timeout=600, interpret=True)
    same_on_every_rank(found, 2, [f"{case} matches" for case in cases])


@pytest.mark.triton_free
@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_dtensor_placements(tmp_path, backend):
    """Shard(1) (element, kernel, channel: its groups span shards, their means summed over them; block, tiles
    straddling column shards), Shard(0) and Replicate, on 3 ranks."""
    needs(backend)
    found = run_ranks(tmp_path, "placements", 3, backend)
    same_on_every_rank(found, 3, [f"{case} matches" for case in
                                  ("shard1-element", "shard1-kernel", "shard1-channel", "shard0-channel",
                                   "shard1-block", "shard0-block", "shard0-block-two-holders")])


@pytest.mark.triton_free
def test_distributed_checkpoint_resumes_resharded(tmp_path):
    """get/set_optimizer_state_dict with torch.distributed.checkpoint: saved on 2 ranks after 10 of 20 steps, loaded
    on 3, the last 10 steps equal the uninterrupted 2-rank run's: RDA and GRDA with target_sparsity, block RDA
    (its tile maps replicated)."""
    backend = "cpu" if "cpu" in sparse_rda.backends() else "torch"
    runs = ["RDA", "GRDA", "RDA-block"]
    path = str(tmp_path / "checkpoints")
    found = run_ranks(tmp_path, "dcp_save", 2, backend, ",".join(runs), path)
    same_on_every_rank(found, 2, [f"{run} saved" for run in runs])
    same_on_every_rank(run_ranks(tmp_path, "dcp_resume", 3, backend, ",".join(runs), path), 3,
                       [f"{run} resumed" for run in runs])


@pytest.mark.triton_free
@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_ddp_trains_as_one_process_on_the_global_batch(tmp_path, backend):
    """2 ranks, each on half of every batch: DDP averages the grads, so each step is the global batch's; the
    ranks stay bit-identical and within 1e-6 of one process, with the same zeros."""
    needs(backend)
    same_on_every_rank(run_ranks(tmp_path, "ddp", 2, backend), 2, ["RDA matches", "GRDA matches"])


@pytest.mark.triton_free
def test_the_fsdp_example_runs_under_torchrun():
    """examples/fsdp_train.py as the README runs it (torchrun, 2 gloo ranks), cut to 30 steps: it trains, zeroes
    tiles and prints its summary."""
    example = Path(__file__).resolve().parents[1] / "examples" / "fsdp_train.py"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", str(example),
                          "--quick", "--steps", "30", "--log-every", "15", "--lam", "1e-3"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "FSDP2 on 2 ranks (cpu, gloo)" in out.stdout and "step    30  loss" in out.stdout, out.stdout
    summary = next(line for line in out.stdout.splitlines() if line.startswith("val loss"))
    dead = int(summary.split("MLP weights: ")[1].split("/")[0])
    assert dead > 0, summary


def test_block_mode_refuses_a_dtensor_sharded_twice_before_any_state(tmp_path):
    """Block mode takes a DTensor sharded along one mesh dimension: one sharded along two (a 2-D mesh, both
    Shard) is refused when the optimizer is made, naming the parameter; element mode takes it."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0,
                                         world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1, 1))
        p = torch.nn.Parameter(distribute_tensor(torch.randn(8, 8), mesh, [Shard(0), Shard(1)]))
        with pytest.raises(NotImplementedError, match="params: granularity=.'block', .... takes a DTensor sharded "
                                                      "along one mesh dimension"):
            sparse_rda.RDA([p], granularity=("block", 4, 4))
        opt = sparse_rda.RDA([p], lam=1e-2)
        p.grad = distribute_tensor(torch.randn(8, 8), mesh, [Shard(0), Shard(1)])
        opt.step()
        assert opt.state[p]["T"].placements == p.placements
    finally:
        torch.distributed.destroy_process_group()


def test_nm_mode_refuses_a_dtensor_split_along_its_rows(tmp_path):
    """N:M groups run along the rows: a DTensor sharded along dim 1 is refused when the optimizer is made, naming
    the parameter; Shard(0) (FSDP2's) is stepped."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0,
                                         world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        p = torch.nn.Parameter(distribute_tensor(torch.randn(8, 8), mesh, [Shard(1)]))
        with pytest.raises(NotImplementedError, match=r"params: granularity=\('nm', N, M\) takes DTensors sharded "
                                                      "along dim 0 only"):
            sparse_rda.RDA([p], granularity=("nm", 2, 4))
        q = torch.nn.Parameter(distribute_tensor(torch.randn(8, 8), mesh, [Shard(0)]))
        opt = sparse_rda.RDA([q], granularity=("nm", 2, 4))
        q.grad = distribute_tensor(torch.randn(8, 8), mesh, [Shard(0)])
        opt.step()
        assert int((q.to_local() != 0).sum()) <= 32
    finally:
        torch.distributed.destroy_process_group()
