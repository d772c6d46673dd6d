"""Every criterion ranks a tiny hand-built layer the way its definition says, and soft == hard on the zoo.

The hand-built layers are chosen so that the right answer differs from what plain L1 would pick, so a criterion
that silently fell back to magnitude would fail its test.
"""
import copy
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn

from compression_tool.engine.criteria import CRITERIA, criterion_for_pruner_class, make_criterion
from compression_tool.engine.criteria.data import conv_contributions, greedy_removal_order
from compression_tool.engine.criteria.stats import bn_sparsity, redundancy_rank
from compression_tool.engine.criteria.weight import REDUCTIONS, slice_features
from compression_tool.engine.groups import GroupIndex, activation_sites, output_modules
from compression_tool.engine.masking import group_slices, masked
from compression_tool.engine.thinning import thin
from compression_tool.io.errors import UserError
from tests.zoo_util import build_randomised

TESTED = set()


def ranks(*names):
    """Mark a test as the ranking test of ``names`` (checked against the registry below)."""
    TESTED.update(names)
    return lambda f: f


def linear(rows, bias=None):
    w = torch.tensor(rows, dtype=torch.float32)
    fc = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    with torch.no_grad():
        fc.weight.copy_(w)
        if bias is not None:
            fc.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    return fc


def grp(layer_or_net, name="0"):
    """(index, group) of layer ``name`` in ``layer_or_net`` (a Sequential; a bare layer is wrapped as ``name``)."""
    net = layer_or_net
    if not isinstance(net, nn.Sequential):
        net = nn.Sequential(OrderedDict([(name, layer_or_net)]))
    first = next(iter(net))
    x = torch.randn(2, first.in_features) if isinstance(first, nn.Linear) else torch.randn(2, first.in_channels, 6, 6)
    index = GroupIndex(net, x, prune_outputs=True)
    return index, index.find(name)


def order(name, layer, **kw):
    return make_criterion(name, **kw).order(*grp(layer))


def prepared(name, model, batches, **kw):
    crit = make_criterion(name, cache_dir=None, **kw)
    crit.prepare(model, batches, {"0": model[0]})
    return crit


# ---------------------------------------------------------------- weight statistics

ROWS = [[1.0, 1.0, 1.0], [3.0, 0.0, 0.0], [0.1, -0.1, 0.1], [2.0, -2.0, 0.0]]  # L1 3,3,.3,4; L2 1.7,3,.17,2.8


@ranks("l1", "l2", "conv_all", "conv_avg", "conv_max", "neuron")
def test_magnitude_statistics():
    fc = linear(ROWS)
    assert order("l1", fc) == [2, 0, 1, 3]          # tie 0/1 broken by index
    assert order("conv_all", fc) == [2, 0, 1, 3]
    assert order("l2", fc) == [2, 0, 3, 1]
    assert order("conv_max", fc) == [2, 0, 3, 1]     # max |w|: 1, 3, .1, 2
    avg = make_criterion("conv_avg").channel_scores("0", fc)
    assert torch.allclose(avg, torch.tensor([1.0, 1.0, 0.1, 4 / 3]))
    assert torch.equal(make_criterion("neuron").channel_scores("0", fc), avg)  # a neuron's mean |incoming w|
    conv = nn.Conv2d(1, 2, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[4.0, 0.0], [0.0, 0.0]]], [[[1.0, 1.0], [1.0, 1.5]]]]))
    # filter 0: one 4; filter 1: 1, 1, 1, 1.5 -> L1 4 < 4.5 but L2 4 > 2.3 and max 4 > 1.5
    assert order("l1", conv) == [0, 1] and order("conv_avg", conv) == [0, 1]
    assert order("l2", conv) == [1, 0] and order("conv_max", conv) == [1, 0]


