"""Golden values and properties of the distillation losses; every expected value is recomputed naively here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from lib.losses import (
    ATLoss,
    DKDLoss,
    ICKDLoss,
    SPLoss,
    SRDecoder,
    at_loss,
    attention_map,
    build_decoder,
    dkd_loss,
    feature_distillation_loss,
    ickd_loss,
    isrd_loss,
    isrd_scale,
    kd_loss,
    kd_terms,
    sp_loss,
)

# Small hand-made logits: 2 samples x 3 classes, and 2 samples x 4 classes for DKD.
LOGITS_S = [[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]]
LOGITS_T = [[3.0, 1.0, 0.2], [0.0, 0.0, 1.0]]
TARGET = [0, 2]
DKD_S = [[2.0, -1.0, 0.5, 1.0], [0.3, 1.2, -0.7, 2.2]]
DKD_T = [[4.0, 0.0, 1.0, -2.0], [-1.0, 3.0, 0.5, 1.5]]
DKD_TARGET = [0, 1]


def _t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# ------------------------------------------------------------------------------------------------------------
# Naive references: plain Python / numpy loops, independent of the code under test.
# ------------------------------------------------------------------------------------------------------------
def _softmax(row: list[float]) -> list[float]:
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def _naive_kd(s, t, temp: float) -> float:
    kls = [_kl(_softmax([v / temp for v in ti]), _softmax([v / temp for v in si])) for si, ti in zip(s, t)]
    return temp**2 * sum(kls) / len(kls)


def _naive_ce(s, target) -> float:
    return sum(-math.log(_softmax(si)[y]) for si, y in zip(s, target)) / len(s)


def _naive_dkd(s, t, target, alpha: float, beta: float, temp: float) -> float:
    tckd, nckd = 0.0, 0.0
    for si, ti, y in zip(s, t, target):
        p_s, p_t = _softmax([v / temp for v in si]), _softmax([v / temp for v in ti])
        tckd += _kl([p_t[y], 1 - p_t[y]], [p_s[y], 1 - p_s[y]])
        others = [j for j in range(len(si)) if j != y]
        q_s = _softmax([si[j] / temp for j in others])
        q_t = _softmax([ti[j] / temp for j in others])
        nckd += _kl(q_t, q_s)
    b = len(s)
    return temp**2 * (alpha * tckd / b + beta * nckd / b)


def _naive_avg_pool(f: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Average non-overlapping blocks (the sizes used here divide evenly)."""
    b, c, h, w = f.shape
    kh, kw = h // out_h, w // out_w
    out = np.zeros((b, c, out_h, out_w))
    for n in range(b):
        for ch in range(c):
            for i in range(out_h):
                for j in range(out_w):
                    out[n, ch, i, j] = f[n, ch, i * kh : (i + 1) * kh, j * kw : (j + 1) * kw].mean()
    return out


def _naive_attention(f: np.ndarray) -> np.ndarray:
    b, c, h, w = f.shape
    out = np.zeros((b, h * w))
    for n in range(b):
        for i in range(h):
            for j in range(w):
                out[n, i * w + j] = sum(f[n, ch, i, j] ** 2 for ch in range(c)) / c
        out[n] /= math.sqrt(sum(v * v for v in out[n]))
    return out


def _naive_row_normalised_gram(rows: np.ndarray) -> np.ndarray:
    """G[i, j] = <rows_i, rows_j>, then every row of G divided by its L2 norm."""
    n = rows.shape[0]
    g = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            g[i, j] = sum(rows[i, k] * rows[j, k] for k in range(rows.shape[1]))
    for i in range(n):
        g[i] /= math.sqrt(sum(v * v for v in g[i]))
    return g


