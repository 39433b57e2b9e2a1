"""Fine-tuning: the IKL loss as the DKL code defines it, clean fine-tuning, resumable adversarial fine-tuning."""
import pytest
import torch
import torch.nn.functional as F

import hpm
from hpm.data import ImageTensorDataset
from hpm.errors import HPMError
from hpm.train.losses import (ClassWeights, average_margin_penalty, dpnp_loss, ikl_loss, logit_margin,
                              soft_cross_entropy, weighted_pairwise_mse)
from hpm.train import (AdversarialConfig, CleanConfig, extract_features, finetune_adversarial, finetune_clean,
                       pgd_ikl)

from conftest import TinyNet


def test_weighted_mse_identity_matches_the_direct_double_sum():
    g = torch.Generator().manual_seed(0)
    zn, za = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    s = torch.rand(5, 7, generator=g)
    s = s / s.sum(1, keepdim=True)
    dn, da = zn[:, :, None] - zn[:, None, :], za[:, :, None] - za[:, None, :]
    w = s[:, :, None] * s[:, None, :]
    direct = (w * (dn - da) ** 2).sum() / (4 * 5)
    assert torch.allclose(weighted_pairwise_mse(zn, za, s), direct, atol=1e-5)


def test_soft_cross_entropy_stops_the_gradient_through_natural_logits():
    zn = torch.randn(3, 4, requires_grad=True)
    za = torch.randn(3, 4, requires_grad=True)
    soft_cross_entropy(zn, za).backward()
    assert zn.grad is None and za.grad is not None
    expected = -(zn.detach().softmax(1) * za.detach().log_softmax(1)).sum(1).mean()
    assert torch.allclose(soft_cross_entropy(zn, za), expected)


def test_class_weights_are_uniform_first_then_row_normalised_per_true_class():
    w = ClassWeights(3, temperature=4.0)
    assert torch.allclose(w.weights, torch.full((3, 3), 1 / 3))
    zn = torch.tensor([[4.0, 0, 0], [0, 8.0, 0], [4.0, 0, 0]])
    w.accumulate(zn, torch.tensor([0, 1, 0]))
    w.end_epoch()
    assert torch.allclose(w.weights[0], (zn[0] / 4).softmax(0), atol=1e-6)
    assert torch.allclose(w.weights[1], (zn[1] / 4).softmax(0), atol=1e-6)
    assert torch.allclose(w.weights[2], torch.full((3,), 1 / 3))  # unseen class keeps its weights
    assert torch.allclose(w.weights.sum(1), torch.ones(3))


def test_ikl_loss_is_ce_plus_weighted_terms():
    zn, za, y = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    w = ClassWeights(3)
    expected = (F.cross_entropy(zn, y) + 20 * weighted_pairwise_mse(zn, za, w.for_labels(y))
                + 4 * soft_cross_entropy(zn, za))
    assert torch.allclose(ikl_loss(zn, za, y, w), expected)


def separable_features(n=400, d=16, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g) * 3
    y = torch.arange(n) % k
    return centres[y] + torch.randn(n, d, generator=g), y


def test_logit_margin_is_the_true_score_minus_the_best_other():
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, -1.0]])
    assert torch.equal(logit_margin(logits, torch.tensor([0, 2])), torch.tensor([1.0, -6.0]))


def test_average_margin_penalty_is_a_hinge_truncated_at_tau():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.25], [0.0, 0.75], [0.0, 3.0]], requires_grad=True)
    labels = torch.zeros(4, dtype=torch.long)  # margins 2, -0.25, -0.75, -3
    penalty = average_margin_penalty(logits, labels, tau=0.5)
    assert penalty.item() == pytest.approx((0 + 0.25 + 0.5 + 0.5) / 4)
    penalty.backward()
    pulled = logits.grad.abs().sum(1) > 0
    assert pulled.tolist() == [False, True, False, False]  # only the sample within tau on the wrong side


def test_dpnp_prototypes_learn_from_the_clean_branch_only():
    g = torch.Generator().manual_seed(0)
    prototypes = torch.randn(4, 8, generator=g, requires_grad=True)
    z_clean, z_adv = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    loss, logits_adv = dpnp_loss(z_clean, z_adv, prototypes, labels, align=0.0, repel=0.0, consistency=1.0)
    assert torch.allclose(logits_adv, z_adv @ prototypes.t())
    adversarial_only = F.cross_entropy(logits_adv, labels) + F.kl_div(
        logits_adv.log_softmax(1), (z_clean @ prototypes.t()).log_softmax(1), log_target=True, reduction="batchmean")
    grad, = torch.autograd.grad(adversarial_only, prototypes, retain_graph=True)
    assert grad.abs().sum() > 0  # without the stop-gradient the adversarial terms would move the prototypes ...
    loss_adv_part = loss - F.cross_entropy(z_clean @ prototypes.t(), labels)
    grad, = torch.autograd.grad(loss_adv_part, prototypes, retain_graph=True)
    assert grad.abs().sum() == 0  # ... with it, only the clean branch does
    assert torch.autograd.grad(loss, z_adv)[0].abs().sum() > 0  # while the features learn from both


def test_dpnp_repulsion_pushes_each_prototype_from_its_nearest_rival():
    z, labels = torch.zeros(1, 2), torch.tensor([0])
    close = torch.tensor([[1.0, 0.0], [1.0, 0.1], [-1.0, 0.0]])
    far = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    repulsion = [dpnp_loss(z, z, c, labels, align=0.0, repel=1.0, consistency=0.0)[0]
                 - dpnp_loss(z, z, c, labels, align=0.0, repel=0.0, consistency=0.0)[0] for c in (close, far)]
    assert repulsion[0] > repulsion[1]
    assert repulsion[1].item() == pytest.approx(0.0, abs=1e-6)  # every nearest rival at 90 degrees


