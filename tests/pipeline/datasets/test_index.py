import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.datasets.index import (
    INDEX_SCHEMA,
    IndexRecord,
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
    assert meta["image_root"] == rel and meta["source"] == "synthetic" and meta["index_version"] == "1"

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
