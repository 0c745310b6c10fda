"""OvSGTR's open-vocabulary training filters (pipeline/datasets/vg_open_vocab.py) on hand-built records."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.datasets.classes import read_data_file
from pipeline.datasets.vg import VGRecord, _one_predicate_per_pair
from pipeline.datasets.vg_open_vocab import (
    OpenVocabSplit,
    box_iou,
    cap_objects,
    filter_base_objects,
    filter_base_relations,
    filter_duplicate_relations,
    load_open_vocab_split,
    merge_same_class_boxes,
    open_vocab_training_record,
)

# four disjoint boxes
BOXES = [[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10]]


def record(labels, relations, boxes=None, index=7) -> VGRecord:
    boxes = BOXES[: len(labels)] if boxes is None else boxes
    return VGRecord(
        index=index,
        image_id=str(100 + index),
        file_name=f"{100 + index}.jpg",
        width=100,
        height=100,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64),
        relations=np.asarray(relations, dtype=np.int64).reshape(-1, 3),
        split="train",
    )


# --- OvR ----------------------------------------------------------------------------------------------------


def test_ovr_removes_novel_predicates_keeps_boxes():
    rec = record([0, 1, 2], [[0, 1, 3], [1, 2, 5], [2, 0, 3]])
    stats: dict[str, int] = {}
    out = filter_base_relations(rec, {3}, stats)
    assert out.relations.tolist() == [[1, 2, 5]]
    np.testing.assert_array_equal(out.boxes, rec.boxes)
    assert out.labels.tolist() == [0, 1, 2]
    assert stats == {"relations_removed_ovr": 2}
    assert rec.relations.shape == (3, 3)  # the input is not modified


def test_ovr_drops_image_without_base_relation():
    stats: dict[str, int] = {}
    assert filter_base_relations(record([0, 1], [[0, 1, 3]]), [3], stats) is None
    assert stats == {"relations_removed_ovr": 1, "images_dropped_ovr": 1}


# --- OvD ----------------------------------------------------------------------------------------------------


def test_ovd_removes_novel_boxes_and_their_relations_reindexing():
    # labels: 0 base, 9 novel (removed), 1 base, 2 base; relations touching box 1 go
    rec = record([0, 9, 1, 2], [[0, 1, 4], [1, 2, 4], [0, 2, 5], [3, 0, 6]])
    stats: dict[str, int] = {}
    out = filter_base_objects(rec, {9}, None, stats=stats)
    assert out.labels.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(out.boxes, rec.boxes[[0, 2, 3]])
    assert out.relations.tolist() == [[0, 1, 5], [2, 0, 6]]
    assert stats == {"boxes_removed_ovd": 1, "relations_removed_ovd": 2}


def test_ovd_relabel_keeps_box_and_relation():
    rec = record([0, 9, 8], [[0, 1, 4], [2, 1, 5]])
    stats: dict[str, int] = {}
    out = filter_base_objects(rec, {8, 9}, {9: (3,), 8: ()}, stats=stats)
    assert out.labels.tolist() == [0, 3]
    assert out.relations.tolist() == [[0, 1, 4]]
    assert stats == {"boxes_relabelled_ovd": 1, "boxes_removed_ovd": 1, "relations_removed_ovd": 1}


def test_ovd_random_relabel_is_seeded_and_draws_from_the_list():
    rec = record([9, 9, 9, 9], [[0, 1, 0], [2, 3, 0]])
    draws = set()
    for seed in range(20):
        out = filter_base_objects(rec, {9}, {9: (3, 4)}, np.random.default_rng(seed))
        again = filter_base_objects(rec, {9}, {9: (3, 4)}, np.random.default_rng(seed))
        assert out.labels.tolist() == again.labels.tolist()
        draws |= set(out.labels.tolist())
    assert draws == {3, 4}


def test_ovd_drops_image_with_fewer_than_two_boxes_or_no_relation():
    stats: dict[str, int] = {}
    # one base box left (the relation is a self-loop on it, so a relation is left): still dropped (< 2 boxes)
    assert filter_base_objects(record([0, 9], [[0, 0, 1], [0, 1, 1]]), {9}, stats=stats) is None
    # two base boxes left but their only relation touched the novel box
    assert filter_base_objects(record([0, 1, 9], [[0, 2, 1]]), {9}, stats=stats) is None
    assert stats["images_dropped_ovd"] == 2


# --- cap and merge ------------------------------------------------------------------------------------------


def test_cap_keeps_a_random_subset_and_the_relations_between_kept_boxes():
    n = 6
    boxes = [[10 * i, 0, 10 * i + 5, 5] for i in range(n)]
    rels = [[i, (i + 1) % n, i] for i in range(n)]
    rec = record(list(range(n)), rels, boxes)
    assert cap_objects(rec, 6) is rec
    stats: dict[str, int] = {}
    out = cap_objects(rec, 4, np.random.default_rng(0), stats)
    chosen = np.random.default_rng(0).choice(n, 4, replace=False)
    assert out.labels.tolist() == chosen.tolist()  # labels = original indices here
    np.testing.assert_array_equal(out.boxes, rec.boxes[chosen])
    for s, o, p in out.relations.tolist():  # each kept relation is an original one, re-indexed
        assert [int(chosen[s]), int(chosen[o]), p] in rels
    kept = sum(1 for s, o, _ in rels if s in chosen and o in chosen)
    assert len(out.relations) == kept
    assert stats == {"boxes_removed_cap": 2, "relations_removed_cap": n - kept}
    with pytest.raises(ValueError):
        cap_objects(rec, 0)


def test_box_iou_plain():
    iou = box_iou([[0, 0, 10, 10]], [[0, 0, 10, 10], [5, 0, 15, 10], [10, 0, 20, 10], [0, 0, 0, 0]])
    np.testing.assert_allclose(iou, [[1.0, 50 / 150, 0.0, 0.0]])


def test_merge_same_class_high_iou_only():
    # box 1 = box 0 shifted by 0.5 px: IoU = 9.5/10.5 = 0.905 > 0.9; box 2 same geometry, other class;
    # box 3 shifted 2 px: IoU 8/12 with box 0, 8.5/11.5 with box 1 (kept)
    boxes = [[0, 0, 10, 10], [0.5, 0, 10.5, 10], [0, 0, 10, 10], [2, 0, 12, 10]]
    rec = record([5, 5, 6, 5], [[1, 2, 0], [3, 1, 1], [0, 2, 2]], boxes)
    stats: dict[str, int] = {}
    out = merge_same_class_boxes(rec, stats=stats)
    assert out.labels.tolist() == [5, 6, 5]
    np.testing.assert_array_equal(out.boxes, rec.boxes[[0, 2, 3]])
    # box 1 -> new 0, box 2 -> new 1, box 3 -> new 2; GT rows not de-duplicated
    assert out.relations.tolist() == [[0, 1, 0], [2, 0, 1], [0, 1, 2]]
    assert stats == {"boxes_merged": 1}


def test_merge_threshold_is_strict():
    # IoU exactly 0.9: [0,0,10,10] vs [0,0,9,10] -> 90/100
    rec = record([1, 1], [[0, 1, 0]], [[0, 0, 10, 10], [0, 0, 9, 10]])
    assert len(merge_same_class_boxes(rec).labels) == 2
    assert len(merge_same_class_boxes(rec, 0.89).labels) == 1


def test_merge_chain_bookkeeping_as_ovsgtr():
    # A~B (IoU 0.905), B~C (0.905), A vs C 0.818: A keeps {A, B}; B is kept again as C's representative
    boxes = [[0, 0, 10, 10], [0.5, 0, 10.5, 10], [1, 0, 11, 10]]
    rec = record([4, 4, 4], [[0, 1, 0], [1, 2, 1], [2, 0, 2]], boxes)
    out = merge_same_class_boxes(rec)
    np.testing.assert_array_equal(out.boxes, rec.boxes[[0, 1]])
    # new ids: A -> 0, B -> 0, C -> 1; the A-B relation becomes a self-loop
    assert out.relations.tolist() == [[0, 0, 0], [0, 1, 1], [1, 0, 2]]
    stats: dict[str, int] = {}
    dropped = merge_same_class_boxes(rec, drop_self_loops=True, stats=stats)
    assert dropped.relations.tolist() == [[0, 1, 1], [1, 0, 2]]
    assert stats == {"self_loops_dropped": 1, "boxes_merged": 1}


def test_filter_duplicate_relations_matches_the_reader():
    rels = [[0, 1, 2], [0, 1, 3], [1, 0, 2], [0, 1, 4]]
    rec = record([0, 1], rels)
    out = filter_duplicate_relations(rec, seed=5)
    expected = _one_predicate_per_pair(np.asarray(rels), np.random.default_rng([5, rec.index]))
    assert out.relations.tolist() == expected.tolist()
    assert len(out.relations) == 2


# --- split file and the composite ---------------------------------------------------------------------------


def test_packaged_split_counts_and_ids():
    split = load_open_vocab_split()
    classes = read_data_file("vg_classes.json")
    assert len(split.novel_predicates) == 15 and len(split.novel_objects) == 45
    # 1-based ids of VG_SPEC.md section 3
    assert sorted(p + 1 for p in split.novel_predicates) == [7, 9, 14, 16, 22, 30, 31, 34, 36, 37, 38, 39, 45, 46, 49]
    names = classes["thing_classes"]
    assert split.novel_to_base[names.index("table")] == (names.index("board"), names.index("desk"))
    assert split.novel_to_base[names.index("bed")] == ()
    assert set(split.novel_to_base) == set(split.novel_objects)


def test_split_from_names_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown predicate"):
        OpenVocabSplit.from_names({"novel_predicates": ["flying"], "novel_objects": []}, ["a"], ["on"])
    with pytest.raises(ValueError, match="lists a novel class"):
        OpenVocabSplit.from_names(
            {"novel_predicates": [], "novel_objects": ["a", "b"], "novel_to_base": {"a": ["b"]}}, ["a", "b"], ["on"]
        )


SPLIT = OpenVocabSplit(frozenset({3}), frozenset({9}), {9: ()})


def test_composite_modes():
    # box 2 is novel; predicate 3 is novel
    rec = record([0, 1, 9], [[0, 1, 3], [0, 1, 5], [1, 2, 5], [2, 0, 6]])
    closed = open_vocab_training_record(rec, "closed", SPLIT, filter_duplicate_rels=False)
    assert closed.relations.tolist() == rec.relations.tolist()
    ovr = open_vocab_training_record(rec, "ovr", SPLIT, filter_duplicate_rels=False)
    assert ovr.relations.tolist() == [[0, 1, 5], [1, 2, 5], [2, 0, 6]] and len(ovr.labels) == 3
    ovd = open_vocab_training_record(rec, "ovd", SPLIT, filter_duplicate_rels=False)
    assert ovd.labels.tolist() == [0, 1] and ovd.relations.tolist() == [[0, 1, 3], [0, 1, 5]]
    stats: dict[str, int] = {}
    ovdr = open_vocab_training_record(rec, "ovdr", SPLIT, stats=stats)
    assert ovdr.relations.tolist() == [[0, 1, 5]]
    assert stats["relations_removed_ovd"] == 2 and stats["relations_removed_ovr"] == 1
    with pytest.raises(ValueError, match="mode"):
        open_vocab_training_record(rec, "ov", SPLIT)


def test_composite_removes_novel_before_choosing_one_predicate_per_pair():
    # the pair (0, 1) has a novel (3) and a base (5) predicate: OvR first, so the base one always survives
    rec = record([0, 1], [[0, 1, 3], [0, 1, 5]])
    for seed in range(10):
        out = open_vocab_training_record(rec, "ovr", SPLIT, seed=seed)
        assert out.relations.tolist() == [[0, 1, 5]]


def test_composite_closed_equals_reader_duplicate_filter_and_is_seeded():
    rec = record([0, 1, 2], [[0, 1, 2], [0, 1, 3], [1, 2, 2], [1, 2, 4]])
    a = open_vocab_training_record(rec, "closed", seed=3)
    b = open_vocab_training_record(rec, "closed", seed=3)
    assert a.relations.tolist() == b.relations.tolist()
    ref = _one_predicate_per_pair(rec.relations, np.random.default_rng([3, rec.index]))
    assert a.relations.tolist() == ref.tolist()


def test_composite_drops_images_and_counts():
    stats: dict[str, int] = {}
    assert open_vocab_training_record(record([0, 1], [[0, 1, 3]]), "ovr", SPLIT, stats=stats) is None
    assert open_vocab_training_record(record([9, 1], [[0, 1, 5]]), "ovdr", SPLIT, stats=stats) is None
    assert stats["images_dropped_ovr"] == 1 and stats["images_dropped_ovd"] == 1
    # the cap can leave an image without a relation
    rec = record([0, 1, 2], [[0, 1, 5]])
    kept = [open_vocab_training_record(rec, "closed", SPLIT, seed=s, max_objects=2, stats=stats) for s in range(20)]
    assert any(k is None for k in kept) and any(k is not None for k in kept)
    assert stats["images_dropped_empty"] >= 1


def test_on_records_read_from_a_synthetic_vg_triple(tmp_path):
    from pipeline.datasets.synthetic_vg import generate_vg_dataset
    from pipeline.datasets.vg import read_vg_split

    root = tmp_path / "vg"
    f = generate_vg_dataset(root, seed=1, num_train=6, num_test=2, image_size=64, progress=False)
    records = read_vg_split(
        f.h5, f.dicts, f.image_data, f.image_root, "train", num_val=0, filter_duplicate_rels=False
    ).records
    assert records
    preds = {int(p) for r in records for p in r.relations[:, 2]}
    labels = {int(c) for r in records for c in r.labels}
    split = OpenVocabSplit(frozenset({min(preds)}), frozenset({min(labels)}), {})
    stats: dict[str, int] = {}
    out = [open_vocab_training_record(r, "ovdr", split, seed=0, stats=stats) for r in records]
    for rec in (r for r in out if r is not None):
        assert min(preds) not in rec.relations[:, 2].tolist()
        assert min(labels) not in rec.labels.tolist()
        assert len(rec.labels) >= 2 and len(rec.relations) >= 1
        assert rec.relations[:, :2].max() < len(rec.labels)
        pairs = [tuple(p) for p in rec.relations[:, :2].tolist()]
        assert len(pairs) == len(set(pairs))  # one predicate per pair
    dropped = sum(stats.get(f"images_dropped_{k}", 0) for k in ("ovd", "ovr", "empty"))
    assert sum(r is None for r in out) == dropped
