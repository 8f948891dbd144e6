"""``psfm predict``: predictions that join back to their input rows (``--keep``), the fraction
of each row's keys the model knows (``coverage``), and refusal of data whose layout or feature
schema is not the model's; ``psfm --version``."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import psfm
from psfm.cli import main
from psfm.config import load_config
from psfm.data.batch import decode_rows, resolve_schema
from psfm.datasets.gen import GenSpec, generate
from psfm.errors import DataError
from psfm.export import Predictor, export_model
from psfm.trainer import train_local


def _write(path, table):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=1000)


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    """Generated days 1..3 with an ``id`` column, and the FM trained on days 1..2, exported."""
    root = tmp_path_factory.mktemp("predict")
    raw = root / "raw"
    generate(raw, days=3, rows_per_day=4000, spec=GenSpec.small(), seed=3, row_group_rows=1000)
    data = root / "data"
    for f in sorted(raw.glob("day=*/*.parquet")):
        t = pq.read_table(f)
        day = int(f.parent.name.split("=")[1])
        ids = pa.array(np.arange(t.num_rows, dtype=np.int64) + day * 1_000_000)
        _write(data / f.parent.name / f.name, t.append_column("id", ids))
    cfg = load_config(
        None,
        [
            f"data.root={json.dumps(str(data))}",
            f"train.run_dir={json.dumps(str(root / 'run'))}",
            'model.kind="fm"',
            "model.ranks=[4]",
            'data.ignore=["p_true", "id"]',  # an id is no feature
            'data.train_days="1..2"',
            'data.test_days="3"',
        ],
    )
    train_local(cfg)
    model = root / "fm.parquet"
    export_model(str(root / "run"), str(model))
    return root, data, model


def _predict(model, data, out, *extra):
    assert (
        main(["predict", "--model", str(model), "--data", str(data), "--out", str(out), *extra])
        == 0
    )
    return pq.read_table(out)


def test_keep_columns_join_back_to_the_input_rows(logs, tmp_path):
    _, data, model = logs
    out = _predict(model, data, tmp_path / "s.parquet", "--days", "2..3", "--keep", "id", "C3")
    assert out.column_names[:2] == ["id", "C3"]
    assert out.column_names[2:] == ["day", "file", "row", "prediction", "label", "coverage"]
    assert out.num_rows == 8000
    inputs = pa.concat_tables(pq.read_table(f) for f in sorted(data.glob("day=[23]/*.parquet")))
    joined = out.join(inputs.select(["id", "C3", "label"]), "id", right_suffix="_in")
    assert joined.num_rows == out.num_rows  # every id once, found in the input
    assert pc.all(pc.equal(joined["C3"], joined["C3_in"])).as_py()
    assert np.array_equal(
        joined["label"].to_numpy(), joined["label_in"].to_numpy().astype(np.float32)
    )
    # each output row is the input row it names (file, row)
    for f in {str(x) for x in out["file"].to_pylist()}:
        mine = out.filter(pc.equal(out["file"], f))
        ids = pq.read_table(f, columns=["id"])["id"].to_numpy()
        assert np.array_equal(mine["id"].to_numpy(), ids[mine["row"].to_numpy()])


def _reference_coverage(predictor, table, file):
    """Per row: known feature keys / feature keys, from the key matrix (np.isin)."""
    schema = resolve_schema(predictor.data, table.schema, file)
    rows = decode_rows(table, schema, "logistic", "fail", file)
    keys, mask = rows.keys[:, 1:], rows.mask[:, 1:]  # column 0 is the bias
    known = np.isin(keys, predictor.model.keys) & mask
    return known.sum(1) / mask.sum(1)


def test_coverage_is_the_fraction_of_known_keys(logs, tmp_path):
    root, data, model = logs
    pred = Predictor(str(model))
    day1 = sorted(data.glob("day=1/*.parquet"))[0]
    t = pq.read_table(day1)
    # the same rows, their second half with a C1 value no training row had
    n = t.num_rows
    unseen = pa.array(10**15 + np.arange(n - n // 2), pa.int64())
    c1 = pa.concat_arrays([t["C1"].combine_chunks().slice(0, n // 2), unseen])
    changed = t.set_column(t.column_names.index("C1"), "C1", c1)
    _write(root / "mixed" / "day=1" / "part-00000.parquet", changed)
    seen = _predict(model, data, tmp_path / "seen.parquet", "--days", "1")
    mixed = _predict(model, root / "mixed", tmp_path / "mixed.parquet")
    cov_seen = seen["coverage"].to_numpy()
    cov_mixed = mixed["coverage"].to_numpy()
    np.testing.assert_allclose(cov_seen, _reference_coverage(pred, t, str(day1)))
    np.testing.assert_allclose(cov_mixed, _reference_coverage(pred, changed, "mixed"))
    # rows seen in training: the model knows their keys (the export keeps every key with a
    # non-zero parameter)
    assert np.mean(cov_seen == 1.0) > 0.95
    assert np.array_equal(cov_mixed[: n // 2], cov_seen[: n // 2])
    assert np.all(cov_mixed[n // 2 :] < 1.0)
    assert np.all(cov_mixed[n // 2 :] <= cov_seen[n // 2 :])
    # and the scores of the unchanged rows are the same
    np.testing.assert_array_equal(
        mixed["prediction"].to_numpy()[: n // 2], seen["prediction"].to_numpy()[: n // 2]
    )


def test_data_of_another_layout_or_schema_is_refused(logs, tmp_path, capsys):
    root, data, model = logs
    # the hashed layout (psfm convert libfm): keys lists, no feature columns
    keys = pa.array([[1, 2, 3], [4, 5]], type=pa.list_(pa.uint64()))
    _write(
        tmp_path / "hashed" / "day=1" / "part-0.parquet",
        pa.table({"label": pa.array([0, 1], pa.int8()), "keys": keys}),
    )
    with pytest.raises(DataError, match=r"lacks the feature column.*columns layout.*hashed layout"):
        list(Predictor(str(model)).iter_batches(str(tmp_path / "hashed")))
    assert main(["predict", "--model", str(model), "--data", str(tmp_path / "hashed"),
                 "--out", str(tmp_path / "x.parquet")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "psfm: error: File '" in err
    # a column whose values would hash differently (strings where the model saw ints)
    t = pq.read_table(sorted(data.glob("day=3/*.parquet"))[0])
    strings = t.set_column(t.column_names.index("C2"), "C2", pc.cast(t["C2"], pa.string()))
    _write(tmp_path / "strings" / "day=1" / "part-0.parquet", strings)
    with pytest.raises(DataError, match=r"column 'C2' has type string \(string values\) but the"):
        list(Predictor(str(model)).iter_batches(str(tmp_path / "strings")))
    # a missing feature column
    _write(tmp_path / "fewer" / "day=1" / "part-0.parquet", t.drop_columns(["I2"]))
    with pytest.raises(DataError, match=r"lacks the feature column\(s\) I2 of the model"):
        list(Predictor(str(model)).iter_batches(str(tmp_path / "fewer")))
    # psfm evaluate of a run checks the same, against the schema its checkpoint records
    for bad, said in (("strings", "column 'C2' holds string values, int in"), ("fewer", "'I2'")):
        run = ["evaluate", "--run-dir", str(root / "run"), "--data", str(tmp_path / bad)]
        assert main(run) == 2
        err = capsys.readouterr().err
        assert "does not have the feature schema" in err and said in err, err
    assert main(["evaluate", "--run-dir", str(root / "run"), "--days", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 4000
    assert main(["evaluate", "--run-dir", str(root / "run"), "--days", "3"]) == 0
    said = capsys.readouterr().out.splitlines()
    assert said[0] == "checkpoint day=2" and said[1].startswith("test       days 3: 4,000 rows")
    assert said[-1].startswith("test AUC   0.")
    # a --keep column the data does not have, or one the output already has
    with pytest.raises(DataError, match=r"has no column 'order_id' to keep"):
        list(Predictor(str(model)).iter_batches(str(data), ["3"], keep=["order_id"]))
    assert main(["predict", "--model", str(model), "--data", str(data), "--keep", "label",
                 "--out", str(tmp_path / "y.parquet")]) == 2  # fmt: skip
    assert "--keep label: the output already has" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"psfm {psfm.__version__}\n" == "psfm 0.1.0\n"


def test_an_unlabelled_log_is_scored_with_null_labels(logs, tmp_path, capsys):
    """Serving data has no label column: the same rows score the same, labels come out null,
    and the metrics are over the labelled rows only."""
    _, data, model = logs
    unlabelled = tmp_path / "serving"
    for f in sorted(data.glob("day=3/*.parquet")):
        t = pq.read_table(f)
        _write(unlabelled / "day=4" / f.name, t.drop_columns(["label"]))
        _write(unlabelled / "day=3" / f.name, t)
    out = _predict(model, unlabelled, tmp_path / "u.parquet", "--days", "4", "--keep", "id")
    assert "no labels: predictions only" in capsys.readouterr().out
    assert out.num_rows == 4000 and out["label"].null_count == 4000
    ref = _predict(model, data, tmp_path / "r.parquet", "--days", "3", "--keep", "id")
    assert np.array_equal(out["prediction"].to_numpy(), ref["prediction"].to_numpy())
    assert np.array_equal(out["id"].to_numpy(), ref["id"].to_numpy())
    # a labelled and an unlabelled day together: AUC over the labelled rows
    both = _predict(model, unlabelled, tmp_path / "b.parquet")
    said = capsys.readouterr().out
    assert "on the 4,000 labelled rows" in said and both["label"].null_count == 4000
    # training still needs the label: the rule and the file are named
    root = json.dumps(str(unlabelled))
    cfg = load_config(None, [f"data.root={root}", 'data.train_days="4"', 'data.test_days="3"'])
    with pytest.raises(DataError, match="column 'label' is missing"):
        train_local(cfg)
