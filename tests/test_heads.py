"""The HPM head, equation by equation (Sec. 3.6), and the shared head contract."""
import pytest
import torch
import torch.nn.functional as F

from hpm.heads import (HEADS, HPMHead, NCMHead, batch_prototypes, class_means, create_head, neg_l2_distance,
                       straight_through_assignment)

B, D, K = 12, 6, 4


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(B, D, generator=g)
    logits = torch.randn(B, K, generator=g) * 3
    labels = torch.arange(B) % K
    return z, logits, labels


def fitted_hpm(z, labels, momentum=0.9):
    head = HPMHead(D, K, momentum=momentum)
    head.init_prototypes(z, labels)
    return head


def test_neg_l2_distance_is_minus_euclidean_distance_not_squared(batch):
    z, _, _ = batch
    c = torch.randn(K, D)
    assert torch.allclose(neg_l2_distance(z, c), -torch.cdist(z, c), atol=1e-5)


def test_neg_l2_distance_has_finite_gradient_when_a_feature_sits_on_a_centre():
    c = torch.randn(K, D)
    z = c[:2].clone().requires_grad_(True)
    neg_l2_distance(z, c).sum().backward()
    assert torch.isfinite(z.grad).all()


def test_batch_prototypes_are_the_means_of_samples_predicted_as_each_class(batch):
    z, logits, _ = batch
    pred = logits.argmax(1)
    c_batch = batch_prototypes(z, straight_through_assignment(logits, hard=True))
    for j in range(K):
        members = z[pred == j]
        expected = members.mean(0) if len(members) else torch.zeros(D)  # absent classes: zero rows (Eq. 16)
        assert torch.allclose(c_batch[j], expected, atol=1e-5)


def test_ste_forward_is_the_hard_one_hot(batch):
    _, logits, _ = batch
    p = straight_through_assignment(logits, hard=True)
    assert torch.equal(p, F.one_hot(logits.argmax(1), K).float())


