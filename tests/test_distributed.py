"""torch.distributed, as users cross it: processes spawned with the gloo backend on CPU, each run under a timeout.
DDP trains as one process does on the global batch; FSDP2 (DTensor parameters) is refused with a clear error when
the optimizer is made, before any state exists (a step used to fail halfway through its in-place updates)."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="needs torch.distributed with gloo")

FSDP2_REFUSED = textwrap.dedent("""
    import os, sys
    import torch, torch.distributed as dist, torch.multiprocessing as mp
    from torch.distributed.fsdp import fully_shard

    def rank_main(rank, world, port, results):
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        import sparse_rda
        model = torch.nn.Sequential(torch.nn.Linear(13, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
        fully_shard(model)
        for cls, options in ((sparse_rda.RDA, dict(lam=1e-3)), (sparse_rda.GRDA, dict(c=0.01, mu=0.55))):
            try:
                cls(model.parameters(), lr=0.1, **options)
            except NotImplementedError as err:
                assert "DTensor parameters (FSDP2's fully_shard" in str(err) and "shape (7, 13)" in str(err), err
            else:
                raise AssertionError(f"{cls.__name__} took DTensor parameters")
        dist.destroy_process_group()
        with open(os.path.join(results, f"rank{rank}"), "a") as f:
            f.write("refused\\n")

    if __name__ == "__main__":
        mp.spawn(rank_main, args=(2, int(sys.argv[1]), sys.argv[2]), nprocs=2)
""")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(tmp_path, source: str, *args: str, timeout: int) -> dict[str, list[str]]:
    """Runs `source` (which spawns the ranks) with a free port, `args` and a directory last; returns what each rank
    wrote to its own file there, line by line (the ranks' stdout interleaves: a CI run once merged two lines)."""
    script = tmp_path / "ranks.py"
    script.write_text(source)
    results = tmp_path / "results"
    results.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, str(script), str(free_port()), *args, str(results)], capture_output=True,
                         text=True, timeout=timeout, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return {f.name: f.read_text().splitlines() for f in sorted(results.iterdir())}


def test_fsdp2_params_are_refused_before_any_state(tmp_path):
    assert run_ranks(tmp_path, FSDP2_REFUSED, timeout=180) == {"rank0": ["refused"], "rank1": ["refused"]}


DDP_MATCHES_ONE_PROCESS = textwrap.dedent("""
    import os, sys
    import torch, torch.distributed as dist, torch.multiprocessing as mp
    from torch.nn.parallel import DistributedDataParallel as DDP

    def make_model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 5))

    def train(model, opt, xs, ys):
        for x, y in zip(xs, ys):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

    def rank_main(rank, world, port, backend, results):
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        import sparse_rda
        gen = torch.Generator().manual_seed(1)
        xs = [torch.randn(8 * world, 20, generator=gen) for _ in range(8)]
        ys = [torch.randint(0, 5, (8 * world,), generator=gen) for _ in range(8)]
        mine = slice(8 * rank, 8 * rank + 8)
        for cls, options in ((sparse_rda.RDA, dict(lr=0.5, lam=3e-3)), (sparse_rda.GRDA, dict(lr=0.1, c=0.02))):
            model = DDP(make_model())
            opt = cls(model.parameters(), backend=backend, **options)
            train(model, opt, [x[mine] for x in xs], [y[mine] for y in ys])
            single = make_model()  # one process on the global batch
            train(single, cls(single.parameters(), backend=backend, **options), xs, ys)
            for p, q in zip(model.module.parameters(), single.parameters()):
                others = [torch.empty_like(p) for _ in range(world)]
                dist.all_gather(others, p.detach())
                assert all(torch.equal(o, p) for o in others), "the ranks differ"
                scale = q.detach().abs().max().item()
                assert (p - q).abs().max().item() <= 1e-6 * scale, (cls.__name__, (p - q).abs().max().item(), scale)
            zeros = sum(int((p == 0).sum()) for p in model.parameters())
            assert zeros > 0 and zeros == sum(int((q == 0).sum()) for q in single.parameters())
            assert opt.nnz() and sum(opt.nnz().values()) == sum(int((p != 0).sum()) for p in model.parameters())
            with open(os.path.join(results, f"rank{rank}"), "a") as f:
                f.write(f"{cls.__name__} matches\\n")
        dist.destroy_process_group()

    if __name__ == "__main__":
        mp.spawn(rank_main, args=(2, int(sys.argv[1]), sys.argv[2], sys.argv[3]), nprocs=2)
""")


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_ddp_trains_as_one_process_on_the_global_batch(tmp_path, backend):
    """2 ranks, each on half of every batch: DDP averages the grads, so each step is the global batch's; the
    ranks stay bit-identical and within float32 rounding of one process (1e-6 of max |w|) after 8 steps, with the
    same zeros."""
    import sparse_rda

    if backend not in sparse_rda.backends():
        pytest.skip("the native extension is not built")
    both = ["RDA matches", "GRDA matches"]
    assert run_ranks(tmp_path, DDP_MATCHES_ONE_PROCESS, backend, timeout=240) == {"rank0": both, "rank1": both}
