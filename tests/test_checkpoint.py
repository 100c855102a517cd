"""Compressed checkpoints (sparse_rda.checkpoint): exact round trips in every layout, the layout choice, and bad
files or mismatched models refused with the model left as it was."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import sparse_rda
from sparse_rda import checkpoint

safetensors = pytest.importorskip("safetensors.torch", reason="compressed checkpoints need safetensors")
pytestmark = pytest.mark.triton_free


def sparse_tensor(shape, density, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=gen)
    return torch.where(torch.rand(shape, generator=gen) < density, t, torch.zeros(())).to(dtype)


def bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's raw bits (so NaN payloads compare, and -0.0 differs from +0.0)."""
    return t.contiguous().reshape(-1).view(torch.uint8)


def same_bits_up_to_zero_sign(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.is_floating_point():
        a, b = torch.where(a == 0, torch.zeros_like(a), a), torch.where(b == 0, torch.zeros_like(b), b)
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))


def model(seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(300, 100), nn.ReLU(), nn.BatchNorm1d(100), nn.Linear(100, 10))
    with torch.no_grad():
        m[0].weight.copy_(sparse_tensor(m[0].weight.shape, 0.02, seed=seed))  # index layout
        m[3].weight.copy_(sparse_tensor(m[3].weight.shape, 0.3, seed=seed))  # bitmask layout
    return m


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("density, layout", [(0.0, "index"), (0.01, "index"), (0.2, "bitmask"), (0.6, "bitmask"),
                                             (1.0, "dense")])
def test_round_trip_is_exact_in_every_layout(tmp_path, dtype, density, layout):
    t = sparse_tensor((37, 129), density, dtype)
    t.view(-1)[5], t.view(-1)[6], t.view(-1)[7] = float("nan"), float("inf"), -float("inf")  # stored as values
    if density == 0.0:
        t.zero_()
    summary = sparse_rda.save_sparse({"w": t}, tmp_path / "c.safetensors")
    assert summary["layouts"] == {"w": layout}  # 2-byte values at 60%: 1/8 + 1.2 bytes per element beat 2 too
    loaded = sparse_rda.load_sparse(tmp_path / "c.safetensors")
    assert same_bits_up_to_zero_sign(loaded["w"], t)


def test_the_smallest_layout_wins_and_the_file_shrinks(tmp_path):
    m = model()
    summary = sparse_rda.save_sparse(m, tmp_path / "m.safetensors")
    assert summary["layouts"]["0.weight"] == "index" and summary["layouts"]["3.weight"] == "bitmask"
    assert summary["layouts"]["0.bias"] == "dense" and summary["layouts"]["2.num_batches_tracked"] == "dense"
    torch.save(m.state_dict(), tmp_path / "m.pt")
    assert summary["file_bytes"] < 0.2 * (tmp_path / "m.pt").stat().st_size
    # 30,000 weights at 2%: ~600 values of 4 bytes + 600 int32 indices, not 120 KB
    with safetensors.safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        nnz = int((m[0].weight != 0).sum())
        assert f.get_tensor("0.weight::index").tolist() == m[0].weight.flatten().nonzero().flatten().tolist()
        assert f.get_tensor("0.weight::values").numel() == nnz


def test_negative_zeros_load_as_zeros_and_do_not_cost_space(tmp_path):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(64, 64, generator=gen) * (torch.rand(64, 64, generator=gen) < 0.02)  # the mask multiply leaves -0.0 at negative weights
    assert bool(torch.signbit(w[w == 0]).any())
    summary = sparse_rda.save_sparse({"w": w}, tmp_path / "c.safetensors")
    assert summary["layouts"]["w"] == "index"
    loaded = sparse_rda.load_sparse(tmp_path / "c.safetensors")["w"]
    assert torch.equal(loaded, w) and not bool(torch.signbit(loaded[loaded == 0]).any())


