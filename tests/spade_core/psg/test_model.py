import hashlib
import json

import pytest
import torch

from spade_core.eval.sgdet import evaluate
from spade_core.psg.config import PSGLossWeights, SpadePSGConfig
from spade_core.psg.model import SpadePSG, detected_queries
from spade_core.psg.postprocess import class_scores, rank_triplets, restrict_triplets
from spade_core.psg.relation_losses import matched_gt_from_indices, relation_indicator, relation_query_loss

from .conftest import make_psg_config


def _model(channels, **kwargs) -> SpadePSG:
    torch.manual_seed(0)
    args = {"hidden_dim": 32, "num_queries": 8, "rgt_blocks": 2, "max_pairs": 12, "min_relation_objects": 4}
    return SpadePSG(make_psg_config(channels, 16, **{**args, **kwargs}))


def _run(model, d, **kwargs):
    return model(d["feats"], d["dense"], d["obj_text"], d["pred_text"], **kwargs)


def test_forward_shapes(random_psg_inputs):
    d = random_psg_inputs
    out = _run(_model(d["channels"]), d)
    assert out["mask_logits"].shape == (2, 8, 16, 16)  # 2 x the largest feature map (8 x 8)
    assert out["query_feats"].shape == (2, 8, 32)
    assert out["class_logits"].shape == (2, 8, 6)
    assert len(out["aux"]) == 3 and out["aux"][0][0].shape == (2, 8, 6)
    assert out["graph"].shape == out["S"].shape == (2, 8, 8)
    assert out["query_valid"].shape == (2, 8) and out["query_valid"].sum(1).min() >= 4
    assert out["pairs"].shape == (2, 12, 2) and out["pair_valid"].shape == (2, 12)
    assert out["rel_logits"].shape == (2, 12, 4)
    assert out["pooled_obj_logits"].shape == (2, 8, 5) and out["pooled_rel_logits"].shape == (2, 12, 3)
    valid_pairs = out["pairs"][out["pair_valid"]]
    assert (valid_pairs[:, 0] != valid_pairs[:, 1]).all()
    torch.testing.assert_close(out["S"], out["S"].transpose(1, 2))


def test_loss_parts_and_weights(random_psg_inputs):
    d = random_psg_inputs
    model = _model(d["channels"])
    out = _run(model, d)
    losses = model.loss(out, d["targets"])
    for key in ("loss", "loss_rel", "loss_rqc", "loss_mask", "loss_ce", "loss_bce", "loss_dice", "loss_dice_2"):
        assert torch.isfinite(losses[key]), key
    assert losses["loss_rqc"] > 0
    w = model.config.criterion.loss_weights
    assert (w.ce, w.bce, w.dice) == (2.0, 5.0, 5.0)
    layer = [w.ce * losses[f"loss_ce{s}"] + w.bce * losses[f"loss_bce{s}"] + w.dice * losses[f"loss_dice{s}"]
             for s in ("", "_0", "_1", "_2")]
    torch.testing.assert_close(losses["loss_mask"], sum(layer))
    torch.testing.assert_close(losses["loss"], losses["loss_rel"] + 0.6 * losses["loss_rqc"] + losses["loss_mask"])
    no_rqc = model.loss(out, d["targets"], weights={"rqc": 0.0, "mask": 0.5})
    torch.testing.assert_close(no_rqc["loss"], losses["loss_rel"] + 0.5 * losses["loss_mask"])
    assert _model(d["channels"], use_rqc=False).loss(out, d["targets"])["loss_rqc"] == 0
    shallow = _model(d["channels"], deep_supervision=False)
    assert "loss_ce_0" not in shallow.loss(_run(shallow, d), d["targets"])


def test_rqc_over_detected_pairs_adds_the_unmatched_ones_with_target_0(random_psg_inputs):
    """`rqc_pairs="detected"`: L_rqc over the matched pairs plus every pair of valid (detected) queries, the
    latter with target 0 when a query is unmatched; "matched" (the default) leaves those pairs out."""
    d = random_psg_inputs
    model = _model(d["channels"], min_relation_objects=8)  # all 8 queries detected, 3 + 2 GT instances
    out = _run(model, d)
    matched = model.loss(out, d["targets"])["loss_rqc"]
    detected = _model(d["channels"], min_relation_objects=8, rqc_pairs="detected").loss(out, d["targets"])
    tgts = [{"labels": t["labels"], "masks": t["masks"]} for t in d["targets"]]
    size = tuple(out["mask_logits"].shape[-2:])
    indices = model.matcher(out["class_logits"], out["mask_logits"],
                            model._instance_targets(tgts, size, out["S"].device))
    psi, valid = relation_indicator(matched_gt_from_indices(indices, 8), [t["relations"] for t in d["targets"]], 8,
                                    symmetric=True)
    assert valid.sum() < 2 * 8 * 7  # some queries are unmatched
    everything = ~torch.eye(8, dtype=torch.bool).expand(2, 8, 8)
    torch.testing.assert_close(matched, relation_query_loss(out["S"], psi, valid))
    torch.testing.assert_close(detected["loss_rqc"], relation_query_loss(out["S"], psi, everything))
    assert detected["loss_rqc"] > matched
    with pytest.raises(ValueError, match=r"rqc_pairs must be one of \['matched', 'detected'\], got 'all'"):
        _model(d["channels"], rqc_pairs="all")


