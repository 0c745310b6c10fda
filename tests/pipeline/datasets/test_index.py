import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.datasets.index import (
    INDEX_SCHEMA,
    AnnotationError,
    IndexRecord,
    box_regions,
    index_metadata,
    read_index,
    read_index_table,
    write_index,
)
from pipeline.datasets.psg import load_psg_json, validate_record


def _records(root):
    psg = load_psg_json(root / "psg.json")
    return [validate_record(r, root, 10, 16, 10)[0] for r in psg.records]


def test_schema_round_trip_with_relative_root(tiny_dataset, tmp_path):
    records = _records(tiny_dataset)
    path = tmp_path / "index" / "train.parquet"
    rel = os.path.relpath(tiny_dataset, path.parent)
    write_index(path, records, rel, {"source": "synthetic", "split": "closed"})

    table = read_index_table(path)
    assert table.schema.equals(INDEX_SCHEMA) and table.num_rows == len(records)
    assert table.schema.field("bboxes").type == pa.list_(pa.list_(pa.float32(), 4))
    assert table.schema.field("relations").type == pa.list_(pa.list_(pa.int32(), 3))
    meta = index_metadata(path)
    assert meta["image_root"] == rel and meta["source"] == "synthetic" and meta["index_version"] == "2"

    back = read_index(path)
    assert back == records  # image_root is excluded from equality; everything else round-trips exactly
    assert back[0].image_root == os.path.normpath(tiny_dataset)
    row = table.slice(0, 1).to_pylist()[0]
    assert row["num_segments"] == len(records[0].segment_ids) and row["num_relations"] == len(records[0].relations)


def test_loading_image_and_masks(tiny_dataset, tmp_path):
    path = tmp_path / "i.parquet"
    write_index(path, _records(tiny_dataset), str(tiny_dataset))
    rec = read_index(path)[3]
    img, masks = rec.load_image(), rec.load_panoptic()
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert masks.shape == (len(rec.segment_ids), 64, 64) and masks.dtype == bool
    assert np.all(masks.sum(0) == 1)  # synthetic panoptic maps cover every pixel exactly once
    ys, xs = np.nonzero(masks[-1])
    np.testing.assert_allclose(rec.bboxes[-1], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


def test_empty_index_and_wrong_schema(tmp_path):
    write_index(tmp_path / "e.parquet", [], "/x")
    assert read_index(tmp_path / "e.parquet") == []
    pq.write_table(pa.table({"a": [1]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="image_root"):
        read_index(tmp_path / "bad.parquet")


def test_record_validation_of_row_types(tmp_path):
    rec = IndexRecord("1", "a.png", "b.png", 4, 4, [1], [0], [True], [[0, 0, 1, 1, 2]], [])
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError, ValueError)):
        write_index(tmp_path / "x.parquet", [rec], "/x")


def test_panoptic_records_regions_are_their_masks(tiny_dataset, tmp_path):
    path = tmp_path / "p.parquet"
    write_index(path, _records(tiny_dataset), str(tiny_dataset), {"annotation": "panoptic"})
    rec = read_index(path)[2]
    assert rec.annotation == "panoptic" and index_metadata(path)["annotation"] == "panoptic"
    np.testing.assert_array_equal(rec.load_regions(), rec.load_panoptic())


def _box_record(bboxes, **kw):
    n = len(bboxes)
    return IndexRecord("7", "7.jpg", "", 4, 6, [], list(range(n)), [True] * n, bboxes, [[0, 1, 2]] if n > 1 else [],
                       **kw)  # fmt: skip


def test_box_records_round_trip_and_count_objects(tmp_path):
    rec = _box_record([[0, 0, 2, 1], [1.5, 0.5, 6, 4]], usable_for_calibration=True)
    assert rec.annotation == "boxes"
    path = tmp_path / "b.parquet"
    write_index(path, [rec], "/x", {"annotation": "boxes"})
    assert read_index(path) == [rec]
    row = read_index_table(path).to_pylist()[0]
    assert row["num_segments"] == 2 and row["segment_ids"] == []  # num_segments counts objects
    with pytest.raises(AnnotationError, match="image 7: a box-annotated record"):
        rec.load_panoptic()
    regions = rec.load_regions()  # no file is read
    assert regions.shape == (2, 4, 6) and regions.dtype == bool
    np.testing.assert_array_equal(regions[0], box_regions([[0, 0, 2, 1]], 4, 6)[0])


def test_box_regions_take_the_pixels_whose_centre_is_inside():
    # x1 <= x + 0.5 < x2 and y1 <= y + 0.5 < y2 (exclusive ends)
    r = box_regions([[0.5, 0, 2.5, 1], [0, 0, 3, 2], [1.6, 1.2, 2.9, 3.6]], 3, 4)
    np.testing.assert_array_equal(r[0], [[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(r[1], [[1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(r[2], [[0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0]])
    # a box covering no pixel centre gets the pixel containing its centre; clipped to the image
    r = box_regions([[1.6, 0.6, 1.9, 0.9], [3.7, 2.7, 4.0, 3.0], [2.0, 0.55, 3.0, 0.6]], 3, 4)
    assert r.sum(axis=(1, 2)).tolist() == [1, 1, 1]
    assert r[0, 0, 1] and r[1, 2, 3] and r[2, 0, 2]
    assert box_regions(np.zeros((0, 4)), 3, 4).shape == (0, 3, 4)


def test_annotation_metadata_must_agree_with_the_records(tiny_dataset, tmp_path):
    box = _box_record([[0, 0, 2, 1]])
    with pytest.raises(ValueError, match="image 7 is a 'boxes' record in an index of annotation 'panoptic'"):
        write_index(tmp_path / "x.parquet", [box], "/x", {"annotation": "panoptic"})
    with pytest.raises(ValueError, match="annotation must be one of"):
        write_index(tmp_path / "x.parquet", [box], "/x", {"annotation": "masks"})
    path = tmp_path / "y.parquet"
    write_index(path, [box], "/x")
    table = pq.read_table(path)
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, b"annotation": b"panoptic"}), path)
    with pytest.raises(ValueError, match="in an index of annotation 'panoptic'"):
        read_index(path)