def test_load_into_a_model_matches_and_refreshes_sparse_linear_maps(tmp_path):
    src = nn.Sequential(nn.Linear(128, 128), nn.Linear(128, 4))
    with torch.no_grad():
        src[0].weight[:64].zero_()  # two of four 64x64 tiles dead
    sparse_rda.save_sparse(src, tmp_path / "c.safetensors")
    dst = sparse_rda.sparsify(nn.Sequential(nn.Linear(128, 128), nn.Linear(128, 4)))
    sparse_rda.load_sparse(tmp_path / "c.safetensors", dst)
    for key, t in src.state_dict().items():
        assert torch.equal(dst.state_dict()[key], t), key
    assert dst[0].occupancy.tolist() == [[False, False], [True, True]]


def test_values_dtype_halves_the_values_and_refuses_overflow(tmp_path):
    w = sparse_tensor((100, 100), 0.3)
    full = sparse_rda.save_sparse({"w": w}, tmp_path / "a.safetensors")
    half = sparse_rda.save_sparse({"w": w}, tmp_path / "b.safetensors", values_dtype=torch.bfloat16)
    assert half["file_bytes"] < 0.62 * full["file_bytes"]
    loaded = sparse_rda.load_sparse(tmp_path / "b.safetensors")["w"]
    assert loaded.dtype == torch.float32 and torch.equal(loaded, w.bfloat16().float())
    with pytest.raises(ValueError, match="values_dtype=torch.float16: tensor 'w' has finite values beyond"):
        sparse_rda.save_sparse({"w": w * 1e6}, tmp_path / "c.safetensors", values_dtype=torch.float16)
    with pytest.raises(ValueError, match="values_dtype must be"):
        sparse_rda.save_sparse({"w": w}, tmp_path / "c.safetensors", values_dtype=torch.int8)


def test_odd_tensors_round_trip(tmp_path):
    state = {"scalar": torch.tensor(3.5), "empty": torch.empty(0, 5), "ints": torch.arange(10),
             "mask": torch.rand(9, 7) < 0.5, "strided": sparse_tensor((20, 30), 0.1).t(),
             "odd": sparse_tensor((3, 1, 5), 0.2)}
    state["tied_a"] = state["tied_b"] = sparse_tensor((40, 40), 0.1)  # tied weights: one storage, two keys
    sparse_rda.save_sparse(state, tmp_path / "c.safetensors")
    loaded = sparse_rda.load_sparse(tmp_path / "c.safetensors")
    assert set(loaded) == set(state)
    for key, t in state.items():
        assert same_bits_up_to_zero_sign(loaded[key], t.contiguous()), key


def test_a_plain_safetensors_state_dict_loads_as_dense(tmp_path):
    m = model()
    safetensors.save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp_path / "p.safetensors"))
    other = model(seed=1)
    sparse_rda.load_sparse(tmp_path / "p.safetensors", other)
    for key, t in m.state_dict().items():
        assert torch.equal(other.state_dict()[key], t), key


def snapshot(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in m.state_dict().items()}


def assert_untouched(m: nn.Module, before: dict[str, torch.Tensor]) -> None:
    for key, t in m.state_dict().items():
        assert torch.equal(t, before[key]), f"{key} changed"


def test_mismatched_models_are_refused_and_left_untouched(tmp_path):
    sparse_rda.save_sparse(model(), tmp_path / "c.safetensors")
    wider = nn.Sequential(nn.Linear(300, 101), nn.ReLU(), nn.BatchNorm1d(101), nn.Linear(101, 10))
    before = snapshot(wider)
    with pytest.raises(ValueError, match=r"tensor '0.weight' has shape \(100, 300\), the model's is \(101, 300\)"):
        sparse_rda.load_sparse(tmp_path / "c.safetensors", wider)
    assert_untouched(wider, before)
    fewer = nn.Sequential(nn.Linear(300, 100), nn.ReLU(), nn.Identity(), nn.Linear(100, 10))
    before = snapshot(fewer)
    with pytest.raises(ValueError, match=r"unexpected \['2.bias', '2.num_batches_tracked'"):
        sparse_rda.load_sparse(tmp_path / "c.safetensors", fewer)
    assert_untouched(fewer, before)
    more = nn.Sequential(model(), nn.Linear(10, 2))
    with pytest.raises(ValueError, match=r"missing \['0.0.bias'"):
        sparse_rda.load_sparse(tmp_path / "c.safetensors", more)
    sub = nn.Sequential(nn.Linear(300, 100))  # strict=False: the matching keys load, the rest are ignored
    sparse_rda.load_sparse(tmp_path / "c.safetensors", sub, strict=False)
    assert torch.equal(sub[0].weight, model()[0].weight)


