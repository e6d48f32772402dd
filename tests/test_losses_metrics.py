"""Losses and metrics against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from mml.losses import mutual_kl, task_loss
from mml.metrics import (
    confusion_matrix,
    mean_average_precision,
    per_class_accuracy,
    topk_accuracy,
)


def test_topk_accuracy():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    targets = np.array([1, 1, 2, 2])
    assert topk_accuracy(scores, targets, 1) == 50.0  # rows 0 and 2
    assert topk_accuracy(scores, targets, 2) == 75.0  # row 1's second best is class 1
    assert topk_accuracy(scores, targets, 5) == 100.0


def test_mean_average_precision_hand_computed():
    scores = np.array([[0.9, 0.1], [0.8, 0.4], [0.7, 0.3], [0.6, 0.2]])
    targets = np.array([[1, 0], [0, 1], [1, 0], [0, 0]])
    # class 0: positives ranked 1st and 3rd -> (1/1 + 2/3) / 2; class 1: ranked 1st -> 1
    expected = ((1 + 2 / 3) / 2 + 1) / 2 * 100
    assert mean_average_precision(scores, targets) == pytest.approx(expected)
    # a class with no positive is left out of the mean
    assert mean_average_precision(scores[:, :1], targets[:, :1]) == pytest.approx(250 / 3)


def test_per_class_and_confusion():
    scores = np.array([[0.9, 0.1, 0], [0.2, 0.8, 0], [0.6, 0.4, 0]])
    targets = np.array([0, 1, 1])
    assert per_class_accuracy(scores, targets, 3)[:2].tolist() == [100.0, 50.0]
    assert math.isnan(per_class_accuracy(scores, targets, 3)[2])
    assert confusion_matrix(scores, targets, 3).tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 0]]


def test_mutual_kl_equals_hand_computed_kl():
    z = torch.tensor([[0.0, math.log(3.0)]])  # p = (1/4, 3/4)
    peer = torch.tensor([[0.0, 0.0]])  # q = (1/2, 1/2)
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert mutual_kl(z, [peer]).item() == pytest.approx(expected, abs=1e-6)
    # multilabel regime divides by B * num_classes
    assert mutual_kl(z, [peer], multilabel=True).item() == pytest.approx(expected / 2, abs=1e-6)


def test_mutual_kl_forms_and_zero_for_identical():
    torch.manual_seed(0)
    z = torch.randn(4, 6)
    assert mutual_kl(z, [z.clone(), z.clone()]).item() == pytest.approx(0.0, abs=1e-6)
    a, b = torch.randn(4, 6), torch.randn(4, 6)
    pairwise = (mutual_kl(z, [a]) + mutual_kl(z, [b])) / 2
    assert mutual_kl(z, [a, b]).item() == pytest.approx(pairwise.item(), rel=1e-5)
    mean_form = mutual_kl(z, [(a + b) / 2])
    assert mutual_kl(z, [a, b], form="mean_logits").item() == pytest.approx(mean_form.item())


def test_no_gradient_reaches_the_peer():
    z = torch.randn(3, 5, requires_grad=True)
    peer = torch.randn(3, 5, requires_grad=True)
    mutual_kl(z, [peer]).backward()
    assert z.grad is not None and peer.grad is None


def test_task_loss_single_and_multi_label():
    logits = torch.tensor([[2.0, 0.0]])
    assert task_loss(logits, torch.tensor([0]), multilabel=False).item() == pytest.approx(
        -math.log(math.exp(2) / (math.exp(2) + 1))
    )
    bce = task_loss(logits, torch.tensor([[1.0, 0.0]]), multilabel=True).item()
    expected = (math.log(1 + math.exp(-2)) + math.log(2)) / 2
    assert bce == pytest.approx(expected)


def test_confusion_plot_shows_whole_class_names(tmp_path):
    from mml.evaluate import axis_labels, plot_confusion

    classes = [
        "Moving something from left to right",
        "Pretending to put something onto something else without letting go of it",
        "Tearing",
        "Supercalifragilisticexpialidocious-and-then-some-more",  # no space: kept whole
    ]
    labels = axis_labels(classes)
    assert [" ".join(label.split("\n")) for label in labels] == classes
    assert all(len(line) <= 24 for label in labels[:3] for line in label.split("\n"))
    path = tmp_path / "confusion.png"
    plot_confusion(np.eye(4, dtype=int) * 3, classes, path, "title")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
