"""param_groups and the sparsity report."""

import pytest
import torch
from torch import nn

import sparse_rda


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.emb = nn.Embedding(10, 4)
        self.fc = nn.Linear(4, 2)
        self.norm = nn.LayerNorm(2)
        self.shared = self.fc  # the same parameters under two names


def test_param_groups_split_weights_from_biases_and_norms():
    net = Net()
    groups = sparse_rda.param_groups(net, lr=0.5, unpenalized={"weight_decay": 0.0})
    penalized, rest = groups
    assert {id(p) for p in penalized["params"]} == {id(net.conv.weight), id(net.fc.weight)}
    assert {id(p) for p in rest["params"]} == {id(net.conv.bias), id(net.bn.weight), id(net.bn.bias),
                                                id(net.emb.weight), id(net.fc.bias), id(net.norm.weight),
                                                id(net.norm.bias)}
    assert rest["penalize"] is False and rest["weight_decay"] == 0.0 and rest["lr"] == 0.5
    assert "penalize" not in penalized and penalized["lr"] == 0.5
    sparse_rda.RDA(groups)  # accepted as is
    sparse_rda.GRDA(sparse_rda.param_groups(net, c=0.001, mu=0.51))


class TinyGPT(nn.Module):
    """A token embedding tied to the output head, attention, an MLP of SparseLinear, an LSTM."""

    def __init__(self):
        super().__init__()
        self.tok_emb = nn.Embedding(50, 16)
        self.ln = nn.LayerNorm(16)
        self.attn = nn.MultiheadAttention(16, 2)
        self.mlp = nn.Sequential(sparse_rda.SparseLinear(16, 32, block=(16, 16)), nn.GELU(), nn.Linear(32, 16))
        self.rnn = nn.LSTM(16, 16)
        self.head = nn.Linear(16, 50, bias=False)
        self.head.weight = self.tok_emb.weight


def penalized_of(model, **choice):
    return set(sparse_rda.groups.penalized_names(model, **choice))


def test_linear_conv_attention_and_rnn_weights_are_penalized_embeddings_are_not():
    matmuls = {"attn.in_proj_weight", "attn.out_proj.weight", "mlp.0.weight", "mlp.2.weight", "rnn.weight_ih_l0",
               "rnn.weight_hh_l0"}
    assert penalized_of(TinyGPT()) == matmuls  # the tied embedding/head is spared: it is an embedding too
    groups = sparse_rda.param_groups(TinyGPT())
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in TinyGPT().parameters())


def test_include_exclude_and_layers_choose_other_parameters():
    model = TinyGPT()
    assert penalized_of(model, include="head.weight") == penalized_of(model) | {"tok_emb.weight"}  # any alias
    assert penalized_of(model, include=["tok_emb.*"], exclude="rnn.*") == (
        penalized_of(model) - {"rnn.weight_ih_l0", "rnn.weight_hh_l0"} | {"tok_emb.weight"})
    assert penalized_of(model, exclude="*") == set()
    assert penalized_of(model, layers=[nn.Linear]) == {"attn.out_proj.weight", "mlp.0.weight", "mlp.2.weight"}
    assert penalized_of(model, layers={nn.LayerNorm: ("weight",)}) == set()  # 1-d: only by include
    assert penalized_of(model, layers=[], include="ln.weight") == {"ln.weight"}
    penalized, rest = sparse_rda.param_groups(model, include="tok_emb.weight", lr=0.5)
    assert any(p is model.tok_emb.weight for p in penalized["params"])
    assert not any(p is model.tok_emb.weight for p in rest["params"])


def test_bad_choices_name_the_keyword():
    model = TinyGPT()
    with pytest.raises(ValueError, match="include: 'tok_embedding.weight' matches no parameter"):
        sparse_rda.param_groups(model, include="tok_embedding.weight")
    with pytest.raises(TypeError, match="layers must be nn.Module classes"):
        sparse_rda.param_groups(model, layers=["Linear"])
    with pytest.raises(TypeError, match="exclude must be parameter names"):
        sparse_rda.param_groups(model, exclude=[3])


def test_sparsity_counts_exact_zeros_and_prints_a_table():
    net = Net()
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(1.0)
        net.conv.weight[:2] = 0.0  # 54 of 108
        net.fc.bias.zero_()  # 2, unpenalized
    report = sparse_rda.sparsity(net)
    rows = {r.name: r for r in report.tensors}
    assert rows["conv.weight"].zeros == 54 and rows["conv.weight"].penalized
    assert rows["fc.bias"].zeros == 2 and not rows["fc.bias"].penalized
    penalized_numel = 108 + 8  # conv and fc weights; the embedding is spared
    assert report.penalized == 54 / penalized_numel
    total_numel = sum(p.numel() for p in net.parameters())
    assert report.total == 56 / total_numel
    text = str(report)
    assert "conv.weight" in text and "total penalized" in text and "total all" in text and "50.00%" in text


def test_sparsity_uses_the_optimizers_counts():
    net = Net()
    opt = sparse_rda.RDA(sparse_rda.param_groups(net), lam=1.0)
    with torch.no_grad():
        net.conv.weight[0] = 0.0
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    report = sparse_rda.sparsity(net, opt)
    assert report.tensors == sparse_rda.sparsity(net).tensors
    assert report.penalized > 0.5