def rewrite(path, out, edit_tensors=None, edit_layouts=None, metadata=None):
    """A copy of a checkpoint with some tensors or metadata changed (a corrupt file of the right format)."""
    with safetensors.safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    layouts = json.loads(meta["tensors"])
    if edit_tensors:
        edit_tensors(tensors)
    if edit_layouts:
        edit_layouts(layouts)
    safetensors.save_file(tensors, str(out), metadata=metadata or dict(meta, tensors=json.dumps(layouts)))


@pytest.mark.parametrize("corruption, message", [
    (dict(edit_tensors=lambda t: t.update({"0.weight::index": t["0.weight::index"].flip(0)})), "must ascend"),
    (dict(edit_tensors=lambda t: t["0.weight::index"].__setitem__(-1, 30000)), r"within \[0, 30000\)"),
    (dict(edit_tensors=lambda t: t.update({"0.weight::values": t["0.weight::values"][:-1]})), "index must be"),
    (dict(edit_tensors=lambda t: t.update({"3.weight::values": t["3.weight::values"][:-1]})),
     "the mask marks .* elements, the file has"),
    (dict(edit_tensors=lambda t: t.update({"3.weight::mask": t["3.weight::mask"][:-1]})), "mask must be 125 uint8"),
    (dict(edit_tensors=lambda t: t.pop("0.bias")), r"lacks \['0.bias'\]"),
    (dict(edit_tensors=lambda t: t.update({"extra": torch.ones(2)})), r"tensors \['extra'\] do not match"),
    (dict(edit_layouts=lambda m: m["0.bias"].update(shape=[99])), "the metadata says torch.float32 .99"),
    (dict(edit_layouts=lambda m: m["0.weight"].update(layout="csr")), "bad metadata entry"),
    (dict(edit_layouts=lambda m: m["0.weight"].update(shape=[-1, 5])), "bad metadata entry"),
    (dict(metadata={"format": "sparse_rda.checkpoint/9", "tensors": "{}"}), "this version reads"),
    (dict(metadata={"format": "sparse_rda.checkpoint/1", "tensors": "{"}), "not JSON"),
])
def test_corrupt_files_are_refused_and_the_model_untouched(tmp_path, corruption, message):
    sparse_rda.save_sparse(model(), tmp_path / "c.safetensors")
    rewrite(tmp_path / "c.safetensors", tmp_path / "bad.safetensors", **corruption)
    m = model(seed=1)
    before = snapshot(m)
    with pytest.raises(ValueError, match=message):
        sparse_rda.load_sparse(tmp_path / "bad.safetensors", m)
    assert_untouched(m, before)


@pytest.mark.parametrize("cut", [1, 8, 100, 5000])
def test_truncated_files_are_refused(tmp_path, cut):
    sparse_rda.save_sparse(model(), tmp_path / "c.safetensors")
    data = (tmp_path / "c.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[:len(data) - cut])
    m = model(seed=1)
    before = snapshot(m)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        sparse_rda.load_sparse(tmp_path / "t.safetensors", m)
    assert_untouched(m, before)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        sparse_rda.load_sparse(tmp_path / "missing.safetensors")


def test_what_cannot_be_saved_is_refused(tmp_path):
    with pytest.raises(TypeError, match="entry 'step' is a int"):
        sparse_rda.save_sparse({"step": 3}, tmp_path / "c.safetensors")
    with pytest.raises(TypeError, match="layout torch.sparse_coo"):
        sparse_rda.save_sparse({"w": torch.eye(3).to_sparse()}, tmp_path / "c.safetensors")
    with pytest.raises(ValueError, match="reserves"):
        sparse_rda.save_sparse({"w::values": torch.ones(3)}, tmp_path / "c.safetensors")


def test_bitmask_packing_order():
    keep = torch.tensor([1, 0, 0, 0, 0, 0, 0, 1, 1, 1], dtype=torch.bool)
    packed = checkpoint._pack_bits(keep)
    assert packed.tolist() == [1 + 128, 3]  # element 8j + i in bit i of byte j
    assert torch.equal(checkpoint._unpack_bits(packed, 10), keep)
