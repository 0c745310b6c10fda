"""`SpadePSG` with `task="boxes"` (Visual Genome): DETR box head, box matching and losses, box graph and pooling,
pixel boxes and graph-constrained triplets at `predict`."""

import json

import pytest
import torch
from torchvision.ops import box_convert, masks_to_boxes

from spade_core.eval.vg import evaluate as vg_evaluate
from spade_core.psg.box_graph import box_masks, box_spatial_semantic_graph, union_box_masks
from spade_core.psg.box_head import denormalize_boxes, normalize_boxes
from spade_core.psg.box_projection import boxes_from_mask_logits
from spade_core.psg.classifier import mask_pool, pooled_logits
from spade_core.psg.config import SpadePSGConfig
from spade_core.psg.model import SpadePSG
from spade_core.psg.postprocess import class_scores, rank_triplets

from .conftest import make_psg_config

SMALL = {"hidden_dim": 32, "num_queries": 8, "rgt_blocks": 2, "max_pairs": 12, "min_relation_objects": 4}


def _model(channels, task="boxes", **kwargs) -> SpadePSG:
    torch.manual_seed(0)
    return SpadePSG(make_psg_config(channels, 16, task=task, **{**SMALL, **kwargs}))


def _run(model, d, **kwargs):
    return model(d["feats"], d["dense"], d["obj_text"], d["pred_text"], **kwargs)


def _box_targets(targets: list[dict]) -> list[dict]:
    """The mask targets as box targets: normalised cxcywh of each mask's bounding box (exclusive ends)."""
    out = []
    for t in targets:
        size = tuple(t["masks"].shape[-2:])
        xyxy = masks_to_boxes(t["masks"].float()) + torch.tensor([0.0, 0.0, 1.0, 1.0])
        out.append({"labels": t["labels"], "boxes": normalize_boxes(xyxy, size), "relations": t["relations"]})
    return out


def test_box_forward_shapes_graph_and_pooling(random_psg_inputs):
    d = random_psg_inputs
    model = _model(d["channels"])
    assert not model.instance_decoder.masked_attention
    out = _run(model, d)
    assert out["boxes"].shape == (2, 8, 4) and ((out["boxes"] > 0) & (out["boxes"] < 1)).all()
    assert len(out["aux_boxes"]) == len(out["aux"]) == 3
    assert all(b.shape == (2, 8, 4) for b in out["aux_boxes"])
    assert not torch.allclose(out["aux_boxes"][-1], out["boxes"])  # each decoder output has its own boxes
    assert out["mask_logits"].shape == (2, 8, 16, 16) and out["class_logits"].shape == (2, 8, 6)
    assert out["pairs"].shape == (2, 12, 2) and out["rel_logits"].shape == (2, 12, 4)
    a = model.config.architecture
    graph = box_spatial_semantic_graph(out["boxes"], out["query_feats"], a.graph_dilation, a.semantic_threshold,
                                       out["query_valid"], size=(16, 16))
    torch.testing.assert_close(out["graph"], graph)
    # the pooled second opinion is taken inside the boxes and the union boxes at the dense map's resolution
    xyxy = box_convert(out["boxes"], "cxcywh", "xyxy")
    t = model.config.inference.pooled_temperature
    expected_obj = pooled_logits(mask_pool(d["dense"], box_masks(xyxy, (8, 8))), d["obj_text"], t)
    expected_rel = pooled_logits(mask_pool(d["dense"], union_box_masks(xyxy, out["pairs"], (8, 8))),
                                 d["pred_text"], t)
    torch.testing.assert_close(out["pooled_obj_logits"], expected_obj)
    torch.testing.assert_close(out["pooled_rel_logits"], expected_rel)


class _FixedBoxes(torch.nn.Module):
    """Stands in for `BoxHead`: the same boxes `[Q,4]` for every image and decoder output."""

    def __init__(self, boxes: torch.Tensor):
        super().__init__()
        self.boxes = boxes

    def forward(self, query_feats: torch.Tensor) -> torch.Tensor:
        return self.boxes.expand(query_feats.shape[0], -1, -1)