def test_clean_finetune_initialises_prototypes_to_class_means_and_keeps_accuracy():
    z, y = separable_features()
    model = hpm.HPMClassifier(torch.nn.Identity(), torch.nn.Linear(16, 4), hpm.create_head("hpm", 16, 4))
    losses = finetune_clean(model, z, y, CleanConfig(epochs=3, lr=1e-2, batch_size=32))
    assert len(losses) == 3 * 13 and losses[-1] < losses[0]
    acc = (model.forward_head(z, mode="hard").argmax(1) == y).float().mean()
    assert acc > 0.95
    assert not model.training


def test_clean_finetune_of_a_parameter_free_head_only_fits_prototypes():
    z, y = separable_features()
    model = hpm.HPMClassifier(torch.nn.Identity(), torch.nn.Linear(16, 4), hpm.create_head("ncm", 16, 4))
    model.fc.requires_grad_(False)
    assert finetune_clean(model, z, y) == []
    means = torch.stack([z[y == j].mean(0) for j in range(4)])
    assert torch.allclose(model.head.prototypes, means, atol=1e-5)


@pytest.fixture
def tiny_setup():
    torch.manual_seed(0)
    model = hpm.wrap(TinyNet(num_classes=4), head="hpm")
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(24, 3, 32, 32, generator=g) * 255).to(torch.uint8)
    data = ImageTensorDataset(images, torch.arange(24) % 4, ["a", "b", "c", "d"], "synthetic")
    return model, data


def test_pgd_stays_in_the_eps_ball_and_the_image_range(tiny_setup):
    model, data = tiny_setup
    x, y = data.tensors()
    model.head.init_prototypes(*extract_features(model, data, progress=False, cache=False))
    cfg = AdversarialConfig(eps=4 / 255, steps=3)
    x_adv = pgd_ikl(model, x, model(x), y, cfg, ClassWeights(4))
    assert (x_adv - x).abs().max() <= 4 / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert not torch.equal(x_adv, x)


def test_adversarial_finetune_resumes_exactly_where_it_was_interrupted(tmp_path, tiny_setup):
    model, data = tiny_setup
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = dict(batch_size=8, steps=2, lr=1e-3, save_every=1, epochs=2)
    full = finetune_adversarial(model, data, AdversarialConfig(**cfg), tmp_path / "a", progress=False)
    uninterrupted = {k: v.clone() for k, v in model.state_dict().items()}
    assert len(full) == 6 and (tmp_path / "a" / "trainer_state.pt").exists()

    model.load_state_dict(initial)
    finetune_adversarial(model, data, AdversarialConfig(**cfg, max_steps=4), tmp_path / "b", progress=False)
    model.load_state_dict(initial)  # the process died: start from scratch weights, resume from disk
    resumed = finetune_adversarial(model, data, AdversarialConfig(**cfg), tmp_path / "b", progress=False)
    assert resumed == pytest.approx(full, rel=1e-5)
    for k, v in uninterrupted.items():
        assert torch.allclose(model.state_dict()[k], v, atol=1e-6), k


def test_fine_tuning_neither_reseeds_nor_draws_from_the_process_wide_generator(tmp_path, tiny_setup):
    model, data = tiny_setup
    z, y = extract_features(model, data, progress=False, cache=False)
    before = torch.get_rng_state()
    finetune_clean(model, z, y, CleanConfig(batch_size=8), progress=False)
    finetune_adversarial(model, data, AdversarialConfig(batch_size=8, steps=2, max_steps=2), tmp_path,
                         init_features=(z, y), progress=False)
    assert torch.equal(torch.get_rng_state(), before)


def test_resume_with_a_different_recipe_is_refused(tmp_path, tiny_setup):
    model, data = tiny_setup
    finetune_adversarial(model, data, AdversarialConfig(batch_size=8, steps=1, max_steps=1), tmp_path, progress=False)
    with pytest.raises(HPMError, match="different recipe"):
        finetune_adversarial(model, data, AdversarialConfig(batch_size=8, steps=2), tmp_path, progress=False)


def test_feature_cache_is_keyed_by_backbone_and_data(tiny_data_root):
    from hpm.data import load_dataset
    model = hpm.wrap("pyautoattack", head="ncm")
    data = load_dataset("cifar10", "test", tiny_data_root)
    z1, y1 = extract_features(model, data, progress=False)
    z2, _ = extract_features(model, data, progress=False)  # from the cache
    assert z1.shape == (24, 512) and torch.equal(z1, z2) and torch.equal(y1, data.labels)


def test_feature_cache_never_confuses_two_subsets_of_the_same_size(tiny_data_root):
    from hpm.data import load_dataset
    model = hpm.wrap("pyautoattack", head="ncm")
    data = load_dataset("cifar10", "test", tiny_data_root)
    first = ImageTensorDataset(data.images[:8], data.labels[:8], data.classes, data.source)
    last = ImageTensorDataset(data.images[-8:], data.labels[-8:], data.classes, data.source)  # same source, size
    z_first, _ = extract_features(model, first, progress=False)
    z_last, _ = extract_features(model, last, progress=False)
    assert not torch.equal(z_first, z_last)