def conv_bn_conv(root, gammas, columns):
    """conv(1 -> C, 1x1) -> BN -> ReLU -> conv(C -> 2, 1x1): root filter, gamma and consumer column per channel."""
    c = len(root)
    net = nn.Sequential(nn.Conv2d(1, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, 2, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor(root).view(c, 1, 1, 1))
        net[1].weight.copy_(torch.tensor(gammas))
        net[3].weight.copy_(torch.tensor(columns).t().reshape(2, c, 1, 1))
    return net.eval()


def test_group_reduction_reads_every_coupled_slice():
    # ch0: small filter and gamma but the consumer weighs it 10x; ch1, ch2: unit filter and gamma, faint consumers
    net = conv_bn_conv([0.1, 1.0, 1.0], [0.1, 1.0, 1.0], [[5.0, 5.0], [0.5, 0.5], [0.5, 0.5]])
    index, g = grp(net)
    first, mean, total, top = (make_criterion("l1", reduction=r) for r in ("first", "mean", "sum", "max"))
    assert first.order(index, g) == [0, 1, 2]                  # Distiller: the leading filters only
    # per-slice L1 / slice mean: filter (.14, 1.43, 1.43), gamma (.14, 1.43, 1.43), columns (2.5, .25, .25)
    assert torch.allclose(mean(index, g), torch.tensor([2.786, 3.107, 3.107], dtype=torch.float64) / 3, atol=1e-3)
    assert mean.order(index, g) == [0, 1, 2] == total.order(index, g)
    assert top.order(index, g) == [1, 2, 0]                     # max: ch0's consumer column outweighs the rest
    assert torch.allclose(total(index, g), 3 * mean(index, g))
    assert make_criterion("fpgm", reduction="max").order(index, g)[-1] == 0   # far from the others in two slices
    with pytest.raises(UserError, match="reduction"):
        make_criterion("l2", reduction="median")


def test_group_reduction_maps_flattened_columns_to_their_channel():
    # conv(1 -> 2) on 2x2 -> flatten -> linear(8 -> 3): each channel owns 4 input columns of the linear
    net = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.Flatten(), nn.Linear(8, 3, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([1.0, 2.0]).view(2, 1, 1, 1))
        net[2].weight.fill_(1.0)
        net[2].weight[:, 4:] = 0.0                              # channel 1's columns do nothing
    index = GroupIndex(net, torch.randn(2, 1, 2, 2), prune_outputs=True)
    g = index.find("0")
    feats = slice_features(index, g)
    assert [tuple(f.shape) for f in feats] == [(2, 1), (2, 12)]
    assert make_criterion("l1", reduction="first").order(index, g) == [0, 1]
    assert make_criterion("l1", reduction="mean").order(index, g) == [1, 0]


def test_every_reduction_scores_every_group_of_the_zoo(zoo_model):
    name, model, x, make_index = zoo_model
    index = make_index(model)
    for cname in ("l1", "l2", "fpgm"):
        for r in REDUCTIONS:
            crit = make_criterion(cname, reduction=r)
            for g in index.groups:
                s = crit(index, g)
                assert s.shape == (g.channels,) and torch.isfinite(s).all(), (name, cname, r, g.name)


@ranks("conv_threshold")
def test_conv_threshold_counts_large_weights():
    fc = linear(ROWS)
    # |w| > 0.5 per row: 3, 1, 0, 2
    assert order("conv_threshold", fc, threshold=0.5) == [2, 1, 3, 0]
    assert make_criterion("conv_threshold", threshold=0.5).channel_scores("0", fc).floor().tolist() == [3, 1, 0, 2]
    with pytest.raises(UserError):
        make_criterion("conv_threshold", threshold=-1)


@ranks("random")
def test_random_is_seeded_per_layer():
    fc = nn.Linear(3, 64)
    a, b, c = (make_criterion("random", seed=s) for s in (0, 0, 1))
    assert a.order(*grp(fc, "x")) == b.order(*grp(fc, "x"))
    assert sorted(a.order(*grp(fc, "x"))) == list(range(64))
    assert a.order(*grp(fc, "x")) != c.order(*grp(fc, "x"))
    assert a.order(*grp(fc, "x")) != a.order(*grp(fc, "y"))     # each layer its own draw


@ranks("fpgm")
def test_fpgm_removes_the_filter_nearest_the_geometric_median():
    # four filters around (3, 3), one at (3, 3) itself (their geometric median), one small far-away filter:
    # FPGM drops the median first and keeps the outlier longest; L1 would drop the small one first
    fc = linear([[5.0, 3.0], [1.0, 3.0], [3.0, 5.0], [3.0, 1.0], [3.0, 3.0], [0.2, 0.2]])
    assert order("fpgm", fc)[0] == 4
    assert order("fpgm", fc)[-1] == 5
    assert order("l1", fc)[0] == 5


@ranks("conv_similarity")
def test_conv_similarity_drops_the_weaker_of_the_most_similar_pair():
    # f2 is almost f0 (and weaker); f3 is tiny but unlike anything: L1 would drop it first
    fc = linear([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.9, 0.05, 0.0], [0.0, 0.0, -0.2]])
    assert order("conv_similarity", fc)[0] == 2
    assert order("l1", fc)[0] == 3


