"""Property-based: the reference and the native CPU kernels against the spec over random shapes and
hyper-parameters."""

import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import sparse_rda
from drive import make_params, run_side_by_side
from test_grda import check_against_spec as check_grda
from test_rda import check_against_spec as check_rda

shapes = st.lists(st.integers(1, 6), min_size=1, max_size=4).map(tuple)
time_scales = st.one_of(st.none(), st.just(0.0), st.floats(0.5, 50.0))

rda_options = st.fixed_dictionaries({
    "lr": st.floats(0.0, 2.0),
    "lam": st.floats(0.0, 1e-2),
    "momentum_time": time_scales,
    "reweight_time": time_scales,
    "max_factor": st.floats(1.0, 1000.0),
    "reweight": st.booleans(),
    "averaging": st.floats(0.0, 1.0),
    "weight_decay": st.floats(0.0, 1e-2),
    "granularity": st.sampled_from(["element", "kernel", "channel", ("block", 2, 3)]),
    "sparsify_1d": st.booleans(),
    "maximize": st.booleans(),
})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tensor_shapes=st.lists(shapes, min_size=1, max_size=4), options=rda_options, seed=st.integers(0, 2**31 - 1))
def test_rda_matches_the_spec(tensor_shapes, options, seed, backend):
    assume(backend == "torch" or not isinstance(options["granularity"], tuple))  # block mode: reference only
    torch.manual_seed(seed)
    params = make_params(tensor_shapes, zero_fraction=0.25)
    run_side_by_side(sparse_rda.RDA, params, 5, group_kwargs=options, check=check_rda, backend=backend)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tensor_shapes=st.lists(shapes, min_size=1, max_size=4), lr=st.floats(0.0, 0.5), c=st.floats(0.0, 0.01),
       mu=st.floats(0.501, 1.0), seed=st.integers(0, 2**31 - 1))
def test_grda_matches_the_spec(tensor_shapes, lr, c, mu, seed, backend):
    torch.manual_seed(seed)
    params = make_params(tensor_shapes)
    run_side_by_side(sparse_rda.GRDA, params, 5, group_kwargs=dict(lr=lr, c=c, mu=mu), check=check_grda,
                     backend=backend)
