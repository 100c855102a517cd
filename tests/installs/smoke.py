"""After an install, run from a directory outside the source tree: the installed package imports whole, lists
only the backends that can run here, and its native steps match the reference.

    python smoke.py [--editable SOURCE_DIR] [--triton absent|present] [--cuda-kernels]

--editable: the package must be imported from SOURCE_DIR (an editable install); otherwise from site-packages.
--triton: whether triton must be importable in this environment (checked, so a route cannot test the wrong venv).
Exits non-zero with the reason on the first failure.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path

import torch


def check_location(sparse_rda, editable: Path | None) -> None:
    location = Path(sparse_rda.__file__).resolve().parent
    if editable is None:
        assert "site-packages" in location.parts, f"sparse_rda imported from {location}, not from site-packages"
    else:
        assert location == editable.resolve() / "sparse_rda", f"sparse_rda imported from {location}, not {editable}"
    assert not (Path.cwd() / "sparse_rda").exists(), "run this from a directory outside the source tree"


def check_modules(sparse_rda, has_triton: bool) -> None:
    """Every module of the installed package imports (the Triton kernels only where triton is installed).
    The kernels are found by spec, not by walking sparse_rda's folder: an editable install maps them from kernels/."""
    names = [m.name for m in pkgutil.walk_packages(sparse_rda.__path__, "sparse_rda.")
             if not m.name.startswith("sparse_rda.kernels")]
    assert "sparse_rda.pruning" in names and "sparse_rda._C" in names, f"missing modules: {names}"
    kernels = importlib.util.find_spec("sparse_rda.kernels")
    assert kernels is not None, "the Triton kernels (sparse_rda.kernels) are not installed"
    kernel_names = [f"sparse_rda.kernels.{m.name}" for m in pkgutil.iter_modules(kernels.submodule_search_locations)]
    assert "sparse_rda.kernels.rda_step" in kernel_names, kernel_names
    for name in names + (["sparse_rda.kernels"] + kernel_names if has_triton else []):
        importlib.import_module(name)


def check_backends(sparse_rda, has_triton: bool) -> None:
    listed = sparse_rda.backends()
    assert "torch" in listed and "cpu" in listed, f"backends() = {listed}: the native CPU kernels are missing"
    # triton is listed only where it can run now: a CUDA device, or the interpreter
    from sparse_rda.dispatch import triton_interpreted

    triton_runs = has_triton and (torch.cuda.is_available() or triton_interpreted())
    installed = "installed" if has_triton else "not installed"
    assert ("triton" in listed) == triton_runs, f"backends() = {listed} with triton {installed}"


def run(opt_class, backend: str, steps: int, **options):
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(37, 53))  # odd sizes: the kernels' tails
    bias = torch.nn.Parameter(torch.randn(53))
    opt = opt_class([{"params": [weight]}, {"params": [bias], "penalize": False}], backend=backend, **options)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in (weight, bias):
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    return weight, bias, opt


def check_step_matches_reference(opt_class, steps: int = 5, **options) -> float:
    """The native CPU step against the reference: weights and every state tensor within 1e-5 relative
    (docs/ALGORITHMS.md section 5). Returns the weights' sparsity, which must be positive (the prox ran)."""
    native, reference = run(opt_class, "cpu", steps, **options), run(opt_class, "torch", steps, **options)
    for p, q in zip(native[:2], reference[:2]):
        scale = q.detach().abs().max().item()
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-5 * scale)
        for key, value in reference[2].state[q].items():
            if torch.is_tensor(value) and value.is_floating_point():
                got = native[2].state[p][key]
                torch.testing.assert_close(got, value, rtol=1e-5, atol=1e-5 * value.abs().max().item(),
                                           msg=lambda m, key=key: f"state {key!r}: {m}")
    sparsity = (native[0] == 0).float().mean().item()
    assert sparsity > 0, f"{opt_class.__name__}: no weight became zero; the comparison did not reach the prox"
    return sparsity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--editable", type=Path, default=None)
    parser.add_argument("--triton", choices=("absent", "present"), default=None)
    parser.add_argument("--cuda-kernels", action="store_true", help="the extension must hold the CUDA kernels")
    args = parser.parse_args()

    import sparse_rda
    import sparse_rda.pruning  # noqa: F401  (the subpackage a listed-packages setup.py once forgot)

    has_triton = importlib.util.find_spec("triton") is not None
    if args.triton is not None:
        assert has_triton == (args.triton == "present"), f"triton is {'' if has_triton else 'not '}installed here"
    check_location(sparse_rda, args.editable)
    check_modules(sparse_rda, has_triton)
    check_backends(sparse_rda, has_triton)
    if args.cuda_kernels:
        from sparse_rda import native

        assert native.has_kernels("cuda"), "the extension was built without its CUDA kernels"
    rda = check_step_matches_reference(sparse_rda.RDA, lr=0.5, lam=0.05, averaging=0.5)
    grda = check_step_matches_reference(sparse_rda.GRDA, lr=0.1, c=0.5, mu=0.55)
    print(f"smoke: sparse_rda {sparse_rda.__version__} from {Path(sparse_rda.__file__).parent}, torch "
          f"{torch.__version__}, triton {'installed' if has_triton else 'absent'}, backends {sparse_rda.backends()}; "
          f"native RDA and GRDA steps match the reference ({rda:.0%} / {grda:.0%} zeros)")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as err:
        sys.exit(f"smoke: FAILED: {err}")
