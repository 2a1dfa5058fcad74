"""The one error policy (issue 13.9): a UserError (an option, a file, the data,
a limit the user set) is one line on stderr and exit 2; anything else is a
fault and keeps its traceback."""

import sys
from pathlib import Path

import pytest

from cgc_ray.entry import main
from cgc_ray.errors import DataError, MissingData, UserError

ROOT = Path(__file__).resolve().parents[1]


def test_a_user_error_is_one_line_and_exit_2(capsys):
    def run(_):
        raise DataError("val_xml/a.xml <object> n01: box field ymin is '', not a number")
    assert main(lambda argv: argv, run, []) == 2
    assert capsys.readouterr().err == "error: val_xml/a.xml <object> n01: box field ymin is '', not a number\n"


@pytest.mark.parametrize("fault", [ValueError("shape mismatch in a kernel"), FileNotFoundError("/tmp/x")])
def test_a_fault_keeps_its_traceback(fault):
    def run(_):
        raise fault
    with pytest.raises(type(fault), match=str(fault.args[0])):
        main(lambda argv: argv, run, [])


def test_user_errors_share_one_base():
    from cgc_ray.data.pipeline import TooManyBadImages
    from cgc_ray.evaluation.job import EvalError
    from cgc_ray.train.config import ConfigError
    from cgc_ray.train.loop import NoTrainingBatch
    from cgc_ray.train.model import UnsafeCheckpoint

    for kind in (ConfigError, EvalError, TooManyBadImages, NoTrainingBatch, UnsafeCheckpoint, DataError, MissingData):
        assert issubclass(kind, UserError), kind
    assert issubclass(MissingData, FileNotFoundError)  # callers catching FileNotFoundError still do


def test_what_an_indexer_refuses_is_a_data_error(tmp_path):
    from cgc_ray.data.indexers import load_or_build

    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found under"):
        load_or_build("folder", str(tmp_path), "train")
    with pytest.raises(MissingData, match=r"Cannot list directory .*/val"):  # no val/ under the root
        load_or_build("imagenet", str(tmp_path), "val")
    with pytest.raises(UserError, match="unknown data set kind 'nope'"):
        load_or_build("nope", str(tmp_path), "train")


def test_a_sweep_grid_that_is_not_numbers_is_named(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "jobs"))
    import lambda_sweep

    assert lambda_sweep.main(["--lam", "0,x", "--storage-path", str(tmp_path)]) == 2
    assert "error: --lam must be comma-separated floats, got '0,x'" in capsys.readouterr().err


def test_a_missing_labels_file_is_named(tmp_path):
    from cgc_ray.experiments.episodes import read_split_file

    with pytest.raises(MissingData, match=rf"--labels-file {tmp_path}/1percent.txt: no such file"):
        read_split_file(str(tmp_path / "1percent.txt"))
