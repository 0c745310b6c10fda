import numpy as np
import pytest

from pipeline.tables import (
    METRICS_SCHEMA,
    TRIPLETS_SCHEMA,
    boxes_from_masks,
    concat_columns,
    decode_rle,
    read_table,
    triplet_rows,
    write_table,
)


def _masks():
    m = np.zeros((3, 10, 12), dtype=bool)
    m[0, 1:4, 2:6] = True
    m[1, 5:9, 0:3] = True
    return m  # mask 2 empty


def test_boxes_from_masks():
    np.testing.assert_array_equal(boxes_from_masks(_masks()), [[2, 1, 6, 4], [0, 5, 3, 9], [0, 0, 0, 0]])


def test_triplets_round_trip(tmp_path):
    masks = _masks()
    labels = np.array([1, 0, 2])
    trip = np.array([[0, 1, 1, 0.9], [1, 2, 0, 0.5]])
    cols = triplet_rows("img7", {"masks": masks, "labels": labels, "triplets": trip}, ["cat", "dog", "sky"],
                        ["on", "beside"])
    empty = {"masks": masks[:0], "labels": labels[:0], "triplets": trip[:0]}
    cols = concat_columns([cols, triplet_rows("img8", empty, [], [])], TRIPLETS_SCHEMA)
    path = tmp_path / "triplets.parquet"
    write_table(cols, TRIPLETS_SCHEMA, path)
    table = read_table(path, TRIPLETS_SCHEMA)
    rows = table.to_pylist()
    assert [r["rank"] for r in rows] == [0, 1]
    assert rows[0]["subject_name"] == "dog" and rows[0]["predicate_name"] == "beside"
    assert rows[1]["object_name"] == "sky"
    np.testing.assert_array_equal(decode_rle(rows[0]["subject_rle"], 10, 12), masks[0])
    np.testing.assert_array_equal(decode_rle(rows[1]["object_rle"], 10, 12), masks[2])
    assert rows[0]["score"] == pytest.approx(0.9)
    assert not list(tmp_path.glob("*.tmp"))


def test_schema_mismatch_is_reported(tmp_path):
    path = tmp_path / "m.parquet"
    write_table(
        {"setting": ["closed"], "metric": ["R"], "k": [20], "value": [0.5], "num_images": [3]}, METRICS_SCHEMA, path
    )
    assert read_table(path, METRICS_SCHEMA).num_rows == 1
    with pytest.raises(ValueError, match="schema does not match"):
        read_table(path, TRIPLETS_SCHEMA)


def test_box_triplets_keep_boxes_and_have_no_rle(tmp_path):
    boxes = np.array([[1.5, 2, 6, 8], [0, 0, 4, 3]], dtype=np.float32)
    pred = {"boxes": boxes, "labels": np.array([0, 1]), "triplets": np.array([[1, 0, 0, 0.7]])}
    with pytest.raises(ValueError, match="image size"):
        triplet_rows("vg1", pred, ["cat", "dog"], ["on"])
    cols = triplet_rows("vg1", pred, ["cat", "dog"], ["on"], size=(20, 30))
    path = tmp_path / "t.parquet"
    write_table(cols, TRIPLETS_SCHEMA, path)
    (row,) = read_table(path, TRIPLETS_SCHEMA).to_pylist()
    assert row["subject_box"] == [0, 0, 4, 3] and row["object_box"] == [1.5, 2, 6, 8]
    assert (row["height"], row["width"]) == (20, 30) and row["subject_rle"] == row["object_rle"] == ""
