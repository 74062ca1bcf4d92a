"""`TrainConfig`: the same checks for flags, config files and the Python API, each
error naming the flag, or the file and line, before any data is read."""

import dataclasses

import pytest

from pipelines import cli
from pipelines.config import TrainConfig
from pipelines.train import run


@pytest.mark.parametrize("text,message", [
    ("lr: abc", "c.yaml:3: lr: expected a number, got 'abc'"),
    ("epochs: 2.5", "c.yaml:3: epochs: expected a positive integer, got 2.5"),
    ("patience: 0", "c.yaml:3: patience: expected a positive integer, got 0"),
    ("average-last: -1", "c.yaml:3: average-last: expected a non-negative integer, got -1"),
    ("bidirectional: maybe", "c.yaml:3: bidirectional: expected true or false, got 'maybe'"),
    ("dropout: [0.1]", "c.yaml:3: dropout: expected a number, got [0.1]"),
    ("lr: .nan", "c.yaml:3: lr: expected a finite number, got nan"),
    ("clipnorm: .inf", "c.yaml:3: clipnorm: expected a finite number, got inf"),
    ('min-lr: "-inf"', "c.yaml:3: min-lr: expected a finite number, got -inf"),
    (f"lr: {10**400}", f"c.yaml:3: lr: expected a finite number, got {10**400}"),
    ("src_lang: no", "c.yaml:3: src_lang: expected text, got False (in YAML, put it in quotes)"),
    ("attention: bahdanau", "c.yaml:3: attention: expected one of general, dot, concat, got 'bahdanau'"),
    ("hidden: 5", "c.yaml:3: unknown key 'hidden'"),
    ("epochs: 30", "c.yaml:3: 'epochs' repeats the key of line 2"),  # YAML kept the last silently
    ("batch-size: 8\nbatch_size: 16", "c.yaml:4: 'batch_size' repeats the key of line 3"),
])
def test_a_bad_config_value_names_the_file_line_and_key(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(f"# the recipe\nepochs: 3\n{text}\n")
    with pytest.raises(ValueError) as error:
        TrainConfig.from_file(path)
    assert str(error.value) == f"{path.parent}/{message}"


def test_config_files_take_the_values_flags_take(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"epochs": 3, "batch-size": 8, "lr": 1, "bidirectional": false, "vocab_size": null}')
    assert TrainConfig.from_file(path) == {"epochs": 3, "batch_size": 8, "lr": 1.0, "bidirectional": False,
                                           "vocab_size": None}
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1e-3\n")  # YAML 1.1 reads an exponent without a dot as text
    assert TrainConfig.from_file(path) == {"lr": 0.001}
    path.write_text("")
    assert TrainConfig.from_file(path) == {}


@pytest.mark.parametrize("settings,message", [
    ({"ema": -0.1}, r"--ema must be in \[0, 1\)"),
    ({"ema": 1.0}, r"--ema must be in \[0, 1\)"),
    ({"lr": 0.0}, "--lr must be > 0"),
    ({"lr_factor": 1.0}, r"--lr-factor must be in \(0, 1\)"),
    ({"clipnorm": -1.0}, "--clipnorm must be >= 0"),
    ({"min_lr": -1e-5}, "--min-lr must be >= 0"),
    ({"seed": 2**32}, r"--seed must be < 2\*\*32"),
    ({"verbose": 3}, "--verbose must be 0, 1 or 2, got 3"),
    ({"monitor": "val_bleu"}, "--monitor val_bleu needs --val-bleu true"),
    ({"monitor": "bleu", "val_bleu": True}, "--monitor: expected one of val_loss, val_bleu, got 'bleu'"),
    ({"epochs": "3"}, "--epochs: expected a positive integer, got '3'"),
    ({"lr": float("nan")}, "--lr: expected a finite number, got nan"),  # --lr nan (argparse's float)
    ({"clipnorm": "inf"}, "--clipnorm: expected a finite number, got inf"),  # a number given as text
    # the model's and the batching's own checks, with the flag's name
    ({"dropout": 1.5}, r"--dropout must be in \[0, 1\), got 1.5"),
    ({"word_dropout": -0.1}, r"--word-dropout must be in \[0, 1\)"),
    ({"batch_tokens": 50, "max_len": 60}, r"--batch-tokens \(50\) must exceed --max-len \(60\)"),
    # file flags without --corpus files would be ignored: the demo would train instead
    ({"train_src": "a.de", "train_tgt": "a.en"}, "--train-src is for --corpus files"),
    ({"corpus": "files", "train_tsv": "a.tsv", "valid_src": "v.de"}, "--valid-src and --valid-tgt go together"),
    ({"corpus": "files"}, "--corpus files needs --train-src and --train-tgt"),
    ({"out": "README.md"}, "--out README.md: README.md is a file, not a folder"),
    ({"out": "README.md/run"}, "--out README.md/run: README.md is a file, not a folder"),
    # a folder the system refuses to create (it refuses root too): found by trying, before the data is prepared
    ({"out": "/sys/keras-attn/run"}, r"--out /sys/keras-attn/run: cannot write in /sys \("),
])
def test_bad_settings_are_refused_by_name(settings, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**settings).validate()


def test_numbers_given_as_text_are_read_as_numbers():
    cfg = TrainConfig(lr="1e-3", dropout=0)
    cfg.validate()
    assert cfg.lr == 0.001 and isinstance(cfg.dropout, float)


def test_a_bad_setting_stops_the_run_before_it_reads_data_or_writes(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="--dropout"):  # not: the missing corpus folder
        run(TrainConfig(corpus="multi30k", data_dir=str(tmp_path / "nowhere"), dropout=1.0, out=str(out)))
    assert not out.exists()


def test_the_defaults_and_the_recipes_pass(tmp_path):
    TrainConfig().validate()
    TrainConfig(**TrainConfig.from_file("configs/multi30k_deen.yaml")).validate()
    anneal = TrainConfig(**TrainConfig.from_file("configs/multi30k_deen_anneal.yaml"))
    with pytest.raises(ValueError, match="--init-from runs/multi30k_deen: missing model.keras"):
        anneal.validate()  # it starts from the first stage's folder, which this checkout has not trained


def test_every_train_flag_says_what_it_does(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    shown = "".join(capsys.readouterr().out.split())  # argparse wraps lines, also at hyphens
    for field in dataclasses.fields(TrainConfig):
        described = "".join(field.metadata["help"].split())
        assert len(described) > 10 and described in shown, field.name