def test_redundancy_rank_is_greedy():
    # points on a line: 0 and 1 closest (1 weaker) -> 1; then 2 and 3 -> 3 weaker; then 0 vs 2 -> 2 weaker
    pts = torch.tensor([[0.0], [0.1], [1.0], [1.3]])
    rank = redundancy_rank(torch.cdist(pts, pts), torch.tensor([5.0, 1.0, 2.0, 1.5]))
    assert rank.tolist() == [3.0, 0.0, 2.0, 1.0]


# ---------------------------------------------------------------- BN criteria

def conv_bn_net(gammas, betas):
    net = nn.Sequential(nn.Conv2d(1, len(gammas), 1, bias=False), nn.BatchNorm2d(len(gammas)), nn.ReLU(),
                        nn.Conv2d(len(gammas), 2, 1)).eval()
    with torch.no_grad():
        # L1: last smallest
        net[0].weight.copy_(torch.arange(len(gammas), 0, -1, dtype=torch.float32).view(-1, 1, 1, 1))
        net[1].weight.copy_(torch.tensor(gammas))
        net[1].bias.copy_(torch.tensor(betas))
    return net


@ranks("bn")
def test_bn_gamma_ranks_by_absolute_gamma():
    net = conv_bn_net([1.0, -0.05, 0.5, 2.0], [0.0, 0.0, 0.0, 0.0])
    crit = prepared("bn", net, [torch.randn(2, 1, 4, 4)])
    assert crit.order(*grp(net)) == [1, 2, 0, 3]
    assert order("l1", net[0])[0] == 3


def test_bn_sums_gamma_over_a_residual_group():
    model, size = build_randomised("digits_net")
    gi = GroupIndex(model, torch.randn(1, *size))
    stem = gi.find("stem.0.weight")
    crit = make_criterion("bn")
    crit.prepare(model, [torch.randn(2, *size)], {stem.root_name: stem.root})
    expected = model.stem[1].weight.abs() + model.block.bn2.weight.abs()  # both BNs write the residual stream
    assert torch.allclose(crit(gi, stem), expected.detach())
    with pytest.raises(UserError, match="prepare"):
        make_criterion("bn").channel_scores(stem.root_name, stem.root)


@ranks("bn_similarity")
def test_bn_similarity_drops_the_weaker_twin():
    # channels 0 and 2 have almost the same (gamma, beta); 2 has the smaller |gamma|. bn would drop 1 first.
    net = conv_bn_net([1.0, 0.2, 0.9, 2.0], [0.5, -3.0, 0.5, 2.0])
    crit = prepared("bn_similarity", net, [torch.randn(2, 1, 4, 4)])
    assert crit.order(*grp(net))[0] == 2
    assert prepared("bn", net, [torch.randn(2, 1, 4, 4)]).order(*grp(net))[0] == 1


def test_bn_sparsity_adds_the_l1_subgradient_while_active():
    net = conv_bn_net([1.0, -0.5, 0.25], [0.0, 0.0, 0.0])
    with bn_sparsity(net, 0.1):
        (net[1].weight * 0).sum().backward()
    assert torch.allclose(net[1].weight.grad, torch.tensor([0.1, -0.1, 0.1]))
    net[1].weight.grad = None
    (net[1].weight * 0).sum().backward()                       # hooks removed on exit
    assert torch.equal(net[1].weight.grad, torch.zeros(3))
    with pytest.raises(UserError):
        with bn_sparsity(nn.Linear(2, 2), 0.1):
            pass


# ---------------------------------------------------------------- data-driven criteria

def positive_inputs(n=64, d=2, seed=0):
    return torch.rand(n, d, generator=torch.Generator().manual_seed(seed)) + 0.1


@ranks("apoz")
@pytest.mark.parametrize("act", [nn.ReLU, lambda: nn.PReLU(3, init=0.1)])
def test_apoz_counts_zeros_after_the_nonlinearity(act):
    # inputs > 0: ch0 = x0 + x1 > 0 always, ch1 = -(x0 + x1) is always zero after ReLU, ch2 = x0 - x1 half the time
    net = nn.Sequential(linear([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]]), nn.BatchNorm1d(3), act(), nn.Linear(3, 2))
    net.eval()
    crit = prepared("apoz", net, [positive_inputs(), positive_inputs(seed=1)])
    apoz = crit.apoz["0"]
    assert apoz[0].item() == 0.0 and apoz[1].item() == 1.0
    assert 0.3 < apoz[2].item() < 0.7
    assert crit.order(*grp(net))[0] == 1
    assert activation_sites(net, positive_inputs(), {"0": net[0]})["0"] is net[2]  # past the BN, after the act


