"""I3D: inflation of 2D ResNets, kernel layout, first-conv adaptation, partial BN, gradients."""

import inspect

import pytest
import torch
import torchvision
from torch import nn

from mml.models.backbones import tsm_resnet50
from mml.models.i3d import I3D, i3d_resnet18, i3d_resnet50, inflate_resnet


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny 32 px clips gain nothing from intra-op threads, and on a busy 2-core machine the
    spinning OpenMP workers made this file 4x slower (26 s instead of 6 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _conv3d(module: nn.Module) -> nn.Conv3d:
    assert isinstance(module, nn.Conv3d), type(module)
    return module


@pytest.mark.parametrize("build", [i3d_resnet18, i3d_resnet50])
@pytest.mark.parametrize("in_channels", [3, 10, 15])
def test_shapes_and_features(build, in_channels):
    torch.manual_seed(0)
    model = build(num_classes=5, in_channels=in_channels).eval()
    x = torch.randn(2, 4, in_channels, 32, 32)
    with torch.no_grad():
        logits = model(x)
        same, fmap = model.forward_with_features(x)
    assert isinstance(model, I3D)
    assert logits.shape == (2, 5)
    assert torch.equal(logits, same)
    assert fmap.shape == (2, model.fc.in_features, 4, 1, 1)  # T kept, 32 px -> 1 px


def test_builders_share_the_tsm_signature():
    tsm = inspect.signature(tsm_resnet50).parameters
    for build in (i3d_resnet18, i3d_resnet50):
        params = inspect.signature(build).parameters
        assert [(p.name, p.default) for p in params.values()] == [
            (p.name, p.default) for p in tsm.values()
        ]


def _randomise_bn_stats(net: nn.Module) -> None:
    """Non-trivial BN statistics, so the test also checks that inflation copies them."""
    for bn in net.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
            nn.init.uniform_(bn.weight, 0.5, 1.5)
            nn.init.uniform_(bn.bias, -0.1, 0.1)


def _trunk_2d(net: torchvision.models.ResNet, x: torch.Tensor) -> torch.Tensor:
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    return net.layer4(net.layer3(net.layer2(net.layer1(x))))


# Temporal receptive radius: every conv on the main path adds (kt - 1) // 2 frames each side:
# conv1 +-2, plus +-1 per inflated block (blocks 0, 2, ... of each stage). ResNet-18 (2, 2, 2, 2
# blocks): 2 + 4 = 6; ResNet-50 (3, 4, 6, 3 blocks): 2 + 2 + 2 + 3 + 2 = 11. A clip of
# T >= 2 * radius + 1 frames has slices radius .. T - radius - 1 that never see the padding.
@pytest.mark.parametrize("depth, radius, t", [(18, 6, 16), (50, 11, 24)])
def test_boring_video_gives_the_2d_activations(depth, radius, t):
    torch.manual_seed(0)
    net = getattr(torchvision.models, f"resnet{depth}")()
    with torch.no_grad():
        _randomise_bn_stats(net)
    net.eval()
    trunk = inflate_resnet(net).eval()
    convs = [m for m in trunk.modules() if isinstance(m, nn.Conv3d)]
    assert sum((m.kernel_size[0] - 1) // 2 for m in convs) == radius
    frame = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        want = _trunk_2d(net, frame)
        got = trunk(frame.unsqueeze(2).expand(1, 3, t, 32, 32))
    assert got.shape == (1, net.fc.in_features, t, 1, 1)
    scale = want.abs().max()
    for i in range(radius, t - radius):
        torch.testing.assert_close(got[:, :, i], want, rtol=1e-4, atol=1e-4 * scale)
    # The border slices do see the zero padding: proof that the comparison above can fail.
    assert not torch.allclose(got[:, :, 0], want, rtol=1e-4, atol=1e-4 * scale)


def test_inflation_keeps_torchvision_names_and_leaves_the_2d_net_alone():
    net = torchvision.models.resnet50()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    trunk = inflate_resnet(net)
    names_2d = {k for k in before if not k.startswith("fc.")}
    assert set(trunk.state_dict()) == names_2d
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    tensors_2d = {t.data_ptr() for t in net.state_dict().values()}
    assert not tensors_2d & {t.data_ptr() for t in trunk.state_dict().values()}  # no sharing
    assert isinstance(net.conv1, nn.Conv2d)
    w2d, w3d = net.conv1.weight, trunk.conv1.weight
    assert torch.allclose(w3d.sum(dim=2), w2d, atol=1e-6)  # W / kt, kt times


def test_resnet50_kernels_follow_the_nonlocal_i3d_layout():
    trunk = i3d_resnet50(num_classes=3).backbone
    stem = _conv3d(trunk.conv1)
    assert (stem.kernel_size, stem.stride, stem.padding) == ((5, 7, 7), (1, 2, 2), (2, 3, 3))
    assert trunk.maxpool.kernel_size == (1, 3, 3) and trunk.maxpool.stride == (1, 2, 2)
    for layer in (trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4):
        for i, block in enumerate(layer):
            conv1, conv2, conv3 = _conv3d(block.conv1), _conv3d(block.conv2), block.conv3
            want = ((3, 1, 1), (1, 0, 0)) if i % 2 == 0 else ((1, 1, 1), (0, 0, 0))
            assert (conv1.kernel_size, conv1.padding) == want
            assert conv2.kernel_size == (1, 3, 3) and conv2.stride[0] == 1
            assert _conv3d(conv3).kernel_size == (1, 1, 1)
            if block.downsample is not None:
                down = _conv3d(block.downsample[0])
                assert down.kernel_size == (1, 1, 1) and down.stride[0] == 1
    assert trunk.layer2[0].conv2.stride == (1, 2, 2)
    assert trunk.layer2[0].downsample[0].stride == (1, 2, 2)
    assert not any(isinstance(m, nn.BatchNorm2d | nn.Conv2d) for m in trunk.modules())


def test_resnet18_kernels_alternate_3x3x3_and_1x3x3():
    trunk = i3d_resnet18(num_classes=3).backbone
    for layer in (trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4):
        first, second = layer
        assert _conv3d(first.conv1).kernel_size == (3, 3, 3)
        assert first.conv1.padding == (1, 1, 1)
        assert _conv3d(second.conv1).kernel_size == (1, 3, 3)
        assert _conv3d(first.conv2).kernel_size == (1, 3, 3)


def test_first_conv_is_adapted_to_the_channel_mean():
    torch.manual_seed(0)
    rgb = i3d_resnet18(num_classes=4)
    torch.manual_seed(0)
    flow = i3d_resnet18(num_classes=4, in_channels=10)
    w3, w10 = rgb.backbone.conv1.weight, flow.backbone.conv1.weight
    assert w10.shape == (64, 10, 5, 7, 7)
    for i in range(10):
        assert torch.allclose(w10[:, i], w3.mean(dim=1))
    assert torch.equal(rgb.backbone.layer3[0].conv1.weight, flow.backbone.layer3[0].conv1.weight)


def test_partial_bn_freezes_all_but_first_bn():
    model = i3d_resnet18(num_classes=4, partial_bn=True).train()
    bns = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm3d)]
    assert len(bns) == 1 + 2 * 8 + 3  # stem, two per block, three downsamples
    assert bns[0].training and bns[0].weight.requires_grad
    assert all(not b.training and not b.weight.requires_grad for b in bns[1:])
    assert all(not b.bias.requires_grad for b in bns[1:])
    assert all(b.training for b in i3d_resnet18(num_classes=4).train().modules())


def test_backward_reaches_the_stem():
    torch.manual_seed(0)
    model = i3d_resnet18(num_classes=4, in_channels=10).train()
    logits = model(torch.randn(2, 4, 10, 32, 32))
    nn.functional.cross_entropy(logits, torch.tensor([0, 3])).backward()
    grad = model.backbone.conv1.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_rejects_a_clip_without_time():
    with pytest.raises(ValueError, match=r"\(B, T, C, H, W\)"):
        i3d_resnet18(num_classes=4)(torch.randn(2, 3, 32, 32))
