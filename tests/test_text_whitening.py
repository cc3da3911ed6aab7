"""Text whitening (`model.text_whitening`): the statistics whiten; the network applies them before its projection."""

import pytest
import torch
from conftest import tiny_recipe

from hpdm_cli.config import ConfigError
from hpdm_cli.model import HPDMNet
from hpdm_cli.text.whitening import whitening_stats


def correlated_states(n=400, k=3, d=8, seed=0):
    """Caption states [n, k, d] with a per-position offset and very unequal variances along mixed directions."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.linalg.qr(torch.randn(d, d, generator=g))[0]
    scales = torch.logspace(-2, 1, d)                   # std 0.01 .. 10 along d directions
    return (torch.randn(n, k, d, generator=g) * scales) @ mix.T + torch.randn(k, d, generator=g) * 5


def test_whitening_equalises_the_variance_and_keeps_its_total():
    x = correlated_states()
    mean, w = whitening_stats(x, shrink=1e-9)
    assert torch.allclose(mean, x.mean(0), atol=1e-5)
    centred = (x - x.mean(0)).reshape(-1, x.shape[-1]).double()
    z = centred @ w.double()
    cov_before, cov_after = centred.T @ centred / len(centred), z.T @ z / len(z)
    ev_before, ev_after = torch.linalg.eigvalsh(cov_before), torch.linalg.eigvalsh(cov_after)
    assert float(ev_before.max() / ev_before.min()) > 1e5                        # a thousandfold spread of std before
    assert float(ev_after.max() / ev_after.min()) == pytest.approx(1.0, abs=1e-3)   # every direction alike after
    assert float(torch.trace(cov_after)) == pytest.approx(float(torch.trace(cov_before)), rel=1e-3)
    assert torch.allclose(w, w.T, atol=1e-5)                               # symmetric: no rotation of the states


def test_the_shrinkage_keeps_directions_without_variance_from_being_blown_up():
    x = correlated_states()
    x[..., 0] = 0                                                          # one coordinate never varies
    _, w = whitening_stats(x)                                              # the default shrink
    assert torch.isfinite(w).all() and w.abs().max() < 20
    with pytest.raises(ValueError, match="do not differ"):
        whitening_stats(torch.ones(5, 2, 4))
    with pytest.raises(ValueError, match=r"\[captions, tokens, dim\]"):
        whitening_stats(torch.ones(5, 4))


def test_the_network_whitens_the_text_states_before_its_projection():
    plain = tiny_recipe(cond="text", text_dim=8, text_tokens=3, adaptive_norm=True)
    whitened = tiny_recipe(cond="text", text_dim=8, text_tokens=3, adaptive_norm=True, text_whitening=True)
    torch.manual_seed(0)
    a = HPDMNet(plain.pyramid, plain.model)
    b = HPDMNet(whitened.pyramid, whitened.model)
    missing = b.load_state_dict(a.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["text_mean", "text_whiten"]                 # buffers, saved with the weights
    x = correlated_states(n=4)
    c_noise = torch.zeros(4)
    # Unset (zero mean, identity) the whitened network is the plain one ...
    for got, want in zip(b.cond_tokens(c_noise, 0, x, None), a.cond_tokens(c_noise, 0, x, None)):
        assert torch.equal(got, want)
    # ... and set, it is the plain one given (x - mean) @ matrix.
    mean, w = whitening_stats(correlated_states())
    b.text_mean.copy_(mean)
    b.text_whiten.copy_(w)
    for got, want in zip(b.cond_tokens(c_noise, 0, x, None), a.cond_tokens(c_noise, 0, (x - mean) @ w, None)):
        assert torch.allclose(got, want, atol=1e-5)
    keep = torch.tensor([True, False, True, False])                        # dropped captions: the null sequence
    toks, _ = b.cond_tokens(c_noise, 0, x, keep)
    assert torch.equal(toks[1, 2:], b.null_text) and not torch.equal(toks[0, 2:], b.null_text)


def test_text_whitening_needs_a_text_model():
    with pytest.raises(ConfigError, match=r'model.text_whitening = true whitens text states, but model.cond = '
                                          r'\'class\': set model.cond = "text" or model.text_whitening = false'):
        tiny_recipe(cond="class", text_whitening=True).validate()