def test_activation_site_skips_a_shared_activation():
    relu = nn.ReLU()
    net = nn.Sequential(nn.Linear(2, 3), relu, nn.Linear(3, 3), relu, nn.Linear(3, 1))
    sites = activation_sites(net, torch.randn(4, 2), {"0": net[0], "2": net[2]})
    assert sites == {"0": net[0], "2": net[2]}  # a module run twice would mix two layers' channels


@ranks("taylor")
def test_taylor_is_activation_times_gradient():
    # ch2 has the largest activation but the next layer ignores it (zero gradient): it goes first, L1 keeps it
    net = nn.Sequential(linear([[1.0, 1.0], [0.1, 0.1], [3.0, 3.0]]), nn.ReLU(), linear([[1.0, 1.0, 0.0]]))
    crit = prepared("taylor", net, [positive_inputs()])
    assert crit.order(*grp(net)) == [2, 1, 0]
    assert crit.scores["0"][2].item() == 0.0
    x = positive_inputs()
    # energy loss 0.5 * mean(y^2), y = a0 + a1: |a_c * dL/da_c| = a_c * y / N per sample, averaged over samples
    a = torch.relu(net[0](x)).detach()
    y = a[:, 0] + a[:, 1]
    expected = (a[:, :2] * y[:, None] / len(x)).mean(0)
    assert torch.allclose(crit.scores["0"][:2], expected, rtol=1e-5)


def test_taylor_uses_labels_when_given():
    net = nn.Sequential(linear([[1.0, 1.0], [0.5, -0.5], [2.0, 0.0]]), nn.ReLU(), nn.Linear(3, 3))
    x = positive_inputs()
    a = make_criterion("taylor")
    a.prepare(net, [(x, torch.zeros(len(x), dtype=torch.long))], {"0": net[0]})
    b = make_criterion("taylor")
    b.prepare(net, [x], {"0": net[0]})
    assert not torch.allclose(a.scores["0"], b.scores["0"])


@ranks("thinet")
def test_thinet_removes_channels_that_cancel_in_the_next_layer():
    # ch0 and ch1 carry the same signal; the next layer adds it with +1 and -1, so together they contribute
    # nothing. ch2 is small. ThiNet removes {2, 0, 1} and keeps 3 (small root row, but the next layer weighs it
    # by 4); L1 of the root rows would remove 2 and 3 first.
    x = torch.randn(128, 3, generator=torch.Generator().manual_seed(0))
    root = linear([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.1, 0.0], [0.0, 0.0, 0.5]])
    net = nn.Sequential(root, linear([[1.0, -1.0, 1.0, 4.0]]))
    crit = prepared("thinet", net, [x])
    assert crit.select(*grp(root), 3) == [0, 1, 2]
    assert crit.order(*grp(root))[0] == 2
    assert order("l1", root)[:2] == [2, 3]


def test_thinet_through_a_convolution():
    torch.manual_seed(0)
    root = nn.Conv2d(2, 3, 1, bias=False)
    nxt = nn.Conv2d(3, 2, 3, stride=2, padding=1, bias=False)
    with torch.no_grad():
        root.weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]).view(3, 2, 1, 1))
        k, k2 = torch.randn(2, 3, 3), torch.randn(2, 3, 3)                     # (out, kh, kw)
        nxt.weight.copy_(torch.stack([k, -k, 0.01 * k2], 1))  # ch0 + ch1 cancel, ch2 faint
    net = nn.Sequential(root, nxt)
    crit = prepared("thinet", net, [torch.randn(8, 2, 6, 6)])
    assert crit.order(*grp(root))[0] == 2 and crit.select(*grp(root), 2) != [0, 1]


def test_conv_contributions_sum_to_the_output():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=1, bias=True)
    x = torch.randn(2, 3, 7, 7)
    y = nn.functional.conv2d(x, conv.weight, None, conv.stride, conv.padding)
    img, o, i, j = (torch.tensor(v) for v in ([0, 1, 1], [3, 0, 2], [0, 3, 1], [2, 0, 3]))
    z = conv_contributions(conv, x, img, o, i, j)
    assert torch.allclose(z.sum(1), y[img, o, i, j], atol=1e-5)


