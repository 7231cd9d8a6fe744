"""Every distillation loss against a small case computed by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from kdsearch.distill.losses import create_loss, linear_cka, list_losses
from kdsearch.exceptions import KdsearchError
from kdsearch.taps import Taps


def logits_taps(logits, prepool=None, prelogits=None):
    logits = torch.tensor(logits, dtype=torch.float32)
    prelogits = logits if prelogits is None else torch.tensor(prelogits, dtype=torch.float32)
    prepool = prelogits if prepool is None else torch.tensor(prepool, dtype=torch.float32)
    return Taps(prepool, prelogits, logits, True)


def softmax(v, t=1.0):
    e = [math.exp(x / t) for x in v]
    return [x / sum(e) for x in e]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


S, T, Y = [1.0, 0.0, -1.0], [2.0, 0.0, 0.0], 0


def test_registry_and_defaults():
    assert {"ce", "kd", "dkd", "fitnet", "diswot", "cka", "taid", "pld", "nd"} <= set(list_losses())
    assert create_loss("kd").config() == {"name": "kd", "temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9, "label_smoothing": 0.0}
    dkd = create_loss("dkd").config()
    assert (dkd["alpha"], dkd["beta"], dkd["temperature"], dkd["warmup"]) == (1.0, 8.0, 4.0, 20)
    with pytest.raises(KdsearchError, match="Did you mean 'dkd'"):
        create_loss("dkdd")
    with pytest.raises(KdsearchError, match="has no setting 'temp'"):
        create_loss("kd", temp=2)


def test_kd():
    loss = create_loss("kd", temperature=2.0, ce_weight=0.25, kd_weight=0.75)
    expected = 0.25 * -math.log(softmax(S)[Y]) + 0.75 * 4 * kl(softmax(T, 2), softmax(S, 2))
    assert float(loss(logits_taps([S]), logits_taps([T]), torch.tensor([Y]), 0)) == pytest.approx(expected, rel=1e-5)


def test_dkd():
    t_, alpha, beta = 2.0, 1.0, 8.0
    ps, pt = softmax(S, t_), softmax(T, t_)
    tckd = kl([pt[0], 1 - pt[0]], [ps[0], 1 - ps[0]]) * t_**2
    nckd = kl(softmax(T[1:], t_), softmax(S[1:], t_)) * t_**2
    ce = -math.log(softmax(S)[Y])
    loss = create_loss("dkd", temperature=t_, warmup=4)
    # epoch 0 of a 4-epoch warm-up: the decoupled terms count a quarter
    assert float(loss(logits_taps([S]), logits_taps([T]), torch.tensor([Y]), 0)) == pytest.approx(ce + 0.25 * (alpha * tckd + beta * nckd), rel=1e-4)
    assert float(loss(logits_taps([S]), logits_taps([T]), torch.tensor([Y]), 10)) == pytest.approx(ce + alpha * tckd + beta * nckd, rel=1e-4)


def test_fitnet_with_identity_adapter():
    s = torch.tensor([[[[1.0]], [[2.0]]]])  # (1, 2, 1, 1)
    t = torch.tensor([[[[0.0]], [[4.0]]]])
    student, teacher = Taps(s, s.flatten(1), torch.tensor([S[:2]]), True), Taps(t, t.flatten(1), torch.tensor([T[:2]]), True)
    loss = create_loss("fitnet", hint_weight=10.0)
    loss.setup(student, teacher)
    with torch.no_grad():
        loss.adapter.proj[0].weight.copy_(torch.eye(2).view(2, 2, 1, 1))
    loss.eval()  # BN with running stats (0, 1): the adapter is the identity up to 1/sqrt(1+eps)
    scale = 1 / math.sqrt(1 + 1e-5)
    mse = ((1 * scale - 0) ** 2 + (2 * scale - 4) ** 2) / 2
    ce = -math.log(softmax(S[:2])[0])
    assert float(loss(student, teacher, torch.tensor([0]), 0)) == pytest.approx(ce + 10 * mse, rel=1e-5)


def test_diswot_relation_term_by_hand():
    # student features (1,0), (1,1): Gram [[1,1],[1,2]]; teacher (1,0), (0,1): Gram = I
    gs = [[1 / math.sqrt(2), 1 / math.sqrt(2)], [1 / math.sqrt(5), 2 / math.sqrt(5)]]
    gt = [[1, 0], [0, 1]]
    sp = sum((gs[i][j] - gt[i][j]) ** 2 for i in range(2) for j in range(2)) / 4
    logits = [[0.0, 0.0], [0.0, 0.0]]
    loss = create_loss("diswot", relation_weight=1.0, semantic_weight=0.0, ce_weight=0.0, kd_weight=0.0)
    student = logits_taps(logits, prepool=[[1.0, 0.0], [1.0, 1.0]])
    teacher = logits_taps(logits, prepool=[[1.0, 0.0], [0.0, 1.0]])
    assert float(loss(student, teacher, torch.tensor([0, 1]), 0)) == pytest.approx(sp, rel=1e-5)


def test_diswot_is_only_kd_when_student_equals_teacher():
    taps = logits_taps([S, T], prelogits=[[1.0, 2.0], [0.5, -1.0]])
    full = create_loss("diswot")(taps, taps, torch.tensor([0, 1]), 0)
    kd_only = create_loss("kd")(taps, taps, torch.tensor([0, 1]), 0)
    assert float(full) == pytest.approx(float(kd_only), abs=1e-6)


def test_linear_cka_by_hand_and_invariances():
    x = torch.tensor([[1.0], [2.0], [3.0]])
    y = torch.tensor([[1.0], [0.0], [1.0]])  # centred: orthogonal to centred x
    assert float(linear_cka(x, y)) == pytest.approx(0.0, abs=1e-6)
    torch.manual_seed(0)
    a = torch.randn(32, 5)
    q, _ = torch.linalg.qr(torch.randn(5, 5))
    assert float(linear_cka(a, 3 * a @ q)) == pytest.approx(1.0, abs=1e-5)  # rotation and scale invariant
    big = torch.randn(8, 40)  # Gram form (width > batch) agrees with the feature form
    assert float(linear_cka(big, big[:, :20])) == pytest.approx(float(linear_cka(big.T[:20].T.contiguous(), big)), abs=1e-5)


def test_cka_loss_adds_one_minus_cka():
    student = logits_taps([S, T, [0.0, 0.0, 0.0]], prepool=[[1.0], [2.0], [3.0]])
    teacher = logits_taps([S, T, [0.0, 0.0, 0.0]], prepool=[[1.0], [0.0], [1.0]])
    y = torch.tensor([0, 1, 2])
    loss = create_loss("cka")(student, teacher, y, 0)
    kd = create_loss("kd")(student, teacher, y, 0)
    assert float(loss) == pytest.approx(float(kd) + 1.0, abs=1e-5)


def test_taid_at_full_interpolation_is_forward_kl_and_lambda_grows():
    loss = create_loss("taid", t_start=1.0)
    expected = kl(softmax(T), softmax(S))
    assert float(loss(logits_taps([S]), logits_taps([T]), torch.tensor([Y]), 0)) == pytest.approx(expected, rel=1e-5)
    growing = create_loss("taid", t_start=0.2, total_steps=10)
    growing.train()
    for _ in range(5):
        growing(logits_taps([S]), logits_taps([T]), torch.tensor([Y]), 0)
    assert 0.2 < float(growing.lam) <= 1.0
    assert "lam" in growing.state_dict()  # saved with the checkpoint


def test_pld_by_hand():
    s, t, y = [1.0, 2.0, 0.0], [0.0, 3.0, 1.0], 0
    order = [0, 1, 2]  # true class first, then by teacher logit: 3 > 1
    w = softmax(t)
    s_sorted = [s[i] for i in order]
    expected = 0.0
    for k in range(3):
        tail = math.log(sum(math.exp(v) for v in s_sorted[k:]))
        expected += w[order[k]] * (tail - s_sorted[k])
    loss = create_loss("pld")
    assert float(loss(logits_taps([s]), logits_taps([t]), torch.tensor([y]), 0)) == pytest.approx(expected, rel=1e-5)


def test_ce_is_plain_cross_entropy():
    loss = create_loss("ce", label_smoothing=0.1)
    logits = torch.tensor([S])
    assert float(loss(logits_taps([S]), None, torch.tensor([Y]), 0)) == pytest.approx(float(F.cross_entropy(logits, torch.tensor([Y]), label_smoothing=0.1)))


def test_nd_by_hand():
    """ND term: 1 − (s · ê_y) / max(‖s‖, ‖t‖), plus CE + T²·KL (CE 1, KD 1, ND 2)."""
    s_emb, t_emb = [3.0, 4.0], [0.0, 6.0]
    means = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    loss = create_loss("nd")
    loss.setup(logits_taps([S], prelogits=[s_emb]), logits_taps([T], prelogits=[t_emb]))
    loss.set_class_means(means)
    e = [1 / math.sqrt(2), 1 / math.sqrt(2)]
    nd = 1 - (3 * e[0] + 4 * e[1]) / max(5.0, 6.0)
    ce = -math.log(softmax(S)[Y])
    kd = kl(softmax(T, 4), softmax(S, 4)) * 16
    got = loss(logits_taps([S], prelogits=[s_emb]), logits_taps([T], prelogits=[t_emb]), torch.tensor([Y]), 0)
    assert float(got) == pytest.approx(ce + kd + 2 * nd, rel=1e-5)
    assert float(loss.nd_loss(torch.tensor([s_emb]), torch.tensor([t_emb]), torch.tensor([Y]))) == pytest.approx(nd, rel=1e-6)


def test_nd_projects_a_narrower_student_and_needs_class_means():
    loss = create_loss("nd")
    with pytest.raises(KdsearchError, match="class means"):
        loss.nd_loss(torch.ones(1, 2), torch.ones(1, 2), torch.tensor([0]))
    loss.setup(logits_taps([S], prelogits=[[1.0, 2.0]]), logits_taps([T], prelogits=[[1.0, 2.0, 3.0]]))
    assert isinstance(loss.project, torch.nn.Linear) and loss.project.weight.shape == (3, 2)
