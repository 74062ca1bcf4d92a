"""The TensorFlow NMT tutorial's model on Multi30k De→En, beside a keras-attn bundle.

    python benchmarks/tf_tutorial_baseline.py [--data-dir ../shared/data/multi30k] \
        [--bundle exported/m30k_bt256head] [--out runs/tf_tutorial]

tensorflow.org's "Neural machine translation with attention"
(text/tutorials/nmt_with_attention, the Keras edition with `CrossAttention`),
rewritten for Keras 3 with its sizes, text processing and training procedure:

- text: NFKD, lowercase, only ` a-z.?!,¿` kept, those punctuation marks split off as
  words, `[START]`/`[END]` added; `TextVectorization` of at most 5,000 words per side;
- encoder: embedding 256 (`mask_zero`) + bidirectional GRU 256, directions summed;
- decoder: embedding 256 + GRU 256 (starting from zeros: the encoder's state is not
  passed), then `CrossAttention` (one-head `MultiHeadAttention` over the encoder
  outputs, residual, `LayerNormalization`), then `Dense(vocab)` logits;
- masked cross-entropy, Adam (1e-3), batches of 64 shuffled pairs, `fit` for up to 100
  "epochs" of 100 steps with `EarlyStopping(patience=3)` on the validation loss (the
  last weights are kept, as in the tutorial);
- greedy decoding (temperature 0) of batches of 64 in a `tf.function` that stops when
  every row has ended or at 50 tokens (the tutorial's `translate`).

Training here uses Multi30k train and validates on all of Multi30k val (the tutorial
splits its one corpus 80/20). The script reports the training's target tokens/s
(non-pad target tokens of the epochs after the first, whose time includes tracing,
over their training time, validation excluded), test2016 sacreBLEU of the greedy
output as it comes (lowercase, no umlauts) and lowercased (`-lc`, fairer to a
lowercasing system), and test2016 greedy sentences/s (median of 3 passes after one
warm-up pass). With `--bundle`, a keras-attn bundle's onnxruntime greedy translation of
the same sentences is scored and timed the same way, in a child process without
TensorFlow.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import DEFAULT_DATA, bleu, median_rate, print_result, result_from_child, write_results  # noqa: E402

from pipelines.corpus import read_lines  # noqa: E402

UNITS = 256
MAX_VOCAB = 5000
BATCH_SIZE = 64
MAX_OUTPUT = 50


def lower_and_split_punct(text):
    """The tutorial's `tf_lower_and_split_punct`."""
    import tensorflow as tf
    import tensorflow_text as tf_text

    text = tf_text.normalize_utf8(text, "NFKD")
    text = tf.strings.lower(text)
    text = tf.strings.regex_replace(text, "[^ a-z.?!,¿]", "")
    text = tf.strings.regex_replace(text, "[.?!,¿]", r" \0 ")
    text = tf.strings.strip(text)
    return tf.strings.join(["[START]", text, "[END]"], separator=" ")


def vectorizer(texts: list[str]):
    """The tutorial's text processor, adapted on `texts`."""
    import keras
    import tensorflow as tf

    layer = keras.layers.TextVectorization(standardize=lower_and_split_punct, max_tokens=MAX_VOCAB, ragged=True)
    layer.adapt(tf.data.Dataset.from_tensor_slices(texts).batch(1024))
    return layer


