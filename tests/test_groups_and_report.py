"""param_groups and the sparsity report."""

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
    assert {id(p) for p in penalized["params"]} == {id(net.conv.weight), id(net.emb.weight), id(net.fc.weight)}
    assert {id(p) for p in rest["params"]} == {id(net.conv.bias), id(net.bn.weight), id(net.bn.bias),
                                                id(net.fc.bias), id(net.norm.weight), id(net.norm.bias)}
    assert rest["penalize"] is False and rest["weight_decay"] == 0.0 and rest["lr"] == 0.5
    assert "penalize" not in penalized and penalized["lr"] == 0.5
    sparse_rda.RDA(groups)  # accepted as is
    sparse_rda.GRDA(sparse_rda.param_groups(net, c=0.001, mu=0.51))


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
    penalized_numel = 108 + 40 + 8
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
