import pytest
import torch

from spade_core.psg.graph import combine_spatial_semantic, dilate_masks, spatial_semantic_graph


def _square(h, w, rows, cols):
    m = torch.zeros(h, w, dtype=torch.bool)
    m[rows[0] : rows[1] + 1, cols[0] : cols[1] + 1] = True
    return m


def _two_squares_gap2():
    # A covers columns 1..3, B columns 5..7: nearest pixels are 2 apart (one empty column between them).
    a = _square(12, 12, (2, 5), (1, 3))
    b = _square(12, 12, (2, 5), (5, 7))
    return torch.stack([a, b])[None]  # [1,2,H,W]


def _orthogonal_feats(n, d=8):
    return torch.eye(d)[:n][None]  # cosine 0 between distinct queries


def test_spatial_contact_depends_on_dilation():
    masks, feats = _two_squares_gap2(), _orthogonal_feats(2)
    g2 = spatial_semantic_graph(masks, feats, dilation=2, semantic_threshold=0.5)
    g1 = spatial_semantic_graph(masks, feats, dilation=1, semantic_threshold=0.5)
    assert g2[0, 0, 1] == 1 and g2[0, 1, 0] == 1
    assert g1[0, 0, 1] == 0 and g1[0, 1, 0] == 0


def test_dilation_zero_is_plain_overlap():
    a = _square(8, 8, (0, 3), (0, 3))
    b = _square(8, 8, (3, 5), (3, 5))  # shares pixel (3,3) with a
    c = _square(8, 8, (0, 1), (5, 6))  # touches nothing without dilation
    g = spatial_semantic_graph(torch.stack([a, b, c])[None], _orthogonal_feats(3), 0, 0.5)[0]
    assert g[0, 1] == 1 and g[0, 2] == 0 and g[1, 2] == 0


def test_semantic_edges_for_far_masks():
    a = _square(16, 16, (0, 2), (0, 2))
    b = _square(16, 16, (12, 15), (12, 15))
    masks = torch.stack([a, b])[None]
    same = torch.ones(1, 2, 4)
    assert spatial_semantic_graph(masks, same, 1, 0.9)[0, 0, 1] == 1
    # cosine 0.8 between the two queries
    feats = torch.tensor([[[1.0, 0.0], [0.8, 0.6]]])
    assert spatial_semantic_graph(masks, feats, 1, 0.9)[0, 0, 1] == 0
    assert spatial_semantic_graph(masks, feats, 1, 0.7)[0, 0, 1] == 1


def test_spatial_plus_semantic_saturates_at_one():
    g = spatial_semantic_graph(_two_squares_gap2(), torch.ones(1, 2, 4), dilation=2, semantic_threshold=0.5)
    assert torch.equal(g[0], torch.tensor([[0.0, 1.0], [1.0, 0.0]]))


def test_graph_is_symmetric_zero_diagonal_binary_and_constant():
    torch.manual_seed(0)
    masks = torch.rand(2, 6, 10, 10) > 0.85
    feats = torch.randn(2, 6, 5, requires_grad=True)
    g = spatial_semantic_graph(masks, feats, dilation=1, semantic_threshold=0.3)
    assert g.shape == (2, 6, 6) and not g.requires_grad
    assert torch.equal(g, g.transpose(1, 2))
    assert torch.all(torch.diagonal(g, dim1=1, dim2=2) == 0)
    assert set(g.unique().tolist()) <= {0.0, 1.0}
    assert g.sum() > 0


def test_float_masks_thresholded_at_half():
    masks = _two_squares_gap2().float() * 0.6  # still foreground
    g = spatial_semantic_graph(masks, _orthogonal_feats(2), 2, 0.5)
    assert g[0, 0, 1] == 1
    g_low = spatial_semantic_graph(masks * 0.5, _orthogonal_feats(2), 2, 0.5)  # 0.3: background
    assert g_low.sum() == 0


def test_batch_images_are_independent():
    touching = _two_squares_gap2()[0]
    apart = torch.stack([_square(12, 12, (0, 1), (0, 1)), _square(12, 12, (9, 11), (9, 11))])
    g = spatial_semantic_graph(torch.stack([touching, apart]), _orthogonal_feats(2).expand(2, 2, 8), 2, 0.5)
    assert g[0, 0, 1] == 1 and g[1, 0, 1] == 0


def test_valid_zeroes_rows_and_columns():
    masks = torch.ones(1, 3, 4, 4, dtype=torch.bool)  # all overlap
    g = spatial_semantic_graph(masks, _orthogonal_feats(3), 0, 0.5, valid=torch.tensor([[True, False, True]]))
    assert g[0, 0, 2] == 1 and g[0, 1].sum() == 0 and g[0, :, 1].sum() == 0


def test_dilate_masks_square_element():
    m = torch.zeros(1, 1, 7, 7)
    m[0, 0, 3, 3] = 1
    assert dilate_masks(m, 2).sum() == 25
    with pytest.raises(ValueError, match="dilation"):
        dilate_masks(m, -1)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="query_feats"):
        spatial_semantic_graph(torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 4), 1, 0.5)
    with pytest.raises(ValueError, match="masks"):
        spatial_semantic_graph(torch.zeros(2, 4, 4), torch.zeros(1, 2, 4), 1, 0.5)


def test_combine_spatial_semantic():
    """The shared tail of the mask and box graphs: spatial OR semantic, zero diagonal, invalid rows/cols zero."""
    spatial = torch.tensor([[[True, True, False], [True, True, False], [False, False, True]]])
    feats = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.1, 1.0]]])  # 1 and 2 semantically close
    g = combine_spatial_semantic(spatial, feats, 0.9)[0]
    assert g.tolist() == [[0, 1, 0], [1, 0, 1], [0, 1, 0]] and g.dtype == feats.dtype
    gv = combine_spatial_semantic(spatial, feats, 0.9, torch.tensor([[True, True, False]]))[0]
    assert gv.tolist() == [[0, 1, 0], [1, 0, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match="valid"):
        combine_spatial_semantic(spatial, feats, 0.9, torch.ones(1, 2, dtype=torch.bool))