def build_model(src_texts: list[str], tgt_texts: list[str]):
    """The tutorial's text processors (adapted on the training text) and model."""
    import keras

    class Encoder(keras.layers.Layer):
        def __init__(self, vocab_size):
            super().__init__()
            self.embedding = keras.layers.Embedding(vocab_size, UNITS, mask_zero=True)
            self.rnn = keras.layers.Bidirectional(
                keras.layers.GRU(UNITS, return_sequences=True, recurrent_initializer="glorot_uniform"),
                merge_mode="sum")

        def call(self, x):
            return self.rnn(self.embedding(x))  # |context| = (batch, src_len, units)

    class CrossAttention(keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.mha = keras.layers.MultiHeadAttention(key_dim=UNITS, num_heads=1)
            self.layernorm = keras.layers.LayerNormalization()
            self.add = keras.layers.Add()

        # The source mask is passed explicitly: Keras 3 does not hand a custom layer's
        # inputs' masks on to the layers it calls (the tutorial's Keras 2 did).
        def call(self, x, context, context_mask):
            attended = self.mha(query=x, value=context, value_mask=context_mask)
            return self.layernorm(self.add([x, attended]))

    class Decoder(keras.layers.Layer):
        def __init__(self, vocab_size):
            super().__init__()
            self.embedding = keras.layers.Embedding(vocab_size, UNITS, mask_zero=True)
            self.rnn = keras.layers.GRU(UNITS, return_sequences=True, return_state=True,
                                        recurrent_initializer="glorot_uniform")
            self.attention = CrossAttention()
            self.output_layer = keras.layers.Dense(vocab_size)

        def call(self, context, context_mask, x, state=None):
            x, state = self.rnn(self.embedding(x), initial_state=state)
            logits = self.output_layer(self.attention(x, context, context_mask))
            return logits, state  # |logits| = (batch, tgt_len, vocab)

    class Translator(keras.Model):
        def __init__(self, src_processor, tgt_processor):
            super().__init__()
            self.src_processor, self.tgt_processor = src_processor, tgt_processor
            self.encoder = Encoder(src_processor.vocabulary_size())
            self.decoder = Decoder(tgt_processor.vocabulary_size())

        def call(self, inputs):
            context, x = inputs
            logits, _ = self.decoder(self.encoder(context), context != 0, x)
            try:  # as the tutorial: the loss masks padding itself
                del logits._keras_mask
            except AttributeError:
                pass
            return logits

    return Translator(vectorizer(src_texts), vectorizer(tgt_texts))


def masked_loss(y_true, y_pred):
    import keras
    import tensorflow as tf

    loss = keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)
    mask = tf.cast(y_true != 0, loss.dtype)
    return tf.reduce_sum(loss * mask) / tf.reduce_sum(mask)


