import pytest
import torch

from spade_core.psg.rgt import GraphMaskedAttention, RelationGraphTransformer, normalized_adjacency

D, Q = 16, 6


def _inputs(seed=0, b=2, q=Q):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, q, D, generator=g)
    upper = (torch.rand(b, q, q, generator=g) > 0.5).float().triu(1)
    return x, upper + upper.transpose(1, 2)


def _model(**switches):
    torch.manual_seed(0)
    return RelationGraphTransformer(D, num_blocks=2, num_heads=4, **switches).eval()


def _variant_with_full_weights(full, **switches):
    m = _model(**switches)
    missing, unexpected = m.load_state_dict(full.state_dict(), strict=False)
    assert not missing and unexpected  # the switched-off part's weights are left over
    return m


@pytest.mark.parametrize("switch", ["use_lcnl", "use_lcnnl", "use_lcl"])
def test_each_switch_changes_the_output(switch):
    x, g = _inputs()
    full = _model()
    off = _variant_with_full_weights(full, **{switch: False})
    with torch.no_grad():
        assert not torch.allclose(full(x, g), off(x, g), atol=1e-4)


@pytest.mark.parametrize("switch", ["use_lcnl", "use_lcnnl", "use_lcl"])
def test_switch_off_equals_zeroing_that_part(switch):
    """Switching a part off is the same as zeroing its weights (and its mean input of the fusion MLP)."""
    x, g = _inputs(1)
    full = _model()
    off = _variant_with_full_weights(full, **{switch: False})
    with torch.no_grad():
        for blk in full.blocks:
            if switch == "use_lcl":
                blk.lcl.weight.zero_()
                continue
            att, cols = (blk.lcnl, slice(D, 2 * D)) if switch == "use_lcnl" else (blk.lcnnl, slice(2 * D, None))
            att.out.weight.zero_()
            att.out.bias.zero_()
            blk.fusion[0].weight[:, cols].zero_()
        torch.testing.assert_close(full(x, g), off(x, g))


@pytest.mark.parametrize("fill", [0.0, 1.0])
def test_empty_neighbourhoods_are_finite(fill):
    x, _ = _inputs(2)
    x.requires_grad_(True)
    g = torch.full((2, Q, Q), fill)
    model = _model()
    out = model(x, g)
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_masked_attention_rows_without_keys_are_zero():
    torch.manual_seed(0)
    att = GraphMaskedAttention(D, 4)
    allowed = torch.zeros(1, 3, 3, dtype=torch.bool)
    allowed[0, 0, 1] = True  # only node 0 has a key
    out = att(torch.randn(1, 3, D), allowed)
    assert out[0, 0].abs().sum() > 0
    assert torch.equal(out[0, 1:], torch.zeros(2, D))


def test_permutation_equivariance():
    x, g = _inputs(3)
    model = _model()
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    with torch.no_grad():
        out = model(x, g)
        out_p = model(x[:, perm], g[:, perm][:, :, perm])
    torch.testing.assert_close(out_p, out[:, perm], atol=1e-5, rtol=1e-5)


def test_padded_queries_do_not_affect_valid_ones():
    x, g = _inputs(4, b=1, q=4)
    torch.manual_seed(5)
    x_pad = torch.cat([x, torch.randn(1, 3, D) * 10], dim=1).requires_grad_(True)
    g_pad = torch.ones(1, 7, 7)  # padded nodes "connected" to everything
    g_pad[:, :4, :4] = g
    valid = torch.tensor([[True] * 4 + [False] * 3])
    model = _model()
    ref = model(x, g)
    out = model(x_pad, g_pad, valid)
    torch.testing.assert_close(out[:, :4], ref, atol=1e-5, rtol=1e-5)
    out[:, :4].sum().backward()
    assert torch.equal(x_pad.grad[:, 4:], torch.zeros(1, 3, D))


def test_normalized_adjacency_matches_formula():
    g = torch.tensor([[[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]])
    a = g[0] + torch.eye(3)
    dinv = torch.diag(a.sum(1) ** -0.5)
    torch.testing.assert_close(normalized_adjacency(g)[0], dinv @ a @ dinv)


def test_bad_shapes_raise():
    model = _model()
    with pytest.raises(ValueError, match="G must be"):
        model(torch.zeros(1, 3, D), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="valid must be"):
        model(torch.zeros(1, 3, D), torch.zeros(1, 3, 3), torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="divisible"):
        RelationGraphTransformer(10, num_heads=4)
