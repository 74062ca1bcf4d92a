import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

try:
    from hypothesis import settings
    # `pytest --hypothesis-profile=long` for a longer fuzzing run.
    settings.register_profile("default", deadline=None, max_examples=1000)
    settings.register_profile("long", deadline=None, max_examples=10000)
    settings.load_profile("default")
except ImportError:  # pragma: no cover - hypothesis is a dev dependency
    pass

MULTI30K = Path(os.environ.get("KERAS_ATTN_MULTI30K",
                               Path(__file__).resolve().parents[2] / "shared" / "data" / "multi30k"))


@pytest.fixture
def multi30k_dir():
    if not (MULTI30K / "train.de.gz").is_file():
        pytest.skip(f"Multi30k not found at {MULTI30K} (set KERAS_ATTN_MULTI30K to its folder)")
    return MULTI30K


@pytest.fixture(scope="session")
def dates_run(tmp_path_factory):
    """A small dates model trained once for the whole session (about a minute)."""
    from pipelines.config import TrainConfig
    from pipelines.train import run

    out = tmp_path_factory.mktemp("dates_run")
    cfg = TrainConfig(out=str(out), dates_train_size=6000, epochs=4, embedding_dim=32, encoder_units=32,
                      decoder_units=64, lr=5e-3, batch_size=64, verbose=0)
    metrics = run(cfg)
    return out, metrics


@pytest.fixture(scope="session")
def dates_bundle(dates_run, tmp_path_factory):
    from pipelines.export import export

    out = tmp_path_factory.mktemp("bundles") / "dates"
    export(dates_run[0], out, beam=3, quantize="int8", log=lambda *a: None)
    return out