def _feature(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A fixed feature with mixed signs, so pooling before or after squaring gives different results."""
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size=shape)


# ------------------------------------------------------------------------------------------------------------
# KD
# ------------------------------------------------------------------------------------------------------------
def test_kd_loss_golden():
    for temp in (1.0, 4.0):
        got = kd_loss(_t(LOGITS_S), _t(LOGITS_T), temp).item()
        assert got == pytest.approx(_naive_kd(LOGITS_S, LOGITS_T, temp), rel=1e-10)


def test_kd_terms_golden():
    got = kd_terms(_t(LOGITS_S), _t(LOGITS_T), torch.tensor(TARGET), 4.0, 0.9)
    assert got["loss_ce"].item() == pytest.approx(0.1 * _naive_ce(LOGITS_S, TARGET), rel=1e-10)
    assert got["loss_kd"].item() == pytest.approx(0.9 * _naive_kd(LOGITS_S, LOGITS_T, 4.0), rel=1e-10)


def test_kd_identical_logits_is_zero():
    logits = _t(LOGITS_S)
    assert kd_loss(logits, logits.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-12)


def test_kd_gradient_reaches_student_only():
    s = _t(LOGITS_S).requires_grad_()
    t = _t(LOGITS_T).requires_grad_()
    kd_loss(s, t, 4.0).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


# ------------------------------------------------------------------------------------------------------------
# DKD
# ------------------------------------------------------------------------------------------------------------
def test_dkd_loss_golden():
    got = dkd_loss(_t(DKD_S), _t(DKD_T), torch.tensor(DKD_TARGET), 1.0, 8.0, 4.0).item()
    assert got == pytest.approx(_naive_dkd(DKD_S, DKD_T, DKD_TARGET, 1.0, 8.0, 4.0), rel=1e-10)
    # The two terms separately (alpha, beta switch them on and off).
    tckd = dkd_loss(_t(DKD_S), _t(DKD_T), torch.tensor(DKD_TARGET), 1.0, 0.0, 2.0).item()
    nckd = dkd_loss(_t(DKD_S), _t(DKD_T), torch.tensor(DKD_TARGET), 0.0, 1.0, 2.0).item()
    assert tckd == pytest.approx(_naive_dkd(DKD_S, DKD_T, DKD_TARGET, 1.0, 0.0, 2.0), rel=1e-10)
    assert nckd == pytest.approx(_naive_dkd(DKD_S, DKD_T, DKD_TARGET, 0.0, 1.0, 2.0), rel=1e-10)


@pytest.mark.parametrize(
    ("epoch", "factor"), [(1, 1 / 20), (10, 0.5), (20, 1.0), (35, 1.0)], ids=["first", "half", "end", "after"]
)
def test_dkd_warmup_factor(epoch, factor):
    full = _naive_dkd(DKD_S, DKD_T, DKD_TARGET, 1.0, 2.0, 4.0)
    criterion = DKDLoss(alpha=1.0, beta=2.0, temperature=4.0, warmup=20)
    got = criterion(_t(DKD_S), _t(DKD_T), torch.tensor(DKD_TARGET), epoch).item()
    assert got == pytest.approx(factor * full, rel=1e-10)


@pytest.mark.parametrize(("epoch", "factor"), [(1, 2 / 20), (19, 1.0), (20, 1.0)])
def test_dkd_release_warmup_switch_reproduces_the_releases_one_epoch_ahead_factor(epoch, factor):
    full = _naive_dkd(DKD_S, DKD_T, DKD_TARGET, 1.0, 2.0, 4.0)
    criterion = DKDLoss(alpha=1.0, beta=2.0, temperature=4.0, warmup=20, release_warmup=True)
    got = criterion(_t(DKD_S), _t(DKD_T), torch.tensor(DKD_TARGET), epoch).item()
    assert got == pytest.approx(factor * full, rel=1e-10)


def test_dkd_without_warmup_matches_the_naive_formula_from_the_first_epoch():
    got = DKDLoss(alpha=1.0, beta=8.0, temperature=4.0, warmup=0)(_t(DKD_S), _t(DKD_T), torch.tensor(DKD_TARGET), 1)
    assert got.item() == pytest.approx(_naive_dkd(DKD_S, DKD_T, DKD_TARGET, 1.0, 8.0, 4.0), rel=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dkd_finite_for_saturated_logits(dtype):
    # Probabilities exactly 0 / 1 at T = 4: the DKD release's log(softmax) gives -inf and 0 * inf = NaN here.
    s = torch.tensor([[1e4, -1e4, 0.0, -1e4], [-1e4, 1e4, -1e4, 0.0]], dtype=dtype, requires_grad=True)
    t = torch.tensor([[-1e4, 1e4, -1e4, 0.0], [1e4, -1e4, 0.0, -1e4]], dtype=dtype)
    target = torch.tensor([0, 1])
    for tgt in (target, 1 - target):  # student right and teacher wrong, and the reverse
        loss = dkd_loss(s, t, tgt, 1.0, 8.0, 4.0)
        (grad,) = torch.autograd.grad(loss, s)
        assert torch.isfinite(loss) and loss.item() > 0
        assert torch.isfinite(grad).all()
    # Identical saturated logits: exactly zero, with a finite (zero) gradient.
    loss = dkd_loss(s, s.detach().clone(), target, 1.0, 8.0, 4.0)
    (grad,) = torch.autograd.grad(loss, s)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(grad).all()


def test_dkd_saturated_tckd_value():
    # Student: p_target = softmax gap of 2500 (1e4 / T): log(1 - p_t) and log p_t are both far out of fp range
    # as probabilities, but the KL is analytic: teacher puts ~all mass on the target, student ~none, so
    # TCKD = log(1 / p_s[target]) ~= 2500 (the logit gap / T), times T^2.
    s = torch.tensor([[0.0, 1e4]], dtype=torch.float64)
    t = torch.tensor([[1e4, 0.0]], dtype=torch.float64)
    loss = dkd_loss(s, t, torch.tensor([0]), 1.0, 0.0, 4.0)
    assert loss.item() == pytest.approx(16 * 2500.0, rel=1e-9)


# ------------------------------------------------------------------------------------------------------------
# AT
# ------------------------------------------------------------------------------------------------------------
def test_attention_map_golden():
    f = _feature((2, 3, 2, 4), seed=0)
    np.testing.assert_allclose(attention_map(torch.from_numpy(f)).numpy(), _naive_attention(f), rtol=1e-12)


def test_at_loss_golden_same_size():
    f_s, f_t = _feature((2, 2, 4, 4), seed=1), _feature((2, 5, 4, 4), seed=2)
    expected = ((_naive_attention(f_s) - _naive_attention(f_t)) ** 2).mean()
    assert at_loss(torch.from_numpy(f_s), torch.from_numpy(f_t)).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("student_larger", [True, False])
def test_at_loss_pools_the_larger_feature(student_larger):
    small, large = _feature((2, 3, 2, 2), seed=3), _feature((2, 4, 4, 4), seed=4)
    f_s, f_t = (large, small) if student_larger else (small, large)
    # The larger feature is average-pooled (2x2 blocks) BEFORE squaring; then attention maps are compared.
    expected = (
        (_naive_attention(_naive_avg_pool(f_s, 2, 2)) - _naive_attention(_naive_avg_pool(f_t, 2, 2))) ** 2
    ).mean()
    got = at_loss(torch.from_numpy(f_s), torch.from_numpy(f_t)).item()
    assert got == pytest.approx(expected, rel=1e-12)
    # Pooling the attention map instead of the feature gives another number: the test sees the order.
    a_large = _naive_attention(large).reshape(2, 1, 4, 4)
    a_pooled = _naive_avg_pool(a_large, 2, 2).reshape(2, 4)
    a_pooled /= np.linalg.norm(a_pooled, axis=1, keepdims=True)
    wrong = ((a_pooled - _naive_attention(small)) ** 2).mean()
    assert got != pytest.approx(wrong, rel=1e-3)


def test_at_module_one_loss_per_pair():
    feats_s = [torch.from_numpy(_feature((2, 2, 4, 4), seed=s)) for s in (5, 6)]
    feats_t = [torch.from_numpy(_feature((2, 3, 8, 8), seed=s)) for s in (7, 8)]
    losses = ATLoss()(feats_s, feats_t)
    assert len(losses) == 2
    for loss, f_s, f_t in zip(losses, feats_s, feats_t):
        assert loss.item() == pytest.approx(at_loss(f_s, f_t).item())
    with pytest.raises(ValueError, match="as many"):
        ATLoss()(feats_s, feats_t[:1])


# ------------------------------------------------------------------------------------------------------------
# SP
# ------------------------------------------------------------------------------------------------------------
def test_sp_loss_golden():
    b = 3
    f_s, f_t = _feature((b, 2, 2, 2), seed=9), _feature((b, 4, 1, 3), seed=10)
    g_s = _naive_row_normalised_gram(f_s.reshape(b, -1))
    g_t = _naive_row_normalised_gram(f_t.reshape(b, -1))
    expected = sum((g_t[i, j] - g_s[i, j]) ** 2 for i in range(b) for j in range(b)) / b**2
    assert sp_loss(torch.from_numpy(f_s), torch.from_numpy(f_t)).item() == pytest.approx(expected, rel=1e-12)
    losses = SPLoss()([torch.from_numpy(f_s)], [torch.from_numpy(f_t)])
    assert len(losses) == 1 and losses[0].item() == pytest.approx(expected, rel=1e-12)


# ------------------------------------------------------------------------------------------------------------
# ICKD
# ------------------------------------------------------------------------------------------------------------
def _naive_ickd(f_s: np.ndarray, f_t: np.ndarray) -> float:
    b, c = f_s.shape[:2]
    total = 0.0
    for n in range(b):
        g_s = _naive_row_normalised_gram(f_s[n].reshape(c, -1))
        g_t = _naive_row_normalised_gram(f_t[n].reshape(c, -1))
        total += ((g_s - g_t) ** 2).sum()
    return total / (c * b)


def test_ickd_loss_golden_different_spatial_sizes():
    f_s, f_t = _feature((2, 3, 2, 2), seed=11), _feature((2, 3, 3, 3), seed=12)
    got = ickd_loss(torch.from_numpy(f_s), torch.from_numpy(f_t)).item()
    assert got == pytest.approx(_naive_ickd(f_s, f_t), rel=1e-12)


def test_ickd_module_golden_fixed_embedding():
    criterion = ICKDLoss(channels_s=3, channels_t=2).double()
    with torch.no_grad():  # the 1x1 conv keeps the first two student channels
        criterion.embed.conv.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).view(2, 3, 1, 1))
    criterion.eval()  # BN with its default statistics: y = x / sqrt(1 + eps)
    f_s, f_t = _feature((2, 3, 2, 2), seed=13), _feature((2, 2, 4, 4), seed=14)
    embedded = f_s[:, :2] / math.sqrt(1.0 + 1e-5)
    (got,) = criterion([torch.from_numpy(f_s)], [torch.from_numpy(f_t)])
    assert got.item() == pytest.approx(_naive_ickd(embedded, f_t), rel=1e-10)


def test_ickd_rejects_unembedded_student():
    with pytest.raises(ValueError, match="channels"):
        ickd_loss(torch.zeros(2, 3, 2, 2), torch.zeros(2, 4, 2, 2))


@pytest.mark.parametrize("train_embed", [True, False])
def test_ickd_train_embed_switch(train_embed):
    criterion = ICKDLoss(channels_s=4, channels_t=6, train_embed=train_embed)
    params = criterion.learnable_parameters()
    embed_params = list(criterion.embed.parameters())
    assert len(embed_params) == 3  # conv weight, BN weight and bias
    if train_embed:
        assert [id(p) for p in params] == [id(p) for p in embed_params]
        assert all(p.requires_grad for p in embed_params)
    else:
        assert params == []
        assert not any(p.requires_grad for p in embed_params)
    # The loss still backpropagates to the student feature either way.
    f_s = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    (loss,) = criterion([f_s], [torch.randn(2, 6, 5, 5, generator=torch.Generator().manual_seed(1))])
    loss.backward()
    assert f_s.grad is not None and torch.isfinite(f_s.grad).all()
    assert (criterion.embed.conv.weight.grad is not None) == train_embed


@pytest.mark.parametrize("loss_fn, scale", [(at_loss, 30.0), (sp_loss, 4.0), (ickd_loss, 40.0),
                                           (feature_distillation_loss, 200.0)])
def test_feature_statistics_stay_finite_and_match_fp32_under_fp16_autocast(loss_fn, scale):
    # Deep-feature magnitudes: the Gram entries (sums of 12 544 or 49 squares) and the attention's squares pass
    # fp16's 65 504, which made SP and ICKD NaN under TRAIN.AMP fp16; so would TAS's squared feature differences
    # where autocast does not compute powers in fp32 for it (the CPU's).
    torch.manual_seed(0)
    f_s, f_t = torch.randn(4, 256, 7, 7) * scale, torch.randn(4, 256, 7, 7) * scale
    reference = loss_fn(f_s, f_t)
    with torch.autocast("cpu", dtype=torch.float16):
        mixed = loss_fn(f_s.half(), f_t.half())
    assert mixed.dtype == torch.float32 and torch.isfinite(mixed)
    torch.testing.assert_close(mixed, reference, rtol=1e-2, atol=0.0)


@pytest.mark.parametrize("loss_fn", [lambda s, t, y: kd_loss(s, t, 4.0),
                                     lambda s, t, y: dkd_loss(s, t, y, 1.0, 2.0, 4.0)], ids=["kd", "dkd"])
def test_logit_losses_take_fp32_softmaxes_under_bf16_autocast(loss_fn):
    # CPU autocast, unlike CUDA's, leaves log_softmax in bf16: 0.3% off KD on these confident logits.
    torch.manual_seed(0)
    logits_s, logits_t = (torch.randn(64, 200) * 4).bfloat16(), (torch.randn(64, 200) * 8).bfloat16()
    target = torch.randint(0, 200, (64,))
    reference = loss_fn(logits_s.float(), logits_t.float(), target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = loss_fn(logits_s, logits_t, target)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, reference, rtol=1e-5, atol=0.0)


# ------------------------------------------------------------------------------------------------------------
# ISRD
# ------------------------------------------------------------------------------------------------------------
def test_isrd_scale_is_the_ceiling_of_image_over_feature_size():
    assert isrd_scale(224, 28) == 8  # ResNet-18@56: conv1 output 64x28x28
    assert isrd_scale(224, 3) == 75  # ViT-Tiny@56: 3x3 patches, ceil(74.67)
    assert isrd_scale(224, 7) == 32  # ViT@112
    assert isrd_scale(224, 56) == 4  # ResNet@112


def test_isrd_decoder_resnet_shape():
    decoder = build_decoder((64, 28, 28), 224)
    assert decoder.scale == 8 and decoder.conv.out_channels == 8 * 8 * 3
    assert decoder(torch.randn(2, 64, 28, 28)).shape == (2, 3, 224, 224)


def test_isrd_decoder_vit_crop():
    torch.manual_seed(0)
    decoder = build_decoder((192, 3, 3), 224)
    assert decoder.scale == 75 and decoder.conv.out_channels == 16875  # the paper's 192x3x3 -> 16875x3x3
    x = torch.randn(1, 192, 3, 3)
    full = decoder.act(decoder.shuffle(decoder.conv(x)))
    assert full.shape == (1, 3, 225, 225)
    out = decoder(x)
    assert out.shape == (1, 3, 224, 224)
    assert torch.equal(out, full[:, :, :224, :224])  # the top-left crop


def test_isrd_decoder_is_the_release_sr1x1_a_1x1_conv_without_bias_pixel_shuffle_and_prelu():
    decoder = SRDecoder(in_channels=8, scale=2, out_size=4)
    assert decoder.conv.kernel_size == (1, 1) and decoder.conv.bias is None
    assert sum(p.numel() for p in decoder.parameters()) == 8 * 2 * 2 * 3 + 3  # conv weight + PReLU slopes
    assert isinstance(decoder.shuffle, nn.PixelShuffle) and decoder.act.weight.numel() == 3
    with pytest.raises(ValueError, match="smaller"):
        decoder(torch.randn(1, 8, 1, 1))


def test_isrd_loss_golden():
    decoded = _feature((2, 3, 2, 2), seed=15)
    image = _feature((2, 3, 2, 2), seed=16)
    total, count = 0.0, 0
    for v_d, v_i in zip(decoded.ravel(), image.ravel()):
        total, count = total + abs(v_d - v_i), count + 1
    got = isrd_loss(torch.from_numpy(decoded), torch.from_numpy(image)).item()
    assert got == pytest.approx(total / count, rel=1e-12)
    with pytest.raises(ValueError, match="large image"):
        isrd_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 5, 5))
