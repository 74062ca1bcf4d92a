import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

try:
    from hypothesis import settings
    settings.register_profile("default", deadline=None, max_examples=100)
    settings.register_profile("long", deadline=None, max_examples=5000)
except ImportError:  # pragma: no cover - hypothesis is a dev dependency
    pass

MULTI30K = Path(os.environ.get("KERAS_ATTN_MULTI30K",
                               Path(__file__).resolve().parents[2] / "shared" / "data" / "multi30k"))


@pytest.fixture
def multi30k_dir():
    if not (MULTI30K / "train.de.gz").is_file():
        pytest.skip(f"Multi30k not found at {MULTI30K} (set KERAS_ATTN_MULTI30K to its folder)")
    return MULTI30K