def test_gradient_reaches_every_trainable_parameter(random_psg_inputs):
    """Every parameter gets a non-zero gradient from the loss. The graph is fixed to a half-dense one: at
    initialisation all predicted masks are large and overlap, so the spatial-semantic graph is complete and
    the non-neighbour attention (LCNNL) would have no keys, hence no gradient, for this one batch."""
    d = random_psg_inputs
    model = _model(d["channels"])
    g = torch.Generator().manual_seed(5)
    graph = (torch.rand(2, 8, 8, generator=g) > 0.5).float()
    graph = torch.maximum(graph, graph.transpose(1, 2)) * (1 - torch.eye(8))
    losses = model.loss(_run(model, d, graph=graph), d["targets"])
    losses["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_switches(random_psg_inputs):
    d = random_psg_inputs
    model = _model(d["channels"], use_lcnl=False, use_lcl=False, use_pooled_logits=False)
    assert model.rgt.blocks[0].lcnl is None and model.rgt.blocks[0].lcl is None
    assert model.rgt.blocks[0].lcnnl is not None
    out = _run(model, d)
    assert out["pooled_obj_logits"] is None and out["pooled_rel_logits"] is None
    pooled_only = _model(d["channels"], use_diffusion_logits=False)
    out = _run(pooled_only, d)
    pred = pooled_only.predict(out, (64, 64))[0]
    objectness = 1 - out["class_logits"][0].softmax(-1)[:, -1]
    expected = out["pooled_obj_logits"][0].softmax(-1).max(-1).values * objectness
    torch.testing.assert_close(pred["scores"], expected)
    with pytest.raises(ValueError, match="use_diffusion_logits"):
        _model(d["channels"], use_diffusion_logits=False, use_pooled_logits=False)


def test_detected_queries():
    objectness = torch.tensor([[0.9, 0.1, 0.6, 0.2], [0.1, 0.3, 0.2, 0.05]])
    valid = detected_queries(objectness, threshold=0.5, min_count=1)
    assert valid.tolist() == [[True, False, True, False], [False, True, False, False]]
    assert detected_queries(objectness, 0.5, 3).sum(1).tolist() == [3, 3]
    # duplicates leave the detected set and rank last for the floor of min_count
    duplicate = torch.tensor([[False, False, True, False], [False, True, False, False]])
    assert detected_queries(objectness, 0.5, 1, duplicate).tolist() == [[True, False, False, False],
                                                                        [False, False, True, False]]
    assert detected_queries(objectness, 0.5, 3, duplicate).tolist() == [[True, True, False, True],
                                                                        [True, False, True, True]]
    everything_duplicate = torch.ones(2, 4, dtype=torch.bool)  # early in training: the floor still gives pairs
    assert detected_queries(objectness, 0.5, 2, everything_duplicate).tolist() == [[True, False, True, False],
                                                                                   [False, True, True, False]]


def test_restrict_triplets_keeps_order_and_renumbers():
    triplets = torch.tensor([[0, 3, 1, 0.9], [1, 2, 0, 0.8], [3, 0, 2, 0.7], [2, 3, 1, 0.6]])
    keep = torch.tensor([True, False, True, True])
    out = restrict_triplets(triplets, keep)  # query 1 goes; 2 -> 1, 3 -> 2
    torch.testing.assert_close(out, torch.tensor([[0, 2, 1, 0.9], [2, 0, 2, 0.7], [1, 2, 1, 0.6]]))
    assert restrict_triplets(triplets[:0], keep).shape == (0, 4)


def test_class_scores():
    logits = torch.tensor([[[2.0, 0.0, 1.0]]])  # 2 classes + none
    pooled = torch.tensor([[[0.0, 1.0]]])
    p = logits.softmax(-1)[0, 0]
    torch.testing.assert_close(class_scores(logits, None, 0.34)[0, 0], p[:2])
    p_diff, p_pool = p[:2] / p[:2].sum(), pooled.softmax(-1)[0, 0]
    fused = p_diff**0.34 * p_pool**0.66
    expected = fused / fused.sum() * (1 - p[2])
    torch.testing.assert_close(class_scores(logits, pooled, 0.34)[0, 0], expected)


def test_rank_triplets_by_hand():
    obj_scores = torch.tensor([0.9, 0.5, 0.8, 0.1])
    pairs = torch.tensor([[0, 2], [2, 0], [1, 0], [0, 3]])
    pair_valid = torch.tensor([True, True, True, False])
    pred_scores = torch.tensor([[0.5, 0.5], [0.2, 0.1], [0.9, 0.0], [1.0, 1.0]])
    keep = torch.tensor([True, False, True, True])  # query 1 dropped: pair (1, 0) goes, 2 -> 1, 3 -> 2
    out = rank_triplets(obj_scores, pairs, pair_valid, pred_scores, keep, max_triplets=3)
    expected = [[0, 1, 0, 0.36], [0, 1, 1, 0.36], [1, 0, 0, 0.144]]  # tie keeps predicate order
    torch.testing.assert_close(out, torch.tensor(expected))
    assert rank_triplets(obj_scores, pairs, pair_valid, pred_scores, keep, 10).shape == (4, 4)


def test_predict_format_and_ranking(random_psg_inputs):
    d = random_psg_inputs
    model = _model(d["channels"]).eval()
    out = _run(model, d)
    preds = model.predict(out, [(64, 64), (40, 48)], max_triplets=20, score_threshold=0.05)
    alpha = model.config.inference.alpha
    obj = class_scores(out["class_logits"], out["pooled_obj_logits"], alpha)
    rel = class_scores(out["rel_logits"], out["pooled_rel_logits"], alpha)
    for b, (pred, size) in enumerate(zip(preds, [(64, 64), (40, 48)])):
        keep = obj[b].max(-1).values > 0.05
        n = int(keep.sum())
        assert pred["masks"].dtype == torch.bool and pred["masks"].shape == (n, *size)
        assert pred["labels"].tolist() == obj[b].argmax(-1)[keep].tolist()
        trip = pred["triplets"]
        assert trip.shape[1] == 4 and 0 < trip.shape[0] <= 20
        assert (trip[1:, 3] <= trip[:-1, 3]).all()
        # brute force over every valid (pair, predicate) of kept queries
        kept = torch.nonzero(keep).flatten().tolist()
        cands = []
        for p, (s, o) in enumerate(out["pairs"][b].tolist()):
            if out["pair_valid"][b, p] and s in kept and o in kept:
                for c in range(rel.shape[-1]):
                    score = obj[b, s].max() * obj[b, o].max() * rel[b, p, c]
                    cands.append((-score.item(), kept.index(s), kept.index(o), c))
        cands.sort(key=lambda t: t[0])
        torch.testing.assert_close(trip[:, 3], torch.tensor([-c[0] for c in cands[:20]]))
        assert trip[:, :3].long().tolist() == [list(c[1:]) for c in cands[:20]]
    single = model.predict(out, (64, 64))
    assert len(single) == 2 and single[1]["masks"].shape[-2:] == (64, 64)
    with pytest.raises(ValueError, match="image_size"):
        model.predict(out, [(64, 64)] * 3)


def _train(d: dict, steps: int, **kwargs) -> tuple[SpadePSG, float, float]:
    torch.manual_seed(0)
    model = SpadePSG(make_psg_config(d["channels"], 16, hidden_dim=32, num_queries=8, max_pairs=16, **kwargs))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    for step in range(steps):
        losses = model.loss(_run(model, d), d["targets"])
        if step == 0:
            first = losses["loss"].item()
        opt.zero_grad()
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return model.eval(), first, losses["loss"].item()


def _recall(model: SpadePSG, d: dict) -> dict:
    with torch.no_grad():
        preds = model.predict(_run(model, d), (64, 64))
    return evaluate(d["targets"], preds, num_predicates=3, ks=(3, 20), skip_empty_predictions=False)


def test_overfit_fast(synthetic_psg, single_thread):
    """60 steps on 4 synthetic images: the loss falls by > 10x and the top-3 triplets of every image are its
    GT triplets (R@3 ~ 1; images have <= 3 relations). The pooled CLIP branch is off: on this data the
    union-pooled map cannot encode predicates, so it is noise (it has nothing to train)."""
    model, first, last = _train(synthetic_psg, 60, rgt_blocks=2, use_pooled_logits=False)
    assert last < 0.1 * first
    metrics = _recall(model, synthetic_psg)
    assert metrics["R@3"] >= 0.9 and metrics["R@20"] == 1.0


@pytest.mark.slow
def test_overfit_default_model(synthetic_psg, single_thread):
    """Default depth (8 RGT blocks) with the fused pooled classification: near-perfect training recall."""
    model, first, last = _train(synthetic_psg, 200)
    assert last < 0.05 * first
    metrics = _recall(model, synthetic_psg)
    assert metrics["R@20"] == 1.0 and metrics["mR@20"] == 1.0


def test_config_round_trip(random_psg_inputs):
    d = random_psg_inputs
    weights = PSGLossWeights(rel=1.0, rqc=0.3, mask=1.0)
    model = _model(d["channels"], use_lcl=False, loss_weights=weights).eval()
    config = json.loads(json.dumps(model.config.to_dict()))
    assert config["architecture"]["use_lcl"] is False and config["architecture"]["max_pairs"] == 12
    assert config["criterion"]["loss_weights"]["rqc"] == 0.3
    clone = SpadePSG(SpadePSGConfig.from_dict(config)).eval()
    clone.load_state_dict(model.state_dict())
    assert clone.config == model.config and clone.config.criterion.loss_weights == weights
    torch.testing.assert_close(_run(clone, d)["rel_logits"], _run(model, d)["rel_logits"])


def test_eta_decides_which_pairs_become_relation_queries(random_psg_inputs):
    """Eq. 13: with the fallback minimum below the candidate count, eta changes the selected pairs (same weights,
    same inputs); with eta below every similarity, all slots fill."""
    d = random_psg_inputs
    outs = {}
    for eta in (-1.0, 0.5, 0.99):
        model = _model(d["channels"], eta=eta, min_pairs=2, min_relation_objects=8)
        outs[eta] = _run(model, d)
    counts = {eta: out["pair_valid"].sum(1).tolist() for eta, out in outs.items()}
    assert counts[-1.0] == [12, 12]  # every candidate passes: capped at max_pairs
    S = outs[0.5]["S"]
    for b in range(2):
        passing = int(((S[b] > 0.5) & ~torch.eye(8, dtype=torch.bool)).sum())
        assert counts[0.5][b] == min(max(passing, 2), 12)
        chosen = outs[0.5]["pairs"][b][outs[0.5]["pair_valid"][b]]
        if passing >= 2:
            assert (S[b][chosen[:, 0], chosen[:, 1]] > 0.5).all()
    assert counts[0.99] != counts[-1.0] and min(counts[0.99]) >= 2  # the fallback keeps 2 pairs per image


def test_no_rgt_baseline_passes_instance_features_through(random_psg_inputs):
    """rgt_blocks = 0 (paper Table 6 baseline): S is the cosine similarity of the instance features."""
    d = random_psg_inputs
    model = _model(d["channels"], rgt_blocks=0)
    assert len(model.rgt.blocks) == 0 and not list(model.rgt.parameters())
    out = _run(model, d)
    torch.testing.assert_close(out["rgt_feats"], out["query_feats"])
    unit = torch.nn.functional.normalize(out["query_feats"], dim=-1)
    torch.testing.assert_close(out["S"], unit @ unit.transpose(1, 2))


# Mask-model state_dict recorded before the box task was added (torch 2.14, CPU): the box task must leave the
# mask model's parameters, names, order and seeded initial values as they were (checkpoints, reproducibility).
MASK_STATE_KEYS = 170
MASK_STATE_SHA256 = "da4f3cbb903d64f9871870c10133fa8455216f8c9b9ef4679f9db28d179362e2"  # of "name:shape" lines
MASK_STATE_ABS_SUMS = {
    "pyramid": 1594.2858379844793,
    "instance_decoder": 3789.2950010399527,
    "object_classifier": 49.95460882765474,
    "rgt": 2633.8105576934713,
    "query_builder": 161.79787907004356,
    "relation_decoder": 4507.767160710542,
    "predicate_classifier": 51.753277736803284,
}


def test_mask_state_dict_unchanged_by_the_box_task():
    def build():
        torch.manual_seed(0)
        return SpadePSG(make_psg_config([32, 64], 16, hidden_dim=32, num_queries=8, rgt_blocks=2, max_pairs=12,
                                        decoder_layers=2)).state_dict()

    state, again = build(), build()
    assert list(state) == list(again) and all(torch.equal(state[k], again[k]) for k in state)
    lines = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in state.items())
    assert len(state) == MASK_STATE_KEYS
    assert hashlib.sha256(lines.encode()).hexdigest() == MASK_STATE_SHA256
    sums = {}
    for k, v in state.items():
        top = k.split(".")[0]
        sums[top] = sums.get(top, 0.0) + v.double().abs().sum().item()
    assert list(sums) == list(MASK_STATE_ABS_SUMS)
    for name, expected in MASK_STATE_ABS_SUMS.items():
        assert sums[name] == pytest.approx(expected, rel=1e-6), name
