import hashlib
import json

import pytest

from pipeline.datasets.classes import load_class_lists, read_data_file
from pipeline.datasets.index import IndexRecord
from pipeline.datasets.splits import Split, load_split, read_split_file, training_relations, usable_for_calibration

PGSG_NOVEL_IDS = [16, 23, 2, 14, 15, 26, 46, 4, 22, 1, 48, 37, 5, 11, 47, 12]


def test_closed_has_nothing_novel():
    for source in ("synthetic", "psg", "vg"):
        split = load_split(source, "closed")
        assert split.novel_predicates == frozenset() and split.novel_objects == frozenset()


def test_psg_predicate_split_is_pgsg():
    ovr = load_split("psg", "ovr")
    assert ovr.novel_predicates == frozenset(PGSG_NOVEL_IDS) and ovr.novel_objects == frozenset()
    names = load_class_lists("psg").predicate_classes
    assert {names[i] for i in ovr.novel_predicates} >= {"in front of", "beside", "in"}


def test_psg_object_split_follows_its_documented_rule():
    classes = load_class_lists("psg")
    ovdr = load_split("psg", "ovdr")
    assert ovdr.novel_predicates == frozenset(PGSG_NOVEL_IDS)

    def rule(names, k):
        return sorted(names, key=lambda n: hashlib.sha256(n.encode()).hexdigest())[:k]

    expected = rule(classes.thing_classes, 24) + rule(classes.stuff_classes, 16)
    assert {classes.object_classes[i] for i in ovdr.novel_objects} == set(expected)
    assert len(ovdr.novel_objects) == 40 and sum(i < 80 for i in ovdr.novel_objects) == 24
    assert "novel_objects_rule" in read_data_file("psg_split.json")


def test_synthetic_split():
    classes = load_class_lists("synthetic")
    ovdr = load_split("synthetic", "ovdr")
    assert {classes.predicate_classes[i] for i in ovdr.novel_predicates} == {"in front of", "beside", "inside"}
    novel = {classes.object_classes[i] for i in ovdr.novel_objects}
    assert novel == {"yellow star", "cyan hexagon", "pink heart", "floor", "sand"}
    assert load_split("synthetic", "ovr").novel_objects == frozenset()


def test_bad_arguments():
    with pytest.raises(ValueError, match="split must be one of"):
        load_split("psg", "open")
    with pytest.raises(ValueError, match="source must be one of"):
        load_split("coco", "closed")


def test_vg_split_is_the_ovsgtr_split():
    classes, raw = load_class_lists("vg"), read_data_file("vg_split.json")
    assert len(classes.object_classes) == 150 and classes.stuff_classes == () and classes.num_things == 150
    ovr, ovdr = load_split("vg", "ovr"), load_split("vg", "ovdr")
    assert {classes.predicate_classes[i] for i in ovr.novel_predicates} == set(raw["novel_predicates"])
    assert len(ovr.novel_predicates) == 15 and ovr.novel_objects == frozenset()
    assert ovdr.novel_predicates == ovr.novel_predicates
    assert {classes.object_classes[i] for i in ovdr.novel_objects} == set(raw["novel_objects"])
    assert len(ovdr.novel_objects) == 45


def _record():
    # segments: 0 red ball (base), 1 yellow star (novel object), 2 sky (base); predicates: 4 on, 6 in front of
    return {
        "segments_info": [{"category_id": 0}, {"category_id": 3}, {"category_id": 10}],
        "relations": [[0, 2, 5], [1, 2, 5], [0, 1, 6], [0, 2, 0]],
    }


def test_usable_for_calibration_per_split():
    rec = _record()
    assert usable_for_calibration(rec, load_split("synthetic", "closed"))
    assert not usable_for_calibration(rec, load_split("synthetic", "ovr"))  # has "in front of"
    rec_base_preds = {**rec, "relations": [[0, 2, 5], [1, 2, 5]]}
    assert usable_for_calibration(rec_base_preds, load_split("synthetic", "ovr"))
    assert not usable_for_calibration(rec_base_preds, load_split("synthetic", "ovdr"))  # yellow star
    no_star = {"segments_info": [{"category_id": 0}, {"category_id": 10}], "relations": [[0, 1, 5]]}
    assert usable_for_calibration(no_star, load_split("synthetic", "ovdr"))


def test_training_relations_per_split():
    rec = _record()
    closed = training_relations(rec, load_split("synthetic", "closed"))
    assert closed.relations == [(0, 2, 5), (1, 2, 5), (0, 1, 6), (0, 2, 0)]
    assert closed.novel_segments == [False, False, False]
    ovr = training_relations(rec, load_split("synthetic", "ovr"))
    assert ovr.relations == [(0, 2, 5), (1, 2, 5), (0, 2, 0)] and ovr.novel_segments == [False] * 3
    ovdr = training_relations(rec, load_split("synthetic", "ovdr"))
    assert ovdr.relations == [(0, 2, 5), (0, 2, 0)] and ovdr.novel_segments == [False, True, False]


def test_works_on_index_records_and_split_file(tmp_path):
    rec = IndexRecord("1", "a.png", "b.png", 4, 4, [1, 2, 3], [0, 3, 10], [True, True, False],
                      [[0, 0, 1, 1]] * 3, [[0, 2, 5], [1, 2, 5], [0, 1, 6]])  # fmt: skip
    split = load_split("synthetic", "ovdr")
    assert training_relations(rec, split).relations == [(0, 2, 5)]
    assert not usable_for_calibration(rec, split)
    (tmp_path / "split.json").write_text(json.dumps(split.to_json(load_class_lists("synthetic"))))
    assert read_split_file(tmp_path / "split.json") == split
    assert isinstance(split, Split)
