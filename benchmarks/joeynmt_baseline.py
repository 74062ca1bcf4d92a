"""JoeyNMT with the keras-attn recipe on Multi30k De→En, beside a keras-attn bundle.

    bash benchmarks/joeynmt/run.sh        # JoeyNMT in its own venv, trained for 82 min
    python benchmarks/joeynmt_baseline.py --run runs/joeynmt --bundle exported/m30k_bt256head

The brief's JoeyNMT figures (723 target tok/s, ≈ 41 sentences/s, 37.5 / 39.0 BLEU) come
with JoeyNMT's own hyper-parameters and 8k/8k pieces. `run.sh` trains JoeyNMT 2.3.0
(PyTorch) on the recipe's architecture, hyper-parameters and SentencePiece models
(`joeynmt/multi30k_deen.yaml`) for the wall time the recipe's sixth run trained, as
`opennmt/run.sh` does for OpenNMT-py. This script takes JoeyNMT's best checkpoint
(`best.ckpt`, the lowest validation perplexity: validation only), translates test2016
with JoeyNMT's own `translate` code (`joeynmt/translate.py`: greedy, and beam 5 at the
length penalty chosen on the validation set as the bundle's was; batches of 64
sentences) and scores it with sacreBLEU; greedy sentences/s is the median of 3 passes
after a warm-up pass, beam 5 one pass; each pass is timed inside JoeyNMT's process
(tokenization, batching, search and detokenization; the checkpoint's loading is left
out). Training target tokens/s is the median of JoeyNMT's reports (its first left out;
they exclude validation time). The bundle's rows are timed as in `opennmt_baseline.py`.
JoeyNMT's test2016 outputs are saved for `significance.py` (`results/hypotheses/test2016/
NAME.{greedy,beam5}.txt`, NAME the results name).
The tests run the log parsing, the hand-over to `translate.py` (with a stand-in for
JoeyNMT's Python), the command line (`opennmt_baseline.compare`) and `run.sh` (with
stand-ins for pip and JoeyNMT): JoeyNMT itself needs PyTorch, which the project does not
install.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import bleu  # noqa: E402
from opennmt_baseline import BATCH_SIZE, compare, row  # noqa: E402

from pipelines.corpus import read_lines  # noqa: E402
from pipelines.evaluate import ALPHAS, best_row  # noqa: E402

HERE = Path(__file__).resolve().parent


def validation_perplexities(validations: str) -> dict[int, float]:
    """{step: validation perplexity} from JoeyNMT's `validations.txt`."""
    found = {}
    for line in validations.splitlines():
        step, ppl = re.search(r"Steps: (\d+)\t", line), re.search(r"\tppl: ([\d.]+)\t", line)
        if step and ppl:
            found[int(step.group(1))] = float(ppl.group(1))
    return found


def training_tokens_per_second(train_log: str) -> list[float]:
    """The target tokens/s of each of JoeyNMT's training reports ("Tokens per Sec")."""
    return [float(rate) for rate in re.findall(r"Tokens per Sec:\s+(\d+)", train_log)]


def joeynmt_translate(run: Path, source: Path, beam: int, alpha: float = 0.0) -> tuple[list[str], float]:
    """(translations, seconds) of `source` by JoeyNMT (`joeynmt/translate.py`) with `run`'s
    best checkpoint; `alpha`: the beam's length penalty, ((5 + length) / 6) ** alpha as
    the bundle's (0: none, JoeyNMT's default)."""
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    config["testing"].update(load_model=str(run / "model" / "best.ckpt"), beam_size=beam, beam_alpha=alpha,
                             batch_size=BATCH_SIZE)
    with tempfile.TemporaryDirectory() as folder:
        config_file = Path(folder) / "config.yaml"
        config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
        done = subprocess.run([str(run / "venv" / "bin" / "python"), str(HERE / "joeynmt" / "translate.py"),
                               str(config_file), str(source)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"JoeyNMT's translate.py failed on {source} (exit {done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.splitlines()[-1])
    return result["hypotheses"], result["seconds"]


def tuned_alpha(run: Path, data: Path) -> tuple[float, list[dict]]:
    """JoeyNMT's beam-5 length penalty chosen on the validation set from the grid
    `keras-attn tune-alpha` chooses the bundle's from, and the BLEU at each."""
    refs = read_lines(data / "val.en")
    rows = [{"alpha": alpha, "bleu": bleu(joeynmt_translate(run, data / "val.de", 5, alpha)[0], refs)}
            for alpha in ALPHAS]
    return best_row(rows)["alpha"], rows


def joeynmt_rows(run: Path, data: Path, refs: list[str]) -> tuple[list[dict], dict, dict]:
    best = run / "model" / "best.ckpt"
    if not best.exists():  # before validations.txt, which the first validation writes too
        raise SystemExit(f"{best}: no validation with a saved checkpoint yet")
    perplexities = validation_perplexities((run / "model" / "validations.txt").read_text(encoding="utf-8"))
    step = int(best.resolve().stem)
    source = data / "test_2016_flickr.de"
    joeynmt_translate(run, source, beam=1)  # warm-up (disk cache)
    greedy = [joeynmt_translate(run, source, beam=1) for _ in range(3)]
    alpha, alpha_rows = tuned_alpha(run, data)
    beam, beam_seconds = joeynmt_translate(run, source, beam=5, alpha=alpha)
    rate = statistics.median(len(refs) / seconds for _, seconds in greedy)
    reports = training_tokens_per_second((run / "model" / "train.log").read_text(encoding="utf-8"))[1:]
    system = "JoeyNMT 2.3.0 (PyTorch), keras-attn recipe"
    facts = {"JoeyNMT checkpoint": f"step {step} of {max(perplexities)} (validation perplexity "
                                   f"{perplexities[step]}, the lowest of {len(perplexities)})",
             "JoeyNMT training target tok/s": f"median {statistics.median(reports):,.0f} of {len(reports)} reports "
                                              f"({min(reports):,.0f}-{max(reports):,.0f})",
             "JoeyNMT beam 5 length penalty": f"alpha {alpha}, chosen on validation: "
                                              + ", ".join(f"{r['alpha']}: {r['bleu']}" for r in alpha_rows)}
    outputs = {"greedy": greedy[0][0], "beam 5": beam}
    return [row(system, "greedy", greedy[0][0], refs, rate),
            row(system, f"beam 5, alpha {alpha}", beam, refs, len(refs) / beam_seconds)], facts, outputs


def main(argv=None):
    compare(argv, __doc__, "JoeyNMT", "joeynmt", lambda run, bundle, data, refs: joeynmt_rows(run, data, refs))


if __name__ == "__main__":
    main()
