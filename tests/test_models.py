"""Temporal shift, TSM builders, first-conv adaptation, partial BN, weight enums."""

import pytest
import torch
import torchvision

from mml.config import ModelConfig
from mml.models import (
    adapt_first_conv,
    build_model,
    temporal_shift,
    tsm_mobilenet_v2,
    tsm_resnet18,
    tsm_resnet101,
)
from mml.models.depthwise import DepthwiseConv2d, use_fast_depthwise
from mml.models.factory import _imagenet_weights
from mml.models.temporal_shift import TemporalShift


def test_temporal_shift_moves_one_eighth_each_way():
    n, t, c = 2, 4, 16
    x = torch.arange(t, dtype=torch.float32).view(1, t, 1, 1, 1).expand(n, t, c, 1, 1)
    x = (x * 100 + torch.arange(c).view(1, 1, c, 1, 1)).reshape(n * t, c, 1, 1).contiguous()
    out = temporal_shift(x, segments=t, fold_div=8).view(n, t, c)
    ref = x.view(n, t, c)
    for ti in range(t):
        for ch in range(c):
            if ch < 2:  # fold = 2: take the NEXT frame, zero at the last
                want = ref[0, ti + 1, ch] if ti + 1 < t else 0.0
            elif ch < 4:  # take the PREVIOUS frame, zero at the first
                want = ref[0, ti - 1, ch] if ti > 0 else 0.0
            else:
                want = ref[0, ti, ch]
            assert out[1, ti, ch] == want, (ti, ch)


def test_temporal_shift_rejects_bad_batch():
    with pytest.raises(ValueError, match="multiple"):
        temporal_shift(torch.zeros(5, 8, 1, 1), segments=2)


def test_adapt_first_conv_matches_paper_pseudocode():
    w = torch.randn(4, 3, 7, 7)
    new = adapt_first_conv(w, 10)
    assert new.shape == (4, 10, 7, 7)
    for i in range(10):
        assert torch.allclose(new[:, i], (w[:, 0] + w[:, 1] + w[:, 2]) / 3)
    w3d = torch.randn(4, 3, 3, 7, 7)
    assert adapt_first_conv(w3d, 15).shape == (4, 15, 3, 7, 7)


@pytest.mark.parametrize("in_channels", [3, 10, 15])
def test_tsm_resnet18_shapes_and_consensus(in_channels):
    torch.manual_seed(0)
    model = tsm_resnet18(num_classes=5, in_channels=in_channels).eval()
    x = torch.randn(2, 4, in_channels, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 5)
    fmap = model.backbone(x.flatten(0, 1))
    assert fmap.shape == (8, 512, 1, 1)  # feature maps before pooling (32 px / 32)
    frame_logits = model.fc(fmap.mean(dim=(2, 3))).view(2, 4, 5)
    assert torch.allclose(logits, frame_logits.mean(1), atol=1e-6)
    with_features, maps = model.forward_with_features(x)
    assert torch.equal(with_features, logits) and torch.equal(maps, fmap)
    assert sum(isinstance(m, TemporalShift) for m in model.modules()) == 8


def test_temporal_order_matters():
    torch.manual_seed(0)
    model = tsm_resnet18(num_classes=5).eval()
    x = torch.randn(1, 4, 3, 32, 32)
    assert not torch.allclose(model(x), model(x.flip(1)), atol=1e-5)


@pytest.mark.slow
def test_resnet101_shifts_every_other_block_and_mobilenet_builds():
    model = tsm_resnet101(num_classes=3)
    shifted = sum(isinstance(m, TemporalShift) for m in model.modules())
    assert shifted == 2 + 2 + 12 + 2  # blocks 0, 2, ... of 3, 4, 23, 3
    mobile = tsm_mobilenet_v2(num_classes=3, in_channels=10, width_mult=0.5).eval()
    assert mobile(torch.randn(1, 2, 10, 32, 32)).shape == (1, 3)
    with pytest.raises(ValueError, match="width_mult"):
        tsm_mobilenet_v2(
            num_classes=3, width_mult=0.5, weights=torchvision.models.MobileNet_V2_Weights.DEFAULT
        )


def test_partial_bn_freezes_all_but_first_bn():
    model = build_model(ModelConfig(partial_bn=True), 4, "rgb").train()
    bns = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns[0].training and bns[0].weight.requires_grad
    assert all(not b.training and not b.weight.requires_grad for b in bns[1:])


def test_imagenet_init_goes_through_torchvision_weight_enums():
    cfg = ModelConfig(arch="tsm_resnet18")
    assert _imagenet_weights(cfg) is torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    cfg = ModelConfig(arch="tsm_resnet50", weights="IMAGENET1K_V2")
    assert _imagenet_weights(cfg) is torchvision.models.ResNet50_Weights.IMAGENET1K_V2
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        _imagenet_weights(ModelConfig(arch="tsm_resnet18", weights="IMAGENET9K"))