def test_box_graph_follows_the_boxes(random_psg_inputs):
    """Spatial edges between the boxes only (semantic edges off), in the 16 x 16 mask-logit frame: 0-1 overlap,
    2-3 are 1.2 px apart (graph_dilation 3), the rest are far apart. (At initialisation the masks all overlap.)"""
    d = random_psg_inputs
    model = _model(d["channels"], semantic_threshold=1.1, min_relation_objects=8)
    cx = [0.1, 0.2, 0.6, 0.8, 0.1, 0.9, 0.55, 0.9]
    cy = [0.1, 0.1, 0.5, 0.5, 0.9, 0.1, 0.9, 0.9]
    model.box_head = _FixedBoxes(torch.tensor([[x, y, 0.125, 0.125] for x, y in zip(cx, cy)]))
    out = _run(model, d)
    expected = torch.zeros(8, 8)
    expected[0, 1] = expected[1, 0] = expected[2, 3] = expected[3, 2] = 1
    assert out["query_valid"].all()
    assert out["graph"][0].tolist() == expected.tolist() and out["graph"][1].tolist() == expected.tolist()


def test_duplicate_boxes_leave_the_graph_and_the_pairs(random_psg_inputs):
    """Queries 1 and 5 repeat the box of 0 (IoU 1 and 0.9): with `duplicate_iou` 0.7 only the most object-like
    of the three stays valid (every query passes `object_threshold` 0); no graph edge and no relation pair
    involves the others. Off (None): all stay."""
    d = random_psg_inputs
    boxes = torch.tensor([[0.2, 0.2, 0.2, 0.2], [0.2, 0.2, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2], [0.2, 0.7, 0.2, 0.2],
                          [0.7, 0.2, 0.2, 0.2], [0.2, 0.2, 0.2, 0.18], [0.5, 0.5, 0.1, 0.1], [0.9, 0.9, 0.1, 0.1]])
    outs = {}
    for iou in (None, 0.7):
        model = _model(d["channels"], object_threshold=0.0, min_relation_objects=2, duplicate_iou=iou).eval()
        model.box_head = _FixedBoxes(boxes)
        outs[iou] = _run(model, d)
    assert outs[None]["query_valid"].all()
    out = outs[0.7]
    objectness = 1 - out["class_logits"].softmax(-1)[..., -1]
    for b in range(2):
        best = max((0, 1, 5), key=lambda q: objectness[b, q].item())
        dropped = [q for q in (0, 1, 5) if q != best]
        assert out["query_valid"][b].tolist() == [q not in dropped for q in range(8)]
        assert not out["graph"][b, dropped].any() and not out["graph"][b, :, dropped].any()
        used = out["pairs"][b][out["pair_valid"][b]]
        assert used.numel() and not torch.isin(used, torch.tensor(dropped)).any()


def test_mask_model_has_no_boxes(random_psg_inputs):
    d = random_psg_inputs
    model = _model(d["channels"], task="masks")
    assert model.instance_decoder.masked_attention and not hasattr(model, "box_head")
    out = _run(model, d)
    assert out["boxes"] is None and out["aux_boxes"] == []
    assert "masks" in model.predict(out, (64, 64))[0]


