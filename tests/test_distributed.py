"""torch.distributed, as users cross it: processes spawned with the gloo backend on CPU, each run under a timeout.
FSDP2 (DTensor parameters) is refused with a clear error when the optimizer is made, before any state exists
(a step used to fail halfway through its in-place updates)."""

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

    def rank_main(rank, world, port):
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
        print(f"rank {rank}: refused", flush=True)

    if __name__ == "__main__":
        mp.spawn(rank_main, args=(2, int(sys.argv[1])), nprocs=2)
""")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fsdp2_params_are_refused_before_any_state(tmp_path):
    script = tmp_path / "fsdp2_refused.py"
    script.write_text(FSDP2_REFUSED)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, str(script), str(free_port())], capture_output=True, text=True,
                         timeout=180, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert sorted(line for line in out.stdout.splitlines() if line.startswith("rank")) == [
        "rank 0: refused", "rank 1: refused"]