def _save_stage_model(tmp_path, model, modality: str, classes: int):
    from mml import checkpoint
    from mml.models.factory import model_meta

    meta = model_meta(ModelConfig(arch="tsm_resnet18"), model, modality)
    checkpoint.save(
        tmp_path / "src" / "0.pt", {"format": 1, "state_dict": model.state_dict(), "meta": meta}
    )


def test_rgb_model_and_its_adapted_copy_agree_on_grey_input():
    torch.manual_seed(0)
    rgb = tsm_resnet18(num_classes=4).eval()
    grey3 = tsm_resnet18(num_classes=4).eval()
    grey3.load_state_dict(rgb.state_dict())
    conv = grey3.backbone.conv1
    with torch.no_grad():
        conv.weight.copy_(adapt_first_conv(rgb.backbone.conv1.weight, 3))
    x = torch.rand(1, 2, 1, 32, 32).expand(1, 2, 3, 32, 32)  # grey: R = G = B
    assert torch.allclose(rgb(x), grey3(x), atol=1e-5)


def test_cross_modal_init_keeps_every_weight_and_adapts_the_first_conv(tmp_path):
    torch.manual_seed(0)
    source = tsm_resnet18(num_classes=4)
    _save_stage_model(tmp_path, source, "rgb", 4)
    flow = build_model(ModelConfig(arch="tsm_resnet18"), 4, "flow", "src.0", checkpoints=tmp_path)
    assert flow.backbone.conv1.weight.shape[1] == 10
    assert torch.allclose(flow.backbone.conv1.weight[:, 7], source.backbone.conv1.weight.mean(1))
    assert torch.equal(flow.fc.weight, source.fc.weight)  # head included (paper §2.1)
    assert torch.equal(flow.backbone.layer3[0].conv2.weight, source.backbone.layer3[0].conv2.weight)
    same = build_model(ModelConfig(arch="tsm_resnet18"), 4, "rgb", "src.0", checkpoints=tmp_path)
    assert torch.equal(same.backbone.conv1.weight, source.backbone.conv1.weight)


def test_init_errors_are_clear(tmp_path):
    from mml.checkpoint import CheckpointError

    _save_stage_model(tmp_path, tsm_resnet18(num_classes=4), "rgb", 4)
    with pytest.raises(CheckpointError, match="predicts 4 classes but this dataset has 7"):
        build_model(ModelConfig(arch="tsm_resnet18"), 7, "flow", "src.0", checkpoints=tmp_path)
    with pytest.raises(CheckpointError, match="tsm_resnet18 model, this stage builds"):
        build_model(ModelConfig(), 4, "flow", "src.0", checkpoints=tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        build_model(ModelConfig(), 4, "flow", "nope.0", checkpoints=tmp_path)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "0.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        build_model(ModelConfig(), 4, "flow", "bad.0", checkpoints=tmp_path)


@pytest.mark.parametrize(
    "n, c, size, stride, padding, kernel",
    [(16, 48, 1, 1, 1, 3), (16, 24, 2, 1, 1, 3), (8, 16, 2, 2, 1, 3), (4, 8, 2, 2, 2, 5)],
)
def test_fast_depthwise_gradients_equal_aten_on_small_maps(n, c, size, stride, padding, kernel):
    torch.manual_seed(0)
    ref = torch.nn.Conv2d(c, c, kernel, stride, padding, groups=c, bias=False).double()
    net = torch.nn.Sequential(torch.nn.Conv2d(c, c, kernel, stride, padding, groups=c, bias=False))
    net[0].weight = torch.nn.Parameter(ref.weight.detach().clone())
    net = net.double()
    assert use_fast_depthwise(net) == 1 and type(net[0]) is DepthwiseConv2d
    assert net[0].weight.data_ptr() != ref.weight.data_ptr()
    x_ref = torch.randn(n, c, size, size, dtype=torch.double, requires_grad=True)
    x_new = x_ref.detach().clone().requires_grad_()
    y_ref, y_new = ref(x_ref), net(x_new)
    grad = torch.randn_like(y_ref)
    y_ref.backward(grad)
    y_new.backward(grad)
    assert y_new.grad_fn.name().endswith("_SmallDepthwiseBackward")  # the fast path ran
    assert torch.equal(y_ref, y_new)
    assert torch.equal(x_ref.grad, x_new.grad)
    assert torch.allclose(ref.weight.grad, net[0].weight.grad, rtol=0, atol=1e-12)


def test_mobilenet_depthwise_convs_are_fast_ones_with_torchvisions_names():
    model = tsm_mobilenet_v2(6, width_mult=0.5)
    reference = torchvision.models.mobilenet_v2(width_mult=0.5)
    fast = [m for m in model.modules() if isinstance(m, DepthwiseConv2d)]
    plain = [m for m in reference.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert len(fast) == len(plain) == 17
    ours = {
        k.removeprefix("backbone.").replace(".conv.0.layer.", ".conv.0.")
        for k in model.state_dict()
    }
    assert {k for k in reference.state_dict() if k.startswith("features.")} <= ours
    big = torch.randn(2, fast[0].in_channels, 8, 8, requires_grad=True)  # large maps: aten's path
    assert not fast[0](big).grad_fn.name().endswith("_SmallDepthwiseBackward")