def test_box_loss_parts_weights_and_gradients(random_psg_inputs):
    d = random_psg_inputs
    model = _model(d["channels"])
    targets = _box_targets(d["targets"])
    losses = model.loss(_run(model, d), targets)
    for key in ("loss", "loss_rel", "loss_rqc", "loss_mask", "loss_ce", "loss_bbox", "loss_giou", "loss_giou_2"):
        assert torch.isfinite(losses[key]), key
    assert "loss_bce" not in losses and "loss_dice" not in losses
    w = model.config.criterion.loss_weights
    assert (w.ce, w.bbox, w.giou) == (2.0, 5.0, 2.0)
    layer = [w.ce * losses[f"loss_ce{s}"] + w.bbox * losses[f"loss_bbox{s}"] + w.giou * losses[f"loss_giou{s}"]
             for s in ("", "_0", "_1", "_2")]
    torch.testing.assert_close(losses["loss_mask"], sum(layer))
    torch.testing.assert_close(losses["loss"], losses["loss_rel"] + 0.6 * losses["loss_rqc"] + losses["loss_mask"])
    losses["loss"].backward()
    for name, p in model.box_head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # the masks are not supervised, and nothing else reads them in the box task
    assert all(p.grad is None for p in model.instance_decoder.mask_embed.parameters())
    with pytest.raises(ValueError, match="'boxes' task needs 'boxes'"):
        model.loss(_run(model, d), d["targets"])


