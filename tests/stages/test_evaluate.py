import json

import numpy as np
import pytest
from PIL import Image

from pipeline.tables import METRICS_SCHEMA, TRIPLETS_SCHEMA, decode_rle, read_table
from stages.predict import predict_files

from .conftest import run_stage_in, tiny_params_dict


@pytest.fixture
def evaluated(trained_workspace, monkeypatch):
    run_stage_in(trained_workspace, "evaluate", tiny_params_dict(), monkeypatch)
    return trained_workspace


def test_evaluate_writes_tables_metrics_and_pictures(evaluated):
    ws = evaluated / "artifacts"
    triplets = read_table(ws / "evaluate/triplets.parquet", TRIPLETS_SCHEMA).to_pylist()
    assert triplets, "the model predicted no triplet at all"
    first = triplets[0]
    mask = decode_rle(first["subject_rle"], first["height"], first["width"])
    assert mask.shape == (64, 64)
    ranks = [r["rank"] for r in triplets if r["image_id"] == first["image_id"]]
    assert ranks == list(range(len(ranks))) and len(ranks) <= 100
    scores = [r["score"] for r in triplets if r["image_id"] == first["image_id"]]
    assert scores == sorted(scores, reverse=True)
    metrics = read_table(ws / "evaluate/metrics.parquet", METRICS_SCHEMA).to_pylist()
    settings = {r["setting"] for r in metrics}
    assert {"closed", "spatial_dr", "spatial_ndr", "chance_closed"} <= settings
    assert {r["k"] for r in metrics} == {20, 50, 100}
    summary = json.loads((ws / "metrics.json").read_text())
    assert 0.0 <= summary["closed"]["R@50"] <= 1.0 and summary["closed"]["num_images"] == 6
    assert (ws / "per_predicate_recall.csv").read_text().startswith("predicate,recall")
    assert len(list((ws / "evaluate/visualisations").glob("*.png"))) == 1
    assert not list(ws.glob("*evaluate.tmp*")) and not list(ws.glob(".evaluate.old*"))


def test_predict_with_a_custom_vocabulary(evaluated, tmp_path, monkeypatch):
    monkeypatch.chdir(evaluated)
    image = np.zeros((48, 80, 3), dtype=np.uint8)
    image[:, :40] = (200, 30, 30)
    Image.fromarray(image).save(tmp_path / "mine.png")
    objects = tmp_path / "objects.txt"
    objects.write_text("crimson disc\nazure cube\nmeadow\n")
    predicates = tmp_path / "predicates.txt"
    predicates.write_text("next to\nabove\n")
    out = tmp_path / "out"
    written = predict_files([tmp_path / "mine.png"], out, objects, predicates, max_triplets=10)
    graph = json.loads(written[0].read_text())
    assert {o["class"] for o in graph["objects"]} <= {"crimson disc", "azure cube", "meadow"}
    assert all(t["predicate"] in ("next to", "above") for t in graph["triplets"])
    assert len(graph["triplets"]) <= 10
    assert all(o["score"] >= 0.01 for o in graph["objects"])  # no zero-score query slots
    n = len(graph["objects"])
    assert all(t["subject"] < n and t["object"] < n for t in graph["triplets"])
    assert (out / "mine.png").is_file()
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="empty"):
        predict_files([tmp_path / "mine.png"], out, empty, predicates)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image"):
        predict_files([broken], out)


def test_predict_refuses_colliding_outputs_and_repeated_names_before_any_work(tmp_path, monkeypatch):
    from stages.predict import read_vocabulary

    monkeypatch.chdir(tmp_path)  # not a project folder

    for name in ("photo.png", "photo.jpg"):
        Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / name)
    with pytest.raises(ValueError, match=r"photo.png and .*photo.jpg would both write"):
        predict_files([tmp_path / "photo.png", tmp_path / "photo.jpg"], tmp_path / "out")
    a_file = tmp_path / "taken"
    a_file.write_text("")
    with pytest.raises(ValueError, match="--out .*taken: exists and is not a folder"):
        predict_files([tmp_path / "photo.png"], a_file)
    vocab = tmp_path / "objects.txt"
    vocab.write_text("cat\ndog\ncat\n")
    with pytest.raises(ValueError, match=r"\['cat'\] listed more than once"):
        read_vocabulary(vocab, [], "object")
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError, match="run `spade predict` in the project folder"):  # cwd: no project
        predict_files([tmp_path / "photo.png"], tmp_path / "out")