def test_ste_gradient_equals_the_soft_path_gradient(batch):
    _, logits, _ = batch
    weights = torch.randn(B, K)
    grads = []
    for hard in (True, False):
        leaf = logits.clone().requires_grad_(True)
        (straight_through_assignment(leaf, hard=hard) * weights).sum().backward()
        grads.append(leaf.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_ema_updates_only_the_classes_present_in_the_batch(batch):
    z, _, labels = batch
    head = fitted_hpm(z, labels, momentum=0.9)
    before = head.prototypes.clone()
    new_z, new_labels = torch.randn(4, D), torch.tensor([0, 0, 2, 2])
    head.train()
    head(new_z, torch.randn(4, K), labels=new_labels)
    means, _ = class_means(new_z, new_labels, K)
    for j in range(K):
        expected = 0.9 * before[j] + 0.1 * means[j] if j in (0, 2) else before[j]  # Eq. 14, present rows only
        assert torch.allclose(head.prototypes[j], expected, atol=1e-6)


def test_prototypes_never_move_in_eval_mode_or_without_labels(batch):
    z, logits, labels = batch
    head = fitted_hpm(z, labels)
    before = head.prototypes.clone()
    head.eval()
    head(z, logits, labels=labels)
    head.train()
    head(z, logits)
    assert torch.equal(head.prototypes, before)


def test_identity_initialised_mixer_is_the_l2_nearest_class_mean_head(batch):
    z, logits, labels = batch
    hpm_head, ncm = fitted_hpm(z, labels), NCMHead(D, K)
    ncm.init_prototypes(z, labels)
    for mode in ("hard", "soft"):
        assert torch.allclose(hpm_head(z, logits, mode=mode), ncm(z, logits), atol=1e-5)


def test_soft_mode_differs_from_hard_only_through_p_soft(batch):
    z, logits, labels = batch
    head = fitted_hpm(z, labels)
    torch.nn.init.normal_(head.mixer.weight, std=0.3)  # a trained-looking mixer, so C_batch matters
    for mode, assignment in (("hard", F.one_hot(logits.argmax(1), K).float()), ("soft", logits.softmax(1))):
        c_hybrid = head.mixer(torch.cat([head.prototypes, batch_prototypes(z, assignment)], 1))
        assert torch.allclose(head(z, logits, mode=mode), neg_l2_distance(z, c_hybrid), atol=1e-5)
    sharp = logits * 1e4  # P_soft -> P_hard: the two modes coincide
    assert torch.allclose(head(z, sharp, mode="soft"), head(z, sharp, mode="hard"), atol=1e-4)


def test_fc_mode_returns_the_fc_logits_for_every_head(batch):
    z, logits, _ = batch
    for name in HEADS:
        assert torch.equal(create_head(name, D, K)(z, logits, mode="fc"), logits)


@pytest.mark.parametrize("name", list(HEADS))
def test_every_head_declares_what_it_is(name):
    head = HEADS[name]
    assert head.head_type == name and head.label and head.description
    assert head.attack_targets and all(set(modes) <= {"hard", "soft", "fc"} for modes in head.attack_targets.values())
    assert head.has_prototypes == hasattr(create_head(name, 4, 3), "prototypes")
    if head.batch_dependent:  # MSA: a batch-dependent STE head is attacked through surrogates and BPDA
        assert {"fc", "soft", "ensemble", "bpda"} <= set(head.attack_targets)


def test_hpm_predictions_depend_on_the_batch_and_are_flagged_so(batch):
    z, logits, labels = batch
    head = fitted_hpm(z, labels)
    torch.nn.init.normal_(head.mixer.weight, std=0.3)
    assert HPMHead.batch_dependent and not NCMHead.batch_dependent
    assert not torch.allclose(head(z[:1], logits[:1]), head(z, logits)[:1])


def test_unknown_mode_and_head_names_are_rejected_with_the_valid_choices(batch):
    z, logits, _ = batch
    with pytest.raises(ValueError, match="hard, soft, fc"):
        HPMHead(D, K)(z, logits, mode="bpda")
    with pytest.raises(ValueError, match="fc, ncm, cosine, hpm, dpnp"):
        create_head("knn", D, K)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_head_contract_shapes_gradients_and_finiteness(name, batch):
    z, logits, labels = batch
    head = create_head(name, D, K)
    head.init_prototypes(z, labels)
    z = z.clone().requires_grad_(True)
    logits = logits.clone().requires_grad_(True)
    head.train()
    for mode in ("hard", "soft", "fc"):
        out = head(z, logits, mode=mode, labels=labels)
        assert out.shape == (B, K) and torch.isfinite(out).all()
    loss = sum(head(z, logits, mode=m).sum() for m in ("hard", "soft"))
    loss.backward()
    for pname, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


# --- the paper's ablations (Sec. 4.4) ------------------------------------------------------------------
def test_without_batch_prototypes_hpm_is_a_per_sample_prototype_head(batch):
    z, logits, labels = batch
    head = HPMHead(z.shape[1], logits.shape[1], batch_prototypes=False)
    head.init_prototypes(z, labels)
    assert not head.batch_dependent and set(head.attack_targets) == {"fc", "deployed"}
    assert torch.allclose(head(z[:1], logits[:1]), head(z, logits)[:1], atol=1e-6)  # the batch no longer matters
    ncm = NCMHead(z.shape[1], logits.shape[1])
    ncm.init_prototypes(z, labels)
    assert torch.allclose(head(z, logits), ncm(z, logits), atol=1e-5)  # identity-initialised: the NCM head


def test_the_mean_mixer_averages_global_and_batch_prototypes_and_keeps_global_rows_of_absent_classes(batch):
    z, logits, labels = batch
    head = HPMHead(z.shape[1], logits.shape[1], mixer="mean")
    head.init_prototypes(z, labels)
    assert not any(True for _ in head.parameters())  # nothing parameterised left
    predicted = logits[:2].argmax(1)
    hybrid = head.hybrid_prototypes(z[:2], logits[:2], "hard")
    for j in range(logits.shape[1]):
        rows = z[:2][predicted == j]
        expected = (head.prototypes[j] + rows.mean(0)) / 2 if len(rows) else head.prototypes[j]
        assert torch.allclose(hybrid[j], expected, atol=1e-5)


def test_dot_scores_are_inner_products_with_the_hybrid_prototypes(batch):
    z, logits, labels = batch
    head = fitted_hpm(z, labels)
    dot = HPMHead(z.shape[1], logits.shape[1], score="dot")
    dot.load_state_dict(head.state_dict())
    assert torch.allclose(dot(z, logits), z @ head.hybrid_prototypes(z, logits, "hard").t(), atol=1e-4)


@pytest.mark.parametrize("options", [{"batch_prototypes": False}, {"mixer": "mean"}, {"score": "dot"}])
def test_ablated_heads_round_trip_through_their_config(options, batch):
    z, logits, labels = batch
    head = HPMHead(z.shape[1], logits.shape[1], **options)
    head.init_prototypes(z, labels)
    again = create_head("hpm", z.shape[1], logits.shape[1], **head.extra_config())
    again.load_state_dict(head.state_dict())
    assert torch.equal(again(z, logits), head(z, logits)) and again.label == head.label != "HPM"
    assert HPMHead(z.shape[1], logits.shape[1]).extra_config() == {"momentum": 0.98, "eps": 1e-8}


@pytest.mark.parametrize("options, says", [({"batch_prototypes": False}, "no batch-level prototypes"),
                                           ({"mixer": "mean"}, "(C_global + C_batch) / 2"),
                                           ({"score": "dot"}, "inner-product scores")])
def test_an_ablated_head_describes_what_was_ablated_and_not_the_method_it_replaces(options, says):
    description = HPMHead(4, 3, **options).description  # what a model card and the app print
    assert "ablation" in description and says in description and "scores = -l2 distance" not in description
    assert "scores = -l2 distance" in HPMHead(4, 3).description


@pytest.mark.parametrize("options, message", [({"mixer": "max"}, "mixer must be one of"),
                                              ({"score": "cos"}, "score one of"),
                                              ({"mixer": "mean", "batch_prototypes": False}, "needs batch")])
def test_unknown_ablation_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        HPMHead(4, 3, **options)