def test_boxes_from_masks_forward_and_loss(random_psg_inputs):
    """`box_source="mask"`: masked cross-attention, the boxes are the masks' tight boxes (the head's for an
    empty mask), and BoxInst's projection term on every decoder output trains the masks."""
    d = random_psg_inputs
    model = _model(d["channels"], box_source="mask")
    assert model.instance_decoder.masked_attention and model.boxes_from_masks
    out = _run(model, d)
    torch.testing.assert_close(out["boxes"], boxes_from_mask_logits(out["mask_logits"], out["head_boxes"]))
    assert not torch.equal(out["boxes"], out["head_boxes"])
    losses = model.loss(out, _box_targets(d["targets"]))
    w = model.config.criterion.loss_weights
    layer = [w.ce * losses[f"loss_ce{s}"] + w.bbox * losses[f"loss_bbox{s}"] + w.giou * losses[f"loss_giou{s}"]
             + w.proj * losses[f"loss_proj{s}"] + w.outside * losses[f"loss_outside{s}"]
             for s in ("", "_0", "_1", "_2")]
    torch.testing.assert_close(losses["loss_mask"], sum(layer))
    assert all(losses[f"loss_proj{s}"] > 0 for s in ("", "_0", "_1", "_2"))  # (the random boxes fill the image)
    losses["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.instance_decoder.mask_embed.parameters())
    assert all(p.grad is not None for p in model.box_head.parameters())  # the head is still trained
    assert "loss_proj" not in _model(d["channels"]).loss(_run(_model(d["channels"]), d), _box_targets(d["targets"]))


def test_perfectly_predicted_boxes_have_zero_box_loss(random_psg_inputs):
    """Queries 0..S-1 predict the GT boxes and classes (the others a far-off corner box, "no object"): the
    matcher pairs them and L1 = GIoU loss = 0, on every decoder output."""
    d = random_psg_inputs
    model = _model(d["channels"])
    targets = [{**t, "boxes": torch.tensor(b)} for t, b in zip(d["targets"], (
        [[0.3, 0.3, 0.2, 0.4], [0.7, 0.6, 0.3, 0.3], [0.5, 0.5, 0.9, 0.9]], [[0.25, 0.75, 0.5, 0.5]]))]
    out = _run(model, d)
    boxes = torch.tensor([0.95, 0.95, 0.05, 0.05]).repeat(2, 8, 1)
    class_logits = torch.full((2, 8, 6), -10.0)
    class_logits[..., -1] = 10.0
    for b, t in enumerate(targets):
        n = len(t["labels"])
        boxes[b, :n] = t["boxes"]
        class_logits[b, torch.arange(n), t["labels"]] = 10.0
        class_logits[b, :n, -1] = -10.0
    out = {**out, "boxes": boxes, "head_boxes": boxes, "aux_boxes": [boxes] * 3, "class_logits": class_logits,
           "aux": [(class_logits, m) for _, m in out["aux"]]}
    losses = model.loss(out, targets)
    for s in ("", "_0", "_2"):
        assert losses[f"loss_bbox{s}"].abs() < 1e-6 and losses[f"loss_giou{s}"].abs() < 1e-6
        assert losses[f"loss_ce{s}"] < 1e-3
    indices = model.box_matcher(class_logits, boxes, targets)
    assert [p.tolist() for p, _ in indices] == [[0, 1, 2], [0]] and [g.tolist() for _, g in indices] == [[0, 1, 2], [0]]
    moved = boxes.clone()
    moved[0, 0, 0] += 0.1  # one box off by 0.1 in cx: L1 = 0.1 / 4 GT boxes
    losses = model.loss({**out, "boxes": moved, "head_boxes": moved}, targets)
    torch.testing.assert_close(losses["loss_bbox"], torch.tensor(0.1 / 4))


def test_predict_pixel_boxes_and_graph_constrained_triplets(random_psg_inputs):
    d = random_psg_inputs
    model = _model(d["channels"]).eval()
    out = _run(model, d)
    sizes = [(64, 64), (40, 48)]
    preds = model.predict(out, sizes, max_triplets=20, score_threshold=0.05)
    alpha = model.config.inference.alpha
    obj = class_scores(out["class_logits"], out["pooled_obj_logits"], alpha)
    rel = class_scores(out["rel_logits"], out["pooled_rel_logits"], alpha)
    for b, (pred, size) in enumerate(zip(preds, sizes)):
        assert set(pred) == {"boxes", "labels", "scores", "triplets"}
        keep = obj[b].max(-1).values > 0.05
        n = int(keep.sum())
        assert pred["boxes"].shape == (n, 4) and pred["boxes"].dtype == torch.float32
        torch.testing.assert_close(pred["boxes"], denormalize_boxes(out["boxes"][b, keep], size))
        assert pred["labels"].tolist() == obj[b].argmax(-1)[keep].tolist()
        trip = pred["triplets"]
        pairs = [tuple(r) for r in trip[:, :2].long().tolist()]
        assert 0 < len(pairs) == len(set(pairs)) <= 20  # one row per ordered pair
        assert (trip[1:, 3] <= trip[:-1, 3]).all()
        # brute force: every valid pair of kept queries with its best predicate
        kept = torch.nonzero(keep).flatten().tolist()
        cands = []
        for p, (s, o) in enumerate(out["pairs"][b].tolist()):
            if out["pair_valid"][b, p] and s in kept and o in kept:
                score = rel[b, p].max() * obj[b, s].max() * obj[b, o].max()
                cands.append((-score.item(), kept.index(s), kept.index(o), int(rel[b, p].argmax())))
        cands.sort(key=lambda c: c[0])
        torch.testing.assert_close(trip[:, 3], torch.tensor([-c[0] for c in cands[:20]]))
        assert trip[:, :3].long().tolist() == [list(c[1:]) for c in cands[:20]]


def test_rank_triplets_with_graph_constraint_by_hand():
    """The example of `test_model.test_rank_triplets_by_hand` (same kept instances and renumbering), one
    predicate per pair."""
    obj_scores = torch.tensor([0.9, 0.5, 0.8, 0.1])
    pairs = torch.tensor([[0, 2], [2, 0], [1, 0], [0, 3]])
    pair_valid = torch.tensor([True, True, True, False])
    pred_scores = torch.tensor([[0.5, 0.5], [0.2, 0.1], [0.9, 0.0], [1.0, 1.0]])
    keep = torch.tensor([True, False, True, True])  # query 1 dropped: pair (1, 0) goes, 2 -> 1, 3 -> 2
    out = rank_triplets(obj_scores, pairs, pair_valid, pred_scores, keep, 10, graph_constraint=True)
    torch.testing.assert_close(out, torch.tensor([[0, 1, 0, 0.36], [1, 0, 0, 0.144]]))  # tie: lowest predicate
    assert rank_triplets(obj_scores, pairs, pair_valid, pred_scores, keep, 1, graph_constraint=True).shape == (1, 4)
    none_kept = rank_triplets(obj_scores, pairs, pair_valid, pred_scores, torch.zeros(4, dtype=torch.bool), 10,
                              graph_constraint=True)
    assert none_kept.shape == (0, 4)


def test_box_config_round_trip(random_psg_inputs):
    d = random_psg_inputs
    model = _model(d["channels"], cost_giou=3.0).eval()
    raw = json.loads(json.dumps(model.config.to_dict()))
    assert raw["architecture"]["task"] == "boxes" and raw["criterion"]["cost_giou"] == 3.0
    clone = SpadePSG(SpadePSGConfig.from_dict(raw)).eval()
    assert clone.config == model.config and clone.box_matcher.cost_giou == 3.0
    clone.load_state_dict(model.state_dict())
    torch.testing.assert_close(_run(clone, d)["boxes"], _run(model, d)["boxes"])


def test_box_state_dict_extends_the_mask_one():
    """Box task = the mask model's parameters (same names, same initial values under one seed) + `box_head`."""
    masks, boxes = _model([32, 64], task="masks").state_dict(), _model([32, 64]).state_dict()
    assert list(boxes)[: len(masks)] == list(masks)
    extra = list(boxes)[len(masks):]
    assert extra and all(k.startswith("box_head.") for k in extra)
    assert all(torch.equal(masks[k], boxes[k]) for k in masks)


@pytest.mark.parametrize("box_source", ["head", "mask"])
def test_box_overfit_fast(synthetic_psg, single_thread, box_source):
    """60 steps on the 4 synthetic images with box targets: the loss falls by > 10x and the VG SGDet recall of
    the pixel boxes (IoU >= 0.5, graph-constrained triplets) reaches the GT triplets (R@20 ~ 1; 1 from ~40
    steps on), with the head's boxes and with the tight boxes of the box-supervised masks."""
    d = synthetic_psg
    targets = _box_targets(d["targets"])
    torch.manual_seed(0)
    model = SpadePSG(make_psg_config(d["channels"], 16, task="boxes", hidden_dim=32, num_queries=8, max_pairs=16,
                                     rgt_blocks=2, use_pooled_logits=False, box_source=box_source))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    losses = []
    for _ in range(60):
        loss = model.loss(_run(model, d), targets)["loss"]
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    assert losses[-1] < 0.1 * losses[0]
    with torch.no_grad():
        preds = model.eval().predict(_run(model, d), (64, 64))
    gt = [{"boxes": denormalize_boxes(t["boxes"], (64, 64)), "labels": t["labels"], "relations": t["relations"]}
          for t in targets]
    assert vg_evaluate(gt, preds, num_predicates=3, ks=(20,))["R@20"] >= 0.9


def test_all_pairs_at_inference_turns_off_the_eta_gate(random_psg_inputs):
    """`InferenceConfig.all_pairs`: every ordered pair of detected queries is queried (up to `max_pairs`), whatever
    `S`; without it, eq. 13's `eta` (here above every similarity) leaves only the `min_pairs` fallback."""
    d = random_psg_inputs
    gated = _model(d["channels"], eta=1.0, min_pairs=2, max_pairs=40).eval()
    config = SpadePSGConfig.from_dict({**gated.config.to_dict(), "inference": {
        **gated.config.inference.to_dict(), "all_pairs": True}})
    every = SpadePSG(config).eval()
    every.load_state_dict(gated.state_dict())
    out_gated, out_every = _run(gated, d), _run(every, d)
    assert out_gated["pair_valid"].sum(1).tolist() == [2, 2]
    detected = out_every["query_valid"].sum(1)
    assert out_every["pair_valid"].sum(1).tolist() == (detected * (detected - 1)).clamp(max=40).tolist()
    torch.testing.assert_close(out_every["boxes"], out_gated["boxes"])  # the instances are the same
