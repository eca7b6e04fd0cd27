"""Batch scoring and validation on a real local[2] SparkSession (runtime/spark/score.py, validate.py,
udf.py, output.py, files.py; kindling score / evaluate), against the runtime's own references:
``Predictor`` as ``kindling run`` uses it, ``kindling run`` itself, and ``Model.evaluate``."""
import io
import re
import shutil
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

import kindling
from caffe_nets import FIXTURES
from kindling import cli
from kindling.runtime.predict import Predictor

pyspark = pytest.importorskip("pyspark")

from kindling.runtime.spark import binary_files, evaluate, predict, predict_udf, read_scores, write_scores  # noqa: E402
from kindling.runtime.spark import preflight, shipping  # noqa: E402
from kindling.runtime.spark.score import SCHEMA, memory_need  # noqa: E402

LENET = FIXTURES / "caffe" / "lenet_mnist"
CAT = FIXTURES / "images" / "cat.jpg"
PRE = {"scale": 1 / 255, "channel_order": "gray", "input_size": [28, 28]}
LABELS = [f"digit {i}" for i in range(10)]
DIGITS = 48
BOMB_PIXELS = 20_000 * 20_000


def _lenet(labels=LABELS):
    from kindling.converters import caffe
    return caffe.convert(LENET / "lenet.prototxt", LENET / "lenet_iter_10000.caffemodel", labels=labels,
                         preprocessing=PRE)


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    return str(kindling.save(_lenet(), tmp_path_factory.mktemp("model") / "lenet.kdl"))


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _bomb() -> bytes:
    """A 20,000 x 20,000 one-bit PNG of 48 KB: 400 megapixels declared in its header."""
    w = h = 20_000

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = zlib.compress(b"\0" * ((w // 8 + 1) * h), 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


def _bad_crc_png() -> bytes:
    png = bytearray(_png(Image.new("RGB", (30, 30), (200, 10, 10))))
    png[29] ^= 0xFF  # the IHDR chunk's CRC
    return bytes(png)


# file name -> the error kind it must get (None: it is scored)
BAD = {"empty.jpg": "empty file", "truncated.jpg": "truncated JPEG", "bad_crc.png": "corrupt PNG",
       "notes.txt": "not an image", "bomb.png": f"over {178_956_970} pixels"}
ODD = ["cmyk.jpg", "sixteen_bit.png", "grey.png", "alpha.png", "cat.jpg"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder (with a sub-folder) of real digits JPEGs, the cat photo, CMYK, 16-bit, grey and
    alpha images, and one file of every bad kind."""
    from sklearn.datasets import load_digits
    root = tmp_path_factory.mktemp("images")
    (root / "digits").mkdir()
    d = load_digits()
    for i, img in enumerate(d.images[:DIGITS]):
        Image.fromarray((img * 255 / 16).astype(np.uint8)).resize((28, 28), Image.BILINEAR).save(
            root / "digits" / f"{i:03d}.jpg", quality=95)
    shutil.copy(CAT, root / "cat.jpg")
    cat = CAT.read_bytes()
    Image.open(CAT).convert("CMYK").save(root / "cmyk.jpg")
    Image.fromarray((np.arange(900).reshape(30, 30) * 70).astype(np.uint16)).save(root / "sixteen_bit.png")
    Image.open(CAT).convert("L").resize((40, 30)).save(root / "grey.png")
    Image.open(CAT).convert("RGBA").resize((40, 30)).save(root / "alpha.png")
    (root / "empty.jpg").write_bytes(b"")
    (root / "truncated.jpg").write_bytes(cat[: len(cat) // 3])
    (root / "bad_crc.png").write_bytes(_bad_crc_png())
    (root / "notes.txt").write_text("not an image\n")
    (root / "bomb.png").write_bytes(_bomb())
    return root


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _by_name(rows) -> dict:
    return {_name(r["path"]): r for r in rows}


@pytest.fixture(scope="module")
def scored(spark, lenet, images):
    """The folder scored once with the defaults."""
    rows = predict(binary_files(spark, str(images)), lenet).collect()
    return _by_name(rows)


@pytest.fixture(scope="module")
def reference(lenet, images):
    """What ``kindling run`` computes for every readable file: Predictor.load, preprocess, forward
    in batches of 32, top 5."""
    p = Predictor.load(lenet, batch_size=32)
    files = sorted(images.rglob("*.jpg")) + sorted(images.glob("*.png"))
    files = [f for f in files if f.name not in BAD]
    out = p.forward([p.preprocess(files)])[0]
    return {f.name: c for f, c in zip(files, p.top_k(out, 5))}


def test_one_row_per_file_with_every_bad_kind_named(scored, images):
    files = [f for f in images.rglob("*") if f.is_file()]
    assert len(scored) == len(files) == DIGITS + len(ODD) + len(BAD)
    for name, kind in BAD.items():
        row = scored[name]
        assert row["error"].split(": ", 1)[0] == kind, row["error"]
        assert row["top_k_indices"] is None and row["top_k_labels"] is None and row["top_k_scores"] is None
    assert "truncated" in scored["truncated.jpg"]["error"]
    for name in ODD + [f"{i:03d}.jpg" for i in range(DIGITS)]:
        assert scored[name]["error"] is None and len(scored[name]["top_k_indices"]) == 5


def test_scores_equal_the_batched_predict_path_of_kindling_run(scored, reference, lenet):
    for name, c in reference.items():
        row = scored[name]
        assert row["top_k_indices"] == c.indices and row["top_k_labels"] == c.labels
        np.testing.assert_allclose(row["top_k_scores"], c.scores, rtol=1e-5, atol=1e-6)
    assert {r["model_version"] for r in scored.values()} == {shipping.file_version(lenet)}
    # the digits are real: LeNet, trained on MNIST, reads most of them right
    from sklearn.datasets import load_digits
    target = load_digits().target[:DIGITS]
    right = sum(scored[f"{i:03d}.jpg"]["top_k_indices"][0] == t for i, t in enumerate(target))
    assert right >= DIGITS // 2


def test_the_cat_as_kindling_run_prints_it(scored, lenet, capsys):
    assert cli.main(["run", lenet, "--input", str(CAT), "--top-k", "5"]) == 0
    printed = capsys.readouterr().out.strip().split(": ", 1)[1].split(", ")
    row = scored["cat.jpg"]
    assert [p.rsplit(" ", 1)[0] for p in printed] == row["top_k_labels"]
    np.testing.assert_allclose([float(p.rsplit(" ", 1)[1]) for p in printed], row["top_k_scores"], atol=6e-5)


@pytest.mark.parametrize("partitions, batch_size", [(1, 256), (200, 1), (7, 5)])
def test_rows_are_identical_whatever_the_partitioning_and_batch_size(spark, lenet, images, scored,
                                                                      partitions, batch_size):
    df = binary_files(spark, str(images)).repartition(partitions)
    rows = _by_name(predict(df, lenet, batch_size=batch_size).collect())
    assert rows.keys() == scored.keys()
    for name, row in rows.items():
        expected = scored[name]
        assert (row["top_k_indices"], row["top_k_labels"], row["error"]) == \
               (expected["top_k_indices"], expected["top_k_labels"], expected["error"]), name
        if row["top_k_scores"] is not None:  # BLAS picks its kernels by batch shape: float32 rounding apart
            np.testing.assert_allclose(row["top_k_scores"], expected["top_k_scores"], rtol=1e-5, atol=1e-7)


def test_the_model_loads_once_per_python_worker_per_version(spark, images, tmp_path):
    fresh = kindling.save(_lenet([f"class {i}" for i in range(10)]), tmp_path / "fresh.kdl")  # a new version
    version = shipping.file_version(fresh)
    sc = spark.sparkContext
    df = binary_files(spark, str(images)).repartition(16)
    scores = predict(df, str(fresh), batch_size=8)
    assert scores.rdd.getNumPartitions() == 16
    for _ in range(3):  # three jobs, three stages of 16 tasks that run the model
        assert scores.filter("error is null").count() == DIGITS + len(ODD)
    assert 1 <= shipping.load_count(sc, version) <= 2


def test_too_few_partitions_are_repartitioned_to_the_task_slots(spark, lenet, images):
    df = binary_files(spark, str(images)).coalesce(1)
    assert predict(df, lenet).rdd.getNumPartitions() == preflight.task_slots(spark.sparkContext) == 2


def test_fail_fast_fails_the_job_naming_the_file(spark, lenet, images):
    with pytest.raises(Exception, match=r"(truncated|empty|bad_crc|notes|bomb)\.\w+: .*fail_fast"):
        predict(binary_files(spark, str(images)), lenet, fail_fast=True).collect()


def test_a_dataframe_keeps_its_own_columns_and_refuses_a_non_binary_image_column(spark, lenet, images):
    df = binary_files(spark, str(images / "digits")).selectExpr("path", "content", "length(path) as key")
    out = predict(df, lenet, top_k=2)
    assert out.columns[:2] == ["path", "key"] and "content" not in out.columns
    assert all(len(r["top_k_scores"]) == 2 for r in out.collect())
    with pytest.raises(ValueError, match="'key' is int, not binary"):
        predict(df, lenet, image_col="key")


@pytest.mark.parametrize("fmt", ["parquet", "csv", "json"])
def test_outputs_read_back_with_the_schema(spark, lenet, images, scored, tmp_path, fmt):
    from pyspark.sql.types import StructType
    out = str(tmp_path / f"scores.{fmt}")
    write_scores(predict(binary_files(spark, str(images)), lenet), out, fmt)
    back = read_scores(spark, out, fmt)
    assert back.schema.simpleString() == StructType.fromDDL(SCHEMA).simpleString()
    rows = _by_name(back.collect())
    assert rows.keys() == scored.keys()
    for name, row in rows.items():
        assert row["top_k_labels"] == scored[name]["top_k_labels"] and row["error"] == scored[name]["error"]
        if row["top_k_scores"] is not None:
            np.testing.assert_allclose(row["top_k_scores"], scored[name]["top_k_scores"], rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="already exists"):
        write_scores(predict(binary_files(spark, str(images)), lenet), out, fmt)


def test_a_failed_job_writes_nothing_and_keeps_the_old_output(spark, lenet, images, tmp_path):
    out = tmp_path / "scores"
    out.mkdir()
    (out / "old").write_text("kept")
    with pytest.raises(Exception, match="fail_fast"):
        write_scores(predict(binary_files(spark, str(images)), lenet, fail_fast=True), str(out), overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["scores"] and (out / "old").read_text() == "kept"


def test_kindling_score_prints_the_summary(spark, lenet, images, tmp_path, capsys):
    out = tmp_path / "scores.json"
    assert cli.main(["score", "--model", lenet, "--images", str(images), "--output", str(out), "--format", "json",
                     "--top-k", "3", "--batch-size", "16", "--master", "local[2]"]) == 0
    summary = capsys.readouterr().out
    total = DIGITS + len(ODD) + len(BAD)
    assert f"{total} rows, {DIGITS + len(ODD)} images scored, {len(BAD)} errors" in summary
    for kind in BAD.values():
        assert f"{kind} 1" in summary
    assert read_scores(spark, str(out), "json").count() == total
    assert cli.main(["score", "--model", lenet, "--images", str(images), "--output", str(tmp_path / "ff"),
                     "--fail-fast"]) == 1
    err = capsys.readouterr().err
    assert re.match(r"kindling score: error: file:\S+\.(jpg|png|txt): .* \(fail_fast", err), err
    assert not (tmp_path / "ff").exists()
    assert spark.sparkContext._jsc is not None  # the command left the session it did not start running


def test_predict_udf_equals_predictor_on_float_tensors(spark, lenet):
    x = np.random.default_rng(0).random((20, 1, 28, 28), dtype=np.float32)
    expected = Predictor.load(lenet).predict(x)["prob"]
    df = spark.createDataFrame([(i, x[i].reshape(-1).tolist()) for i in range(len(x))], "id int, features array<float>")
    score = predict_udf(lenet, batch_size=6)
    rows = sorted(df.select("id", score("features").alias("p")).collect())
    np.testing.assert_allclose(np.array([r["p"] for r in rows]), expected, rtol=1e-5, atol=1e-7)
    with pytest.raises(Exception, match="has 3 values; the model takes 784"):
        spark.createDataFrame([([1.0, 2.0, 3.0],)], "f array<float>").select(score("f")).collect()


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, images):
    """120 digits in class folders, and one truncated JPEG among them."""
    from kindling.commands.demo import write_digits
    root = tmp_path_factory.mktemp("tree")
    write_digits(root)
    for folder in root.iterdir():
        for f in sorted(folder.iterdir())[12:]:
            f.unlink()
    shutil.copy(images / "truncated.jpg", root / "3" / "truncated.jpg")
    return root


def test_evaluate_equals_model_evaluate(spark, labelled, tmp_path, capsys):
    from kindling.runtime.data import ImageFolder, Pipeline
    from kindling.runtime.optim.validation import classification_metrics
    from kindling.runtime.spark import image_folder_dataframe
    classes = [str(i) for i in range(10)]  # the folder names
    lenet = str(kindling.save(_lenet(classes), tmp_path / "digits.kdl"))
    model = kindling.load(lenet)
    local = model.evaluate(ImageFolder(labelled, Pipeline.from_metadata(PRE), labels=classes),
                           classification_metrics(model), batch_size=32)
    distributed = evaluate(image_folder_dataframe(spark, str(labelled), classes).repartition(3), lenet)
    assert [str(m) for m, _ in distributed] == ["Top1Accuracy", "Top5Accuracy", "Loss"]
    for (m, a), (_, b) in zip(distributed, local):
        assert a.count == b.count == 120
        assert a.total == pytest.approx(b.total, rel=1e-6), str(m)
    assert distributed.skipped == 1
    assert cli.main(["evaluate", "--model", lenet, "--images", str(labelled)]) == 0
    printed = capsys.readouterr().out
    assert str(local).splitlines()[0] in printed and "1 unreadable image(s) left out" in printed


def test_the_memory_preflight_names_the_setting_to_raise(lenet):
    need = memory_need(Predictor.load(lenet), batch_size=64, batch_bytes=32 << 20)
    assert need["arrow batches"] == 64 << 20 and need["decoded batch"] == 64 * 4 * 28 * 28
    assert need["model"] == sum(a.nbytes for _, a, _ in kindling.load(lenet).named_parameters())
    hello = {"executor": "127.0.0.1", "threads": 1, "blas": "mkl", "memory": {"limit": 48 << 20, "available": None}}
    with pytest.raises(ValueError, match="does not fit; raise spark.executor.pyspark.memory"):
        preflight.check_memory([hello, hello], need)
    hello["memory"]["limit"] = 1 << 30
    assert "2 task(s)" in preflight.check_memory([hello, hello], need)[0]
