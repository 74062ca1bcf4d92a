"""`keras-attn translate` and `keras-attn attention`: onnxruntime only, no TensorFlow."""

from __future__ import annotations

import contextlib
import sys
import warnings

from keras_attn.files import atomic_output, save_figure
from keras_attn.runtime import Translator, TruncationWarning
from pipelines.corpus import check_input_file, decode_lines, line_chunks


def translate_stream(bundle, input_path=None, output_path=None, beam=1, max_len=None, int8=False,
                     batch_size=64, alpha=None, n_best=0, line_buffered=False):
    """Translate a file (or stdin) line by line; the output has one line per input line,
    or with `n_best` N lines per input line (`output_lines`). The input is read and
    the output written in chunks of `8 * batch_size` lines, so memory does not grow
    with the input and a pipe gets its first lines early; `output_path` appears only
    complete. When stdin is a terminal, or with `line_buffered` (a program that writes
    a line and waits for its translation), each stdin line is answered on stdout as it
    arrives. `alpha`: the beam length penalty (default: the bundle's)."""
    check_input_file(input_path)  # before loading the bundle
    translator = Translator.load(bundle, int8=int8)
    options = dict(beam=beam, max_len=max_len, batch_size=batch_size, alpha=alpha, n_best=n_best)
    if input_path is None and output_path is None and (line_buffered or sys.stdin.isatty()):
        return answer_each_line(translator, **options)
    options["source"] = "<stdin>" if input_path is None else str(input_path)
    show_progress = input_path is not None and sys.stderr.isatty()
    output = contextlib.nullcontext(sys.stdout) if output_path is None else atomic_output(output_path)
    with output as out:
        for first, lines, fraction in line_chunks(input_path, batch_size * 8):
            out.write("".join(line + "\n" for line in output_lines(translator, lines, first, **options)))
            out.flush()
            if show_progress:
                print(f"\r{first + len(lines) - 1:,} lines ({fraction:.0%})", end="", file=sys.stderr, flush=True)
    if show_progress:
        print(file=sys.stderr)


def output_lines(translator, lines: list[str], first_line: int, *, source: str, n_best: int = 0,
                 **options) -> list[str]:
    """The translations of `lines`, one per line; with `n_best` N, the N best of each,
    best first, as `LINE<TAB>LOG-PROB<TAB>TRANSLATION` (LINE: the input's line number).
    Lines cut to the model's source limit are named on stderr (`source`: line(s) N, M)."""
    with collecting_truncations() as cut:
        if n_best:
            ranked = translator.translate_n_best(lines, n_best, **options)
        else:
            translations = translator.translate(lines, **options)
    report_truncation(cut, source, first_line, translator.max_src_len)
    if not n_best:
        return translations
    return [f"{number}\t{log_prob:.4f}\t{text}" for number, hypotheses in enumerate(ranked, start=first_line)
            for text, log_prob in hypotheses]


SHOWN_LINES = 20  # truncated line numbers printed per report; the rest are counted


def report_truncation(positions: list[int], source: str, first_line: int, limit: int) -> list[int]:
    """Name the truncated input lines on stderr (`source`: line(s) N, M, with position 0
    of the translated list at line `first_line`; the first `SHOWN_LINES`, then a count)
    and return all their numbers."""
    numbers = [first_line + i for i in positions]
    if numbers:
        shown = ", ".join(map(str, numbers[:SHOWN_LINES]))
        if len(numbers) > SHOWN_LINES:
            shown += f" and {len(numbers) - SHOWN_LINES} more"
        print(f"{source}: line(s) {shown} longer than {limit} source tokens, "
              f"translated from their first {limit}", file=sys.stderr)
    return numbers


@contextlib.contextmanager
def collecting_truncations():
    """Yields a list that, when the block ends, holds the positions (from 0) named by
    the `TruncationWarning`s raised in it, which are not shown; other warnings pass on."""
    positions = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TruncationWarning)
            yield positions
    finally:  # also when the block raises: its other warnings are not lost
        for warning in caught:
            if isinstance(warning.message, TruncationWarning):
                positions += warning.message.positions
            else:
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def answer_each_line(translator, **options):
    """Answer each stdin line on stdout as it arrives (typed at a terminal, or written by
    a program that waits for the answer), until end of input (Ctrl-D)."""
    for number, raw in enumerate(iter(sys.stdin.buffer.readline, b""), start=1):
        answer = output_lines(translator, decode_lines(raw, "<stdin>", first_line=number), number,
                              source="<stdin>", **options)
        print("\n".join(answer), flush=True)


def attention_heatmap(bundle, sentence: str, png, beam: int = 1) -> str:
    """Translate one sentence and draw its attention matrix; returns the translation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    translator = Translator.load(bundle)
    with collecting_truncations() as cut:  # a raw TruncationWarning showed this file's line
        result = translator.translate_with_attention([sentence], beam=beam)[0]
    if cut:
        print(f"the sentence is longer than {translator.max_src_len} source tokens: translated and plotted "
              f"from its first {translator.max_src_len}", file=sys.stderr)
    if not result.source_tokens:
        raise ValueError("the sentence is empty after tokenization; nothing to plot")
    height = max(3.0, 0.35 * len(result.target_tokens) + 1.5)
    width = max(4.0, 0.45 * len(result.source_tokens) + 2.0)
    fig, axis = plt.subplots(figsize=(width, height))
    image = axis.imshow(result.attention, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    axis.set_xticks(range(len(result.source_tokens)), result.source_tokens, rotation=60, ha="right")
    axis.set_yticks(range(len(result.target_tokens)), result.target_tokens)
    axis.set_xlabel("source")
    axis.set_ylabel("target")
    axis.set_title(result.text, fontsize=9)
    fig.colorbar(image, ax=axis, fraction=0.046)
    fig.tight_layout()
    save_figure(fig, png, dpi=110)
    plt.close(fig)
    return result.text
