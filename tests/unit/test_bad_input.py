"""Bad input on the command line: one line naming what is wrong (file, row, column, value or
path, and the rule), exit status 2, no traceback, nothing trained lost."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from psfm.cli import main
from psfm.datasets.gen import GenSpec, generate


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    good = root / "good"
    generate(good, days=3, rows_per_day=2000, spec=GenSpec.small(), seed=4)
    for name, table in {
        "dup": pa.Table.from_arrays(
            [pa.array([0, 1] * 50), pa.array(range(100)), pa.array(range(100))],
            names=["label", "C1", "C1"],
        ),
        "text_keys": pa.table(
            {
                "label": pa.array([0, 1] * 50),
                "keys": pa.array([["a", "b"]] * 100, pa.list_(pa.string())),
            }
        ),
    }.items():
        for d in (1, 2):
            (root / name / f"day={d}").mkdir(parents=True)
            pq.write_table(table, root / name / f"day={d}" / "part-0.parquet")
    first = pq.read_table(next((good / "day=1").glob("*.parquet")))
    n = first.num_rows

    def with_col(name: str, values: pa.Array) -> pa.Table:
        return first.set_column(first.schema.get_field_index(name), name, values)

    for name, table in {
        "zero_rows": first.slice(0, 0),
        "no_label": first.drop(["label"]),
        "label_2": with_col("label", pa.array([2] * n)),
        "label_nan": with_col("label", pa.array([np.nan] + [0.0] * (n - 1))),
        "label_half": with_col("label", pa.array([0.5] * n)),
        "label_text": with_col("label", pa.array(["0"] * n)),
        "label_null": with_col("label", pa.array([None] + [0] * (n - 1), pa.int64())),
        "numeric_inf": with_col("I1", pa.array([np.inf] * n)),
        "numeric_text": with_col("I1", pa.array(["x"] * n)),
        "list_column": first.append_column("ids", pa.array([[1.0]] * n)),
        "only_label": first.select(["label"]),
    }.items():
        for d in (1, 2):
            (root / name / f"day={d}").mkdir(parents=True)
            pq.write_table(table, root / name / f"day={d}" / "part-0.parquet")
    for d in (1, 2):
        (root / "not_parquet" / f"day={d}").mkdir(parents=True)
        (root / "not_parquet" / f"day={d}" / "part-0.parquet").write_text("not parquet")
    (root / "empty_day" / "day=1").mkdir(parents=True)
    (root / "empty_day" / "day=2").mkdir(parents=True)
    pq.write_table(first, root / "empty_day" / "day=1" / "part-0.parquet")
    for name, text in {
        "line5.toml": '[model]\nkind = "fm"\nranks = [8,\n\n[x',
        "unknown_key.toml": "[model]\nbogus = 1\n",
        "wrong_type.toml": '[data]\nbatch_size = "big"\n',
        "section_value.toml": "model = 3\n",
        "libfm_value.txt": "1 3:1 4:abc\n",
        "libfm_label.txt": "7 3:1 4:1\n",
        "avazu.csv": "id,click\n1,1\n",
    }.items():
        (root / name).write_text(text)
    (root / "binary.toml").write_bytes(b"\xff\xfe\x00bad")
    (root / "a_file").write_text("not a folder")
    (root / "empty").mkdir()
    (root / "bad.toml").write_text("a = [\n")
    assert main(["train", "--in-process", "--data", str(good), "--run-dir", str(root / "run")]) == 0
    assert (
        main(["export", "--run-dir", str(root / "run"), "--out", str(root / "model.parquet")]) == 0
    )
    RUN_FILES[root] = _files(root / "run")
    return root


def _fails(capsys, argv, *words):
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if not x.startswith("20")]  # log lines have a date
    assert len(lines) == 1 and lines[0].startswith("psfm: error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert "Traceback" not in err


_TRAIN = ["train", "--in-process", "--data", "{root}/good"]

CASES = {
    "duplicate column": (
        ["train", "--in-process", "--data", "{root}/dup"],
        ["dup/day=1/part-0.parquet", "'C1' appear more than once"],
    ),
    "text keys in the hashed layout": (
        ["train", "--in-process", "--data", "{root}/text_keys"],
        ["column 'keys' has type list<element: string>", "list<uint64>"],
    ),
    "run directory that is a file": (
        ["train", "--in-process", "--data", "{root}/good", "--run-dir", "{root}/a_file"],
        ["a_file", "non-directory entry exists"],
    ),
    "export into a missing folder": (
        ["export", "--run-dir", "{root}/run", "--out", "{root}/no/such/m.parquet"],
        ["no/such/m.parquet", "No such file or directory"],
    ),
    "a missing model": (
        [
            "predict",
            "--model",
            "{root}/missing.parquet",
            "--data",
            "{root}/good",
            "--out",
            "{root}/p.parquet",
        ],  # fmt: skip
        ["missing.parquet", "No such file or directory"],
    ),
    "unknown model kind": (
        ["train", "--in-process", "--data", "{root}/good", "--set", 'model.kind="ffm"'],
        ["'kind'", "'lr', 'fm', 'difacto', 'rafm'", "'ffm'"],
    ),
    "negative batch size": (
        ["train", "--in-process", "--data", "{root}/good", "--set", "data.batch_size=-1"],
        ["'batch_size'", "an int in [0, 1048576]", "-1"],
    ),
    "an absurd batch size": (
        [*_TRAIN, "--set", "data.batch_size=10000000000000"],
        ["'batch_size'", "an int in [0, 1048576]", "10000000000000"],
    ),
    "negative learning rate": (
        ["train", "--in-process", "--data", "{root}/good", "--set", "ftrl.linear.alpha=-1"],
        ["'alpha'", ">= 0", "-1.0"],
    ),
    "unknown config section": (
        ["train", "--in-process", "--data", "{root}/good", "--set", "foo.bar=1"],
        ["Unknown parameter 'foo'", "data, model, ftrl"],
    ),
    "train days not in the data": (
        ["train", "--in-process", "--data", "{root}/good", "--set", 'data.train_days="9..10"'],
        ["'9..10'", "day '9'", "days: 1, 2, 3"],
    ),
    "a data root that does not exist": (
        ["train", "--in-process", "--data", "{root}/nowhere"],
        ["nowhere", "is not a directory"],
    ),
    "a data root without day partitions": (
        ["train", "--in-process", "--data", "{root}/empty"],
        ["empty", "no 'day=...' partitions"],
    ),
    "resume without a run directory": (
        ["train", "--in-process", "--resume"],
        ["--resume needs --run-dir"],
    ),
    "a missing config file": (
        ["train", "--in-process", "--data", "{root}/good", "--config", "{root}/missing.toml"],
        ["missing.toml", "No such file"],
    ),
    "a config file that is not TOML": (
        ["train", "--in-process", "--data", "{root}/good", "--config", "{root}/bad.toml"],
        ["bad.toml", "not valid TOML"],
    ),
    "export without a checkpoint": (
        ["export", "--run-dir", "{root}/empty", "--out", "{root}/x.parquet"],
        ["'{root}/empty'", "no complete checkpoint"],
    ),
    "zero days to generate": (
        ["gen", "--out", "{root}/g", "--days", "0"],
        ["'days'", "an int >= 1", "0"],
    ),
    "a rank of zero": (
        ["train", "--in-process", "--data", "{root}/good", "--set", "model.ranks=[0]"],
        ["'ranks'", "positive ints", "[0]"],
    ),
    "zero rows per unit": (
        ["train", "--in-process", "--data", "{root}/good", "--set", "data.rows_per_unit=0"],
        ["'rows_per_unit'", ">= 1", "0"],
    ),
    "early stopping without validation days": (
        ["train", "--in-process", "--data", "{root}/good", "--early-stop", "logloss"],
        ["'early_stop'", "data.valid_days is empty", "'logloss'"],
    ),
    "a negative number of passes": (
        ["train", "--in-process", "--data", "{root}/good", "--passes", "-1"],
        ["passes"],
    ),
    "test days that are train days": (
        [
            "train",
            "--in-process",
            "--data",
            "{root}/good",
            "--set",
            'data.train_days="1..2"',
            "--set",
            'data.test_days="2"',
        ],  # fmt: skip
        ["day '2'", "also a train day"],
    ),
    "evaluate a run directory without checkpoints": (
        ["evaluate", "--run-dir", "{root}/a_folder_without_a_run"],
        ["a_folder_without_a_run"],
    ),
    "a NaN learning rate": (
        [*_TRAIN, "--set", "ftrl.linear.alpha=nan"],
        ["'alpha'", ">= 0", "nan"],
    ),
    "a zero beta": (
        [*_TRAIN, "--set", "ftrl.factor.beta=0"],
        ["'beta'", "> 0", "0.0"],
    ),
    "a negative l1": (
        [*_TRAIN, "--set", "ftrl.linear.l1=-0.1"],
        ["'l1'", "a float >= 0", "-0.1"],
    ),
    "an infinite l2": (
        [*_TRAIN, "--set", "ftrl.factor.l2=inf"],
        ["'l2'", ">= 0", "inf"],
    ),
    "a text l1": (
        [*_TRAIN, "--set", 'ftrl.linear.l1="a"'],
        ["'ftrl.linear.l1'", "type float", "'a'"],
    ),
    "an unknown FTRL key": (
        [*_TRAIN, "--set", "ftrl.linear.gamma=1"],
        ["'ftrl.linear.gamma'", "alpha, beta, l1, l2"],
    ),
    "an unknown accumulate rule": (
        [*_TRAIN, "--set", 'ftrl.accumulate="mean"'],
        ["'accumulate'", "'square_of_sum'", "'mean'"],
    ),
    "ranks for lr": (
        [*_TRAIN, "--set", 'model.kind="lr"', "--set", "model.ranks=[4]"],
        ["'ranks'", "0..0 ranks for kind 'lr'", "[4]"],
    ),
    "decreasing ranks": (
        [*_TRAIN, "--set", "model.ranks=[4,2]"],
        ["'ranks'", "strictly increasing", "[4, 2]"],
    ),
    "a repeated rank": (
        [*_TRAIN, "--set", "model.ranks=[2,2]"],
        ["'ranks'", "strictly increasing", "[2, 2]"],
    ),
    "a fractional rank": (
        [*_TRAIN, "--set", "model.ranks=[1.5]"],
        ["'model.ranks[0]'", "type int", "1.5"],
    ),
    "ranks not a list": (
        [*_TRAIN, "--set", 'model.ranks="8"'],
        ["'model.ranks'", "a list", "'8'"],
    ),
    "two ranks for fm": (
        [*_TRAIN, "--model", "fm", "--ranks", "2,4"],
        ["'ranks'", "1..1 ranks for kind 'fm'", "[2, 4]"],
    ),
    "a negative init_std": (
        [*_TRAIN, "--set", "model.init_std=-1"],
        ["'init_std'", ">= 0", "-1.0"],
    ),
    "squared loss": (
        [*_TRAIN, "--set", 'model.loss="squared"'],
        ["'loss'", "not supported yet", "'squared'"],
    ),
    "too few distillation weights": (
        [*_TRAIN, "--set", "model.dependent_lr_coef=[1.0]"],
        ["'dependent_lr_coef'", "3 non-negative floats", "[1.0]"],
    ),
    "a fractional batch size": (
        [*_TRAIN, "--set", "data.batch_size=1.5"],
        ["'data.batch_size'", "type int", "1.5"],
    ),
    "a boolean batch size": (
        [*_TRAIN, "--set", "data.batch_size=true"],
        ["'data.batch_size'", "type int", "True"],
    ),
    "zero passes": (
        [*_TRAIN, "--set", "train.passes=0"],
        ["'passes'", "an int >= 1", "Got 0"],
    ),
    "a negative patience": (
        [*_TRAIN, "--set", "train.patience=-1"],
        ["'patience'", "an int >= 1", "-1"],
    ),
    "an unknown early-stop metric": (
        [*_TRAIN, "--set", 'train.early_stop="f1"'],
        ["'early_stop'", "'logloss', 'auc'", "'f1'"],
    ),
    "decreasing level thresholds": (
        [*_TRAIN, "--set", "levels.level_min_count=[10,5,1,0]"],
        ["'level_min_count'", "non-decreasing", "[10.0, 5.0, 1.0, 0.0]"],
    ),
    "a threshold count unlike the levels": (
        [*_TRAIN, "--set", "levels.level_min_count=[1,2]"],
        ["'level_min_count'", "one threshold per level", "[1.0, 2.0]"],
    ),
    "a negative ttl": (
        [*_TRAIN, "--set", "levels.ttl_days=-1"],
        ["'ttl_days'", "an int >= 0", "-1"],
    ),
    "a zero daily decay": (
        [*_TRAIN, "--set", "levels.daily_decay=0"],
        ["'daily_decay'", "(0, 1]", "0.0"],
    ),
    "a NaN count per dim": (
        [*_TRAIN, "--set", "levels.count_per_dim=nan"],
        ["'count_per_dim'", "> 0", "nan"],
    ),
    "an unknown level policy": (
        [*_TRAIN, "--set", 'levels.policy="dynamic"'],
        ["'policy'", "'static', 'online'", "'dynamic'"],
    ),
    "zero shards": (
        [*_TRAIN, "--shards", "0"],
        ["'shards'", "an int >= 1", "Got 0"],
    ),
    "100,000 shards": (
        [*_TRAIN, "--shards", "100000"],
        ["'shards'", "an int in 1..1024", "100000"],
    ),
    "an unknown ps mode": (
        [*_TRAIN, "--set", 'ps.mode="semi"'],
        ["'mode'", "'sync', 'async'", "'semi'"],
    ),
    "an unknown transport": (
        [*_TRAIN, "--set", 'ps.transport="tcp"'],
        ["'transport'", "'auto', 'ray'", "'tcp'"],
    ),
    "an unknown pipeline": (
        [*_TRAIN, "--set", 'ps.pipeline="x"'],
        ["'pipeline'", "'overlap'", "'x'"],
    ),
    "an unknown device": (
        [*_TRAIN, "--set", 'train.device="tpu"'],
        ["'device'", "'cpu', 'cuda', 'auto'", "'tpu'"],
    ),
    "zero workers": (
        [*_TRAIN, "--workers", "0"],
        ["'workers'", "an int >= 1", "Got 0"],
    ),
    "a negative shard CPU count": (
        [*_TRAIN, "--set", "ray.shard_cpus=-1"],
        ["'shard_cpus'", ">= 0", "-1.0"],
    ),
    "an unknown layout": (
        [*_TRAIN, "--set", 'data.layout="rows"'],
        ["'layout'", "'columns', 'hashed'", "'rows'"],
    ),
    "an unknown numeric transform": (
        [*_TRAIN, "--set", 'data.numeric_transform="sqrt"'],
        ["'numeric_transform'", "'log_bucket', 'raw'", "'sqrt'"],
    ),
    "an unknown bad-rows policy": (
        [*_TRAIN, "--set", 'data.bad_rows="ignore"'],
        ["'bad_rows'", "'fail', 'skip'", "'ignore'"],
    ),
    "a column both categorical and numeric": (
        [*_TRAIN, "--set", 'data.categorical=["C1"]', "--set", 'data.numeric=["C1"]'],
        ["'categorical'", "disjoint from 'numeric'", "['C1']"],
    ),
    "a named categorical column that is missing": (
        [*_TRAIN, "--set", 'data.categorical=["nope"]'],
        ["part-00000.parquet", "column 'nope' is missing"],
    ),
    "a label column that is missing": (
        [*_TRAIN, "--set", 'data.label="clicked"'],
        ["part-00000.parquet", "column 'clicked' is missing"],
    ),
    "a numeric column holding text": (
        [
            *(["train", "--in-process", "--data", "{root}/numeric_text"]),
            "--set",
            'data.numeric=["I1"]',
        ],
        [
            "numeric_text/day=1/part-0.parquet",
            "column 'I1' has type string",
            "numeric column must be int or float",
        ],
    ),
    "--set without '='": (
        [*_TRAIN, "--set", "model.kind"],
        ["section.key=value", "'model.kind'"],
    ),
    "--set without a key": (
        [*_TRAIN, "--set", "=3"],
        ["section.key=value", "'=3'"],
    ),
    "--set into a value": (
        [*_TRAIN, "--set", "model.kind.x=1"],
        ["'model.kind'", "type str", "{{'x': 1}}"],
    ),
    "--set of a section": (
        [*_TRAIN, "--set", "model=3"],
        ["'model' section must be a table", "Got 3"],
    ),
    "--set of an unknown key": (
        [*_TRAIN, "--set", "model.bogus=1"],
        ["Unknown parameter 'model.bogus'", "kind, ranks"],
    ),
    "a TOML syntax error": (
        [*_TRAIN, "--config", "{root}/line5.toml"],
        ["line5.toml", "not valid TOML", "line 5"],
    ),
    "an unknown key in a config file": (
        [*_TRAIN, "--config", "{root}/unknown_key.toml"],
        ["Unknown parameter 'model.bogus'"],
    ),
    "a wrong type in a config file": (
        [*_TRAIN, "--config", "{root}/wrong_type.toml"],
        ["'data.batch_size'", "type int", "'big'"],
    ),
    "a section given a value in a config file": (
        [*_TRAIN, "--config", "{root}/section_value.toml"],
        ["'model' section must be a table", "Got 3"],
    ),
    "a config file that is not text": (
        [*_TRAIN, "--config", "{root}/binary.toml"],
        ["binary.toml", "not valid TOML", "can't decode byte 0xff"],
    ),
    "a config path that is a folder": (
        [*_TRAIN, "--config", "{root}"],
        ["Cannot read config file", "Is a directory"],
    ),
    "a backwards day range": (
        [*_TRAIN, "--train-days", "3..1"],
        ["'3..1' is empty", "'3' comes after '1'"],
    ),
    "day names on numbered days": (
        [*_TRAIN, "--train-days", "a..b"],
        ["'a..b'", "day 'a'", "days: 1, 2, 3"],
    ),
    "a blank day spec": (
        [*_TRAIN, "--train-days", " "],
        ["train_days SPEC ' '", "empty item"],
    ),
    "an empty item in a day spec": (
        [*_TRAIN, "--train-days", "1,,2"],
        ["train_days SPEC '1,,2'", "empty item"],
    ),
    "a test day not in the data": (
        [*_TRAIN, "--test-days", "7"],
        ["test_days", "day '7'", "days: 1, 2, 3"],
    ),
    "an empty day folder": (
        ["train", "--in-process", "--data", "{root}/empty_day"],
        ["Day '2'", "empty_day", "no data files in 'day=2/'"],
    ),
    "a day of zero rows": (
        ["train", "--in-process", "--data", "{root}/zero_rows"],
        ["Day '1'", "zero_rows", "has no rows"],
    ),
    "a file that is not Parquet": (
        ["train", "--in-process", "--data", "{root}/not_parquet"],
        ["not_parquet/day=1/part-0.parquet", "not a readable Parquet file"],
    ),
    "a file without the label column": (
        ["train", "--in-process", "--data", "{root}/no_label"],
        ["no_label/day=1/part-0.parquet", "column 'label' is missing"],
    ),
    "a label of 2": (
        ["train", "--in-process", "--data", "{root}/label_2"],
        [
            "label_2/day=1/part-0.parquet",
            "row 0",
            "column 'label'",
            "value 2.0",
            "labels must be 0 or 1",
        ],
    ),
    "a NaN label": (
        ["train", "--in-process", "--data", "{root}/label_nan"],
        [
            "label_nan/day=1/part-0.parquet",
            "row 0",
            "column 'label'",
            "value nan",
            "labels must be 0 or 1",
        ],
    ),
    "a label of 0.5": (
        ["train", "--in-process", "--data", "{root}/label_half"],
        ["label_half/day=1/part-0.parquet", "column 'label'", "value 0.5", "labels must be 0 or 1"],
    ),
    "a text label": (
        ["train", "--in-process", "--data", "{root}/label_text"],
        [
            "label_text/day=1/part-0.parquet",
            "column 'label' has type string",
            "label must be numeric",
        ],
    ),
    "a null label": (
        ["train", "--in-process", "--data", "{root}/label_null"],
        ["label_null/day=1/part-0.parquet", "row 0", "column 'label'", "labels must be 0 or 1"],
    ),
    "an infinite numeric value": (
        ["train", "--in-process", "--data", "{root}/numeric_inf"],
        ["numeric_inf/day=1/part-0.parquet", "column 'I1'", "value inf", "finite or missing"],
    ),
    "a list column among the features": (
        ["train", "--in-process", "--data", "{root}/list_column"],
        [
            "list_column/day=1/part-0.parquet",
            "column 'ids' has type list<element: double>",
            "no feature type",
            "data.ignore",
        ],
    ),
    "a file of only labels": (
        ["train", "--in-process", "--data", "{root}/only_label"],
        ["only_label/day=1/part-0.parquet", "no feature columns"],
    ),
    "a new run in a run directory": (
        [*_TRAIN, "--run-dir", "{root}/run"],
        ["'{root}/run' already holds a run", "--resume", "--overwrite"],
    ),
    "resume with a config file": (
        [
            "train",
            "--in-process",
            "--run-dir",
            "{root}/run",
            "--resume",
            "--config",
            "{root}/unknown_key.toml",
        ],
        ["--resume continues the run's stored config", "not --config"],
    ),
    "resume with a bad override": (
        [
            "train",
            "--in-process",
            "--run-dir",
            "{root}/run",
            "--resume",
            "--set",
            'model.kind="zz"',
        ],
        ["'kind'", "'zz'"],
    ),
    "a warm start from nowhere": (
        [*_TRAIN, "--init-from", "{root}/nope.parquet"],
        ["train.init_from", "nope.parquet", "no such run directory or model file"],
    ),
    "a warm start from another model kind": (
        [*_TRAIN, "--model", "fm", "--init-from", "{root}/run"],
        ["train.init_from", "model.kind = 'rafm' but this run 'fm'"],
    ),
    "predict with a data file as the model": (
        [
            "predict",
            "--model",
            "{root}/good/day=1/part-00000.parquet",
            "--data",
            "{root}/good",
            "--out",
            "{root}/p.parquet",
        ],
        ["part-00000.parquet", "is not a psfm model"],
    ),
    "predict with a model that is not Parquet": (
        [
            "predict",
            "--model",
            "{root}/line5.toml",
            "--data",
            "{root}/good",
            "--out",
            "{root}/p.parquet",
        ],
        ["line5.toml", "not a readable Parquet file"],
    ),
    "predict on days not in the data": (
        [
            "predict",
            "--model",
            "{root}/model.parquet",
            "--data",
            "{root}/good",
            "--days",
            "9",
            "--out",
            "{root}/p.parquet",
        ],
        ["day '9'", "days: 1, 2, 3"],
    ),
    "predict keeping a missing column": (
        [
            "predict",
            "--model",
            "{root}/model.parquet",
            "--data",
            "{root}/good",
            "--keep",
            "nope",
            "--out",
            "{root}/p.parquet",
        ],
        ["part-00000.parquet", "no column 'nope' to keep"],
    ),
    "predict keeping an output column": (
        [
            "predict",
            "--model",
            "{root}/model.parquet",
            "--data",
            "{root}/good",
            "--keep",
            "label",
            "--out",
            "{root}/p.parquet",
        ],
        ["--keep label", "already has a column of that name"],
    ),
    "evaluate days not in the data": (
        ["evaluate", "--run-dir", "{root}/run", "--days", "5..9"],
        ["'5..9'", "day '5'"],
    ),
    "evaluate a log of another schema": (
        ["evaluate", "--run-dir", "{root}/run", "--data", "{root}/list_column"],
        ["list_column/day=2/part-0.parquet", "column 'ids'", "no feature type"],
    ),
    "evaluate a missing data root": (
        ["evaluate", "--run-dir", "{root}/run", "--data", "{root}/nowhere"],
        ["nowhere", "is not a directory"],
    ),
    "export onto a folder": (
        ["export", "--run-dir", "{root}/run", "--out", "{root}"],
        ["Is a directory"],
    ),
    "a report of no run": (
        ["report", "{root}/nope"],
        ["nope", "no readable report.json"],
    ),
    "negative days to generate": (
        ["gen", "--out", "{root}/g", "--days", "-3"],
        ["'days'", "an int >= 1", "-3"],
    ),
    "zero rows to generate": (
        ["gen", "--out", "{root}/g", "--rows-per-day", "0"],
        ["'rows_per_day'", "an int >= 1", "Got 0"],
    ),
    "a libFM value that is not a number": (
        ["convert", "libfm", "{root}/libfm_value.txt", "--out", "{root}/c1"],
        ["libfm_value.txt", "line 1", "'4:abc'", "finite (float32) number"],
    ),
    "a libFM label of 7": (
        ["convert", "libfm", "{root}/libfm_label.txt", "--out", "{root}/c2"],
        ["libfm_label.txt", "line 1", "column 'label'", "'7'", "-1, 0 or 1"],
    ),
    "an Avazu file without hour": (
        ["convert", "avazu", "{root}/avazu.csv", "--out", "{root}/c3"],
        ["avazu.csv", "column 'hour'", "header: id,click"],
    ),
    "a missing text log": (
        ["convert", "libfm", "{root}/nope.txt", "--out", "{root}/c4"],
        ["nope.txt", "cannot be opened"],
    ),
    "stats of a missing root": (
        ["stats", "--data", "{root}/nowhere"],
        ["nowhere", "is not a directory"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_exit_2(logs, capsys, case):
    argv, words = CASES[case]
    (logs / "a_folder_without_a_run").mkdir(exist_ok=True)
    _fails(capsys, [a.format(root=logs) for a in argv], *(w.format(root=logs) for w in words))
    # what was trained is still there, every file of the run as it was
    report = json.loads((logs / "run" / "report.json").read_text())
    assert report["test"]["rows"] == 2000
    assert _files(logs / "run") == RUN_FILES[logs]


RUN_FILES: dict = {}


def _files(run) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in run.rglob("*")}
