"""Translate a file with JoeyNMT 2.3.0 and time it; run by JoeyNMT's venv's Python.

    python translate.py CONFIG SOURCE   # prints {"seconds": ..., "hypotheses": [...]}

The body of `joeynmt.prediction.translate`'s stdin branch, which cannot be used as is:
with `--output-path` it fails after decoding (`args.n_best` is `args.test.n_best` in
2.3.0), and without it the translations share stdout with nothing to time them by.
The clock runs from handing over the first line to the last detokenized hypothesis:
tokenization, batching, search and detokenization; loading the checkpoint is left out.
"""

import json
import sys
import time

from joeynmt.config import load_config, parse_global_args
from joeynmt.prediction import predict, prepare


def main(config_path: str, source_path: str) -> None:
    args = parse_global_args(load_config(config_path), rank=0, mode="translate")
    model, _, _, test_data = prepare(args, rank=0, mode="translate")
    with open(source_path, encoding="utf-8") as source:
        lines = [line.rstrip("\n") for line in source]
    start = time.perf_counter()
    for line in lines:
        test_data.set_item(line)
    _, _, hypotheses, _, _, _ = predict(model=model, data=test_data, compute_loss=False, device=args.device,
                                        rank=0, n_gpu=args.n_gpu, normalization="none",
                                        num_workers=args.num_workers, args=args.test, autocast=args.autocast)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "hypotheses": hypotheses}, ensure_ascii=False))


if __name__ == "__main__":
    main(*sys.argv[1:])