def datasets(model, train, valid, seed: int):
    """`((context, target_in), target_out)` batches, as the tutorial's `process_text`."""
    import tensorflow as tf

    def process_text(context, target):
        context = model.src_processor(context).to_tensor()
        target = model.tgt_processor(target)
        return (context, target[:, :-1].to_tensor()), target[:, 1:].to_tensor()

    def make(pairs, shuffle):
        ds = tf.data.Dataset.from_tensor_slices(pairs)
        if shuffle:
            ds = ds.shuffle(len(pairs[0]), seed=seed)
        return ds.batch(BATCH_SIZE).map(process_text, tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    return make(train, True), make(valid, False)


def target_tokens_per_batch(train_ds) -> float:
    """Mean non-pad target tokens (the loss's tokens) per training batch, one pass."""
    import numpy as np

    counts = [int(np.count_nonzero(y)) for _, y in train_ds.as_numpy_iterator()]
    return sum(counts) / len(counts)


def training_clock():
    """A callback adding up each epoch's training time (validation excluded)."""
    import keras

    class TrainingClock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_test_begin(self, logs=None):
            self.seconds.append(time.perf_counter() - self.start)

    return TrainingClock()


def train(model, train_ds, valid_ds, epochs: int, steps: int, log):
    import keras

    model.compile(optimizer="adam", loss=masked_loss)
    clock = training_clock()
    started = time.perf_counter()
    history = model.fit(train_ds.repeat(), epochs=epochs, steps_per_epoch=steps, validation_data=valid_ds,
                        callbacks=[keras.callbacks.EarlyStopping(patience=3), clock], verbose=2)
    log(f"[tutorial] trained {len(history.history['loss'])} epochs of {steps} steps "
        f"in {time.perf_counter() - started:.0f} s")
    return clock.seconds, history.history


def greedy_translator(model):
    """The tutorial's greedy `translate`, as one `tf.function` over a batch of strings:
    texts → target ids `(batch, <= MAX_OUTPUT)`, 0 after `[END]`."""
    import tensorflow as tf

    vocab = model.tgt_processor.get_vocabulary()
    start, end = vocab.index("[START]"), vocab.index("[END]")

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def translate(texts):
        source = model.src_processor(texts).to_tensor()
        context, context_mask = model.encoder(source), source != 0
        batch = tf.shape(texts)[0]
        token = tf.fill([batch, 1], tf.constant(start, tf.int64))
        done = tf.zeros([batch, 1], tf.bool)
        state = tf.zeros([batch, UNITS])
        tokens = tf.TensorArray(tf.int64, size=1, dynamic_size=True)
        for t in tf.range(MAX_OUTPUT):
            logits, state = model.decoder(context, context_mask, token, state=state)
            token = tf.argmax(logits[:, -1:, :], axis=-1)
            done = done | (token == end)
            token = tf.where(done, tf.constant(0, tf.int64), token)
            tokens = tokens.write(t, token[:, 0])
            if tf.reduce_all(done):
                break
        return tf.transpose(tokens.stack())

    def texts(sentences: list[str]) -> list[str]:
        out = []
        for start_at in range(0, len(sentences), BATCH_SIZE):
            for row in translate(tf.constant(sentences[start_at:start_at + BATCH_SIZE])).numpy():
                out.append(" ".join(vocab[i] for i in row if i not in (0, end)))
        return out

    return texts


def scored_row(system: str, outputs: list[str], refs: list[str], rate: float, **extra) -> dict:
    return {"system": system, **extra, "BLEU": bleu(outputs, refs), "BLEU (lowercased)": bleu(outputs, refs, True),
            "greedy sentences/s": round(rate, 1)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--bundle", help="a keras-attn export bundle to score and time beside it")
    parser.add_argument("--out", default="runs/tf_tutorial", help="where the trained weights go")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--steps", type=int, default=100, help="steps per epoch (the tutorial's 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the batch order")
    parser.add_argument("--name", default="tf_tutorial_baseline")
    parser.add_argument("--bundle-child", action="store_true", help=argparse.SUPPRESS)
    given = sys.argv[1:] if argv is None else list(map(str, argv))
    args = parser.parse_args(given)
    if args.bundle_child:
        test = args.data_dir + "/test_2016_flickr"
        print_result(bundle_row(args.bundle, read_lines(test + ".de.gz"), read_lines(test + ".en.gz")))
        return

    import warnings

    import keras

    warnings.filterwarnings("ignore", message=".*does not support masking")  # the explicit mask above
    keras.utils.set_random_seed(args.seed)
    split = {name: (read_lines(f"{args.data_dir}/{name}.de.gz"), read_lines(f"{args.data_dir}/{name}.en.gz"))
             for name in ("train", "val", "test_2016_flickr")}
    model = build_model(*split["train"])
    train_ds, valid_ds = datasets(model, split["train"], split["val"], args.seed)
    seconds, history = train(model, train_ds, valid_ds, args.epochs, args.steps, log=print)
    os.makedirs(args.out, exist_ok=True)
    model.save_weights(os.path.join(args.out, "tutorial.weights.h5"))
    counted = seconds[1:] or seconds  # the first epoch's time includes tracing
    tokens_per_second = target_tokens_per_batch(train_ds) * args.steps * len(counted) / sum(counted)

    sources, refs = split["test_2016_flickr"]
    outputs, rate = median_rate(greedy_translator(model), sources)
    notes = {"command": "python benchmarks/tf_tutorial_baseline.py " + " ".join(given),
             "test2016 line 1": sources[0], "its reference": refs[0], "the tutorial's greedy output": outputs[0]}
    rows = [scored_row("TF NMT tutorial (tf.function, TensorFlow)", outputs, refs, rate,
                       **{"parameters": model.count_params(), "training target tok/s": round(tokens_per_second),
                          "epochs x steps": f"{len(seconds)} x {args.steps}",
                          "best val_loss": round(min(history["val_loss"]), 3)})]
    if args.bundle:
        row, notes["keras-attn's greedy output"] = result_from_child(__file__, "--bundle-child", given)
        rows.append(row)
    write_results(args.name, rows, notes)


def bundle_row(bundle: str, sources: list[str], refs: list[str]):
    """The bundle's row and its first output; run in a child process that never imports
    TensorFlow, as a deployment runs (TensorFlow in the process slows onnxruntime down)."""
    from keras_attn.runtime import Translator

    translator = Translator.load(bundle)
    outputs, rate = median_rate(lambda batch: translator.translate(batch, batch_size=BATCH_SIZE), sources)
    name = f"keras-attn {os.path.basename(os.path.normpath(bundle))} (onnxruntime fp32, no TensorFlow)"
    return scored_row(name, outputs, refs, rate), outputs[0]


if __name__ == "__main__":
    main()