def test_greedy_removal_order_by_hand():
    z = torch.tensor([[1.0, -1.0, 0.1, 3.0], [2.0, -2.0, -0.1, 1.0]]).numpy()
    # step 0: smallest column (2); step 1: 0 (|z2+z0| = |1.1, 1.9|) vs 1 (|-0.9, -2.1|): 0; step 2: 1 cancels
    assert greedy_removal_order(z).tolist() == [1.0, 2.0, 0.0, 3.0]


@ranks("hrank")
def test_hrank_removes_low_rank_feature_maps():
    # input channel 1 is constant per image (rank-1 maps): out1 = 5 * that (largest L1, rank 1)
    x = torch.randn(4, 2, 5, 5)
    x[:, 1] = torch.arange(4.0).view(4, 1, 1) + 1
    conv = nn.Conv2d(2, 3, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 5.0], [0.5, 0.0]]).view(3, 2, 1, 1))
    net = nn.Sequential(conv, nn.ReLU(), nn.Conv2d(3, 1, 1))
    crit = prepared("hrank", net, [x])
    assert crit.order(*grp(conv))[0] == 1
    assert order("l1", conv)[0] == 2


def conv_bn_relu(betas, c_in=1):
    """conv(c_in -> 3, 1x1, unit filters) -> BN(beta) -> ReLU -> conv(3 -> 1): pre-BN maps are x itself."""
    net = nn.Sequential(nn.Conv2d(c_in, 3, 1, bias=False), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 1, 1)).eval()
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[1].bias.copy_(torch.tensor(betas))
    return net


def test_hrank_ranks_the_maps_after_bn_and_relu(caplog):
    # every raw conv output is the same full-rank map; after BN's shift and the ReLU, ch1 is all zero (rank 0),
    # ch0 untouched: the pre-BN ranking (the old behaviour) tied all three and cut ch0 first
    x = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    net = conv_bn_relu([10.0, -100.0, 0.0])
    crit = prepared("hrank", net, [x])
    assert crit.order(*grp(net))[0] == 1
    assert crit.ranks["0"][1] == 0 and crit.ranks["0"][0] == 6
    with caplog.at_level("WARNING"):
        same = conv_bn_relu([10.0, 10.0, 10.0])
        prepared("hrank", same, [x]).order(*grp(same))
    assert "0.weight" in caplog.text and "same mean rank" in caplog.text


def test_hrank_cache_is_keyed_on_the_data_and_the_weights(tmp_path):
    net = conv_bn_relu([10.0, -100.0, 0.0])
    full = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    flat = torch.ones(4, 1, 6, 6)                            # rank-1 maps

    def ranks(model, x):
        crit = make_criterion("hrank", cache_dir=str(tmp_path), limit=1)
        crit.prepare(model, [x], {"0": model[0]})
        return crit.ranks["0"].tolist()

    assert ranks(net, full) == [6.0, 0.0, ranks(net, full)[2]]
    assert len(list(tmp_path.iterdir())) == 1                # the second call read the cache
    assert ranks(net, flat) == [1.0, 0.0, 1.0]               # other data: not the cached ranks
    with torch.no_grad():
        net[1].bias[0] = -100.0
    assert ranks(net, full)[0] == 0.0                        # other weights: not the cached ranks
    assert ranks(net, full[:, :, :4, :4])[2] <= 4            # other input size: its own entry
    assert len(list(tmp_path.iterdir())) == 4


def test_every_criterion_has_a_ranking_test_and_a_pruner_class():
    assert set(CRITERIA) <= TESTED, f"criteria without a hand-built ranking test: {set(CRITERIA) - TESTED}"
    for name, cls in CRITERIA.items():
        assert criterion_for_pruner_class(cls.pruner_class) == name


def test_data_criteria_refuse_empty_data_and_unprepared_use():
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    for name in ("apoz", "taylor", "thinet", "bn"):
        with pytest.raises(UserError, match="no batches"):
            make_criterion(name).prepare(net, [], {"0": net[0]})
    with pytest.raises(UserError, match="prepare"):
        make_criterion("apoz").channel_scores("0", net[0])


# ---------------------------------------------------------------- soft == hard for every criterion on the zoo

ZOO = ["digits_net", "resnet20", "mobilenet_v2", "mobilefacenet"]


