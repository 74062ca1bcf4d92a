"""The README's Python examples run as written."""

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(section: str) -> list[str]:
    """The ```python blocks of the README section headed `## {section}`."""
    text = README.read_text(encoding="utf-8")
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


def test_python_api_examples_run_as_written(tmp_path, monkeypatch, capsys):
    from pipelines.dates import date_splits

    monkeypatch.chdir(tmp_path)
    pairs = date_splits(train=1000, seed=0)["train"]
    Path("pairs.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in zip(pairs.sources, pairs.targets)),
                                 encoding="utf-8")
    pipeline, keras_level = python_blocks("Python API")
    names = {}
    exec(compile(pipeline, "README.md (Python API, first block)", "exec"), names)
    assert names["metrics"]["epochs_run"] == 3 and Path("exported/mine/model.int8.onnx").is_file()
    assert len(names["translator"].translate(["25 June 2009", "", "1. März 1999"])) == 3
    names = {}
    exec(compile(keras_level, "README.md (Python API, second block)", "exec"), names)
    ids = names["result"]["ids"].numpy()
    assert ids.shape[0] == 2 and ids.shape[1] <= 10
    for saved, trained in zip(names["restored"].get_weights(), names["model"].get_weights(), strict=True):
        np.testing.assert_array_equal(saved, trained)