@pytest.fixture(scope="module", params=ZOO)
def zoo_model(request):
    model, size = build_randomised(request.param, seed=1)
    model = model.double()
    x = torch.randn(3, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    names = {m: n for n, m in model.named_modules()}
    outputs = [names[m] for m in output_modules(model, x[:1])]
    return request.param, model, x, lambda m: GroupIndex(m, x[:1], ignore=outputs, prune_outputs=True)


def test_soft_equals_hard_for_every_criterion(zoo_model):
    name, model, x, make_index = zoo_model
    index = make_index(model)  # output layers found once: every index names the same groups
    roots = {g.root_name: g.root for g in index.groups}
    with torch.no_grad():
        full = model(x)
    checked = []
    for cname in sorted(CRITERIA):
        crit = make_criterion(cname, cache_dir=None, limit=1, seed=3)
        if crit.needs_data:
            crit.prepare(model, [x], roots)
        pruned = {g.name: crit.select(index, g, g.n_prune(0.4)) for g in index.groups}
        assert all(len(pruned[g.name]) == g.n_prune(0.4) for g in index.groups), cname
        if pruned in checked:
            continue  # the same channels as a criterion already checked (l1 / conv_all / conv_avg / neuron)
        checked.append(pruned)
        slices = [s for g in index.groups for s in group_slices(index, g, pruned[g.name])]
        with masked(slices), torch.no_grad():
            soft = model(x)
        hard = copy.deepcopy(model)
        thin(make_index(hard), pruned)
        with torch.no_grad():
            diff = (soft - hard(x)).abs().max().item()
        assert diff <= 1e-4, f"{name}/{cname}: masked and thinned outputs differ by {diff}"
        assert (full - soft).abs().max().item() > 1e-4, f"{name}/{cname}: pruning changed nothing"
    assert len(checked) >= len(CRITERIA) - 4, "criteria that should differ picked the same channels"
    with torch.no_grad():
        assert torch.equal(model(x), full)  # the masks were undone: criteria saw the same model each time


# ---------------------------------------------------------------- through pruning.py

def test_method_flag_and_yaml_pruner_class_reach_the_criteria(tmp_path):
    import model_define as md
    import pruning
    from compression_tool.engine.checkpoint import load_model
    from compression_tool.engine.schedule import build_schedule, write_schedule
    torch.manual_seed(0)
    ckpt = tmp_path / "digits_net.pth"
    torch.save({"state_dict": md.get_model("digits_net").state_dict()}, ckpt)
    common = ["--model", "digits_net", "--best_model_path", str(ckpt), "--work_space", str(tmp_path / "ws"),
              "--eval_batches", "1", "--limit", "1"]
    for method in ("apoz", "thinet", "bn"):
        out = tmp_path / f"{method}.csv"
        pruning.main(["--mode", "sa", "--method", method, "--sparsities", "0,0.5", "--output", str(out), *common])
        rows = out.read_text().splitlines()
        assert rows[0].startswith("parameter,sparsity") and len(rows) == 1 + 2 * 4, method
    doc = build_schedule({"block.conv1.weight": 0.5}, "bn_similarity", "digits_net", "digits", [1, 16, 16])
    assert doc["pruners"]["filter_pruner_50"]["class"] == "BNSimilarityStructureParameterPruner"
    yml = write_schedule(doc, tmp_path / "s.yaml")
    pt = tmp_path / "p.pth"
    pruning.main(["--mode", "prune", "--yaml", str(yml), "--save_model_pt", "--output", str(pt), *common])
    model, _ = load_model(pt)
    assert model.block.conv1.out_channels == 8


def test_reduction_flag_reaches_the_weight_criteria():
    import argparse

    from compression_tool.apps.workflow import configured_criterion
    from compression_tool.cli.common import add_criterion_args, criterion_config
    from compression_tool.engine.criteria.weight import DEFAULT_REDUCTION

    p = argparse.ArgumentParser()
    add_criterion_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work_space", default="ws")
    assert criterion_config(p.parse_args([])).reduction == DEFAULT_REDUCTION
    cfg = criterion_config(p.parse_args(["--method", "fpgm", "--reduction", "max"]))
    assert configured_criterion(cfg, "m").reduction == "max"
    assert f"default {DEFAULT_REDUCTION}" in " ".join(p.format_help().split())
    with pytest.raises(SystemExit):
        p.parse_args(["--reduction", "median"])
