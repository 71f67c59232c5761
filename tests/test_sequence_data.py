"""The text dataset, the default corpus and the synthetic sequence tasks: formats, splits, records, errors."""

from __future__ import annotations

import gzip
import platform

import numpy as np
import pytest
from train_support import builtin_registry, hermetic  # noqa: F401

from layerkit.data import load_data
from layerkit.data.preprocess import Preprocessing
from layerkit.data.record import DataRecord
from layerkit.data.sequences import IGNORE_INDEX
from layerkit.data.text import default_corpus
from layerkit.data.vocabulary import Vocabulary
from layerkit.errors import DataError

REGISTRY = builtin_registry()


def text_data(path, options=None, length=4, **kw):
    return load_data("text", options or {}, data_dir=path, input_shape=None if length is None else (length,),
                     registry=REGISTRY, **kw)


# -- text -----------------------------------------------------------------------------

def test_windows_are_next_character_pairs_split_by_position(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abcdefghijklmnopqrst")  # 20 characters: 18 for training, the last 2 ... too few
    with pytest.raises(DataError, match="the test split has 2 tokens, too few for one window of 4 \\+ 1"):
        text_data(path)
    data = text_data(path, {"test_fraction": 0.3, "stride": 2})
    vocab = data.preprocessing.vocabulary
    assert vocab.unit == "char" and vocab.tokens == tuple("abcdefghijklmnopqrst")
    train = [vocab.decode(x) for x in data.x_train]
    assert train == ["abcd", "cdef", "efgh", "ghij", "ijkl"]  # the first 14 characters, stride 2
    assert [vocab.decode(y) for y in data.y_train] == ["bcde", "defg", "fghi", "hijk", "jklm"]
    assert [vocab.decode(x) for x in data.x_test] == ["opqr"]  # the last 6: "opqrst"
    assert data.x_train.dtype == data.y_train.dtype == np.int64 and data.x_train.shape == (5, 4)
    assert data.preprocessing.normalize == "none" and data.class_names == []


def test_default_stride_is_the_window_and_limits_apply(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("x" * 90 + "y" * 10)
    data = text_data(path, {"train_limit": 3}, length=8)
    assert data.x_train.shape == (3, 8) and len(data.x_test) == 1
    assert text_data(path, {"validation_split": 0.25}, length=8).counts() == {"train": 8, "validation": 3, "test": 1}


def test_bytes_and_folders_and_gzip(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "b.txt").write_text("é" * 20)
    (folder / "a.txt").write_text("z" * 20)
    (folder / "ignored.md").write_text("q" * 20)
    data = text_data(folder, {"unit": "byte"})
    assert data.preprocessing.vocabulary == Vocabulary("byte")
    assert data.x_train[0].tolist() == [ord("z")] * 4  # a.txt first, in name order
    assert data.x_test[-1].tolist() == list("éé".encode())
    assert [p.rsplit("/", 1)[-1] for p in data.files] == ["a.txt", "b.txt"]
    chars = text_data(folder, {"test_fraction": 0.25})
    assert chars.preprocessing.vocabulary.tokens == ("z", "é")
    packed = tmp_path / "p.txt.gz"
    packed.write_bytes(gzip.compress(b"hello world, hello text"))
    assert text_data(packed, {"test_fraction": 0.25}).preprocessing.vocabulary.size == len(set("hello world, text"))


def test_bad_text_is_one_data_error(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"abc\xff" * 10)
    with pytest.raises(DataError, match=r"bad.txt: not UTF-8 text \(invalid start byte at byte 3\)"):
        text_data(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DataError, match="empty.txt: no text"):
        text_data(empty)
    with pytest.raises(DataError, match=r"input must have shape \[T\]"):
        load_data("text", {}, data_dir=bad, input_shape=(1, 28, 28), registry=REGISTRY)
    ok = tmp_path / "ok.txt"
    ok.write_text("abcdefgh" * 10)
    with pytest.raises(DataError, match=r"training.data.length: 5 does not fit the model's input \[4\]"):
        text_data(ok, {"length": 5})


def test_a_saved_vocabulary_encodes_the_text_again(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abcabcabcabcabc")
    first = text_data(path, {"test_fraction": 0.4})
    path.write_text("abcabcabcabcabd")  # a character the model never saw
    with pytest.raises(DataError, match="1 character not in the vocabulary of 3 the model was trained on: 'd'"):
        text_data(path, {"test_fraction": 0.4}, preprocessing=first.preprocessing)
    images = Preprocessing(normalize="unit", input_shape=(4,))
    with pytest.raises(DataError, match="preprocessing has no vocabulary"):
        text_data(path, preprocessing=images)


def test_the_record_fingerprints_the_files_and_notes_changes(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abcdefgh" * 10)
    options = {"test_fraction": 0.2, "stride": 2}
    record = DataRecord.of("text", text_data(path, options), options, 0)
    assert record.files[0]["path"] == str(path.resolve()) and record.options == options
    again = DataRecord.from_dict(record.to_dict())
    path.write_text("abcdefgh" * 9 + "hgfedcba")
    now = DataRecord.of("text", text_data(path, options), options, 0)
    assert any("t.txt changed" in d for d in again.differences(now))
    other = DataRecord.of("text", text_data(path, {"stride": 3}), {"stride": 3}, 0)
    assert "training.data.stride 3 instead of 2" in record.differences(other, evaluating=True)


# -- the default corpus -----------------------------------------------------------------

def test_no_file_reads_the_standard_library_deterministically(monkeypatch, tmp_path):
    monkeypatch.setenv("LAYERKIT_DATA_DIR", str(tmp_path))  # a .txt here must not become the corpus
    (tmp_path / "notes.txt").write_text("not the corpus " * 100)
    stdlib, paths = default_corpus()
    assert paths == sorted(paths) and all(p.parent == stdlib and not p.name.startswith("_") for p in paths)
    assert sum(p.stat().st_size for p in paths) <= 2_000_000
    data = load_data("text", {}, input_shape=(64,), registry=REGISTRY)
    assert platform.python_version() in data.source and str(stdlib) in data.source
    assert "default corpus" in data.notice
    assert [f["path"] for f in data.fingerprint] == [str(p.resolve()) for p in paths]
    assert data.location is None  # found again wherever the run resumes: the "embedded" corpus
    assert np.array_equal(data.x_train, load_data("text", {}, input_shape=(64,), registry=REGISTRY).x_train)
    record = DataRecord.of("text", data, {}, 0)
    other = dict(record.to_dict(), files=[dict(f, sha256="0" * 64) if i == 0 else f
                                          for i, f in enumerate(record.files)])
    # another Python version reads other module sources: resume and evaluate refuse them
    assert any(d.startswith(f"{record.files[0]['path']} changed") for d in record.differences(
        DataRecord.from_dict(other)))


def test_small_cap_keeps_whole_modules():
    _, paths = default_corpus(60_000)
    assert 0 < sum(p.stat().st_size for p in paths) <= 60_000
    assert paths == default_corpus(60_000)[1]


# -- synthetic tasks -------------------------------------------------------------------

def task(name, options=None, length=None, **kw):
    opts = {"train_samples": 300, "test_samples": 50, **(options or {})}
    return load_data(name, opts, input_shape=None if length is None else (length,), registry=REGISTRY, **kw)


def answers(x, y):
    """(question, answer) of each sample, from the sequence ``x`` plus its last target."""
    out = []
    for xi, yi in zip(x.tolist(), y.tolist(), strict=True):
        seq = xi + [yi[-1] if yi[-1] != IGNORE_INDEX else 0]
        sep = seq.index(1)
        n = sep
        out.append((seq[:n], seq[sep + 1:sep + 1 + n], xi, yi, sep))
    return out


@pytest.mark.parametrize("name, rule", [("copy", lambda q: q), ("reverse", lambda q: q[::-1]),
                                        ("sort", sorted)])
def test_symbol_tasks_are_question_separator_answer(name, rule):
    data = task(name, {"length": 5, "min_length": 2, "vocab_size": 7})
    assert data.x_train.shape[1] == data.y_train.shape[1] == 10 and data.x_train.dtype == np.int64
    vocab = data.preprocessing.vocabulary
    assert vocab.tokens == ("<pad>", "<sep>", "0", "1", "2", "3", "4") and vocab.padding == 0
    lengths = set()
    for question, answer, x, y, sep in answers(data.x_train, data.y_train):
        lengths.add(len(question))
        assert 2 <= len(question) <= 5 and all(2 <= t < 7 for t in question)
        assert answer == rule(question)
        # scored: exactly the answer; padding on the right of x, never scored
        assert y == [IGNORE_INDEX] * sep + answer + [IGNORE_INDEX] * (10 - sep - len(answer))
        assert x[2 * sep + 1:] == [0] * (10 - 2 * sep - 1)
    assert lengths == {2, 3, 4, 5}


def test_addition_spells_the_sum():
    data = task("addition", {"digits": 3})
    vocab = data.preprocessing.vocabulary
    assert data.x_train.shape == (len(data.x_train), 11)
    for x, y in zip(data.x_test, data.y_test, strict=True):
        text = vocab.decode(x) + vocab.decode([y[-1]])
        a, rest = text.split("+")
        b, c = rest.split("=")
        assert len(a) == len(b) == 3 and int(a) + int(b) == int(c) and len(c) == 4
        assert (y[:7] == IGNORE_INDEX).all() and vocab.decode(y[7:]) == c


def test_tasks_are_deterministic_with_a_fixed_split():
    a, b = task("reverse", {"length": 3, "vocab_size": 5}), task("reverse", {"length": 3, "vocab_size": 5})
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, task("reverse", {"length": 3, "vocab_size": 5, "task_seed": 1}).x_train)
    # 3 symbols, length 3: 27 questions, so most test questions would be drawn for training too
    test = {tuple(r) for r in a.x_test.tolist()}
    assert len(a.x_train) < 300 and not any(tuple(r) in test for r in a.x_train.tolist())
    assert a.fingerprint[0]["path"] == "reverse-task"
    record = DataRecord.of("reverse", a, {"length": 3}, 0)
    other = DataRecord.of("reverse", task("reverse", {"length": 3, "vocab_size": 6}), {"length": 3, "vocab_size": 6}, 0)
    assert "training.data.vocab_size 6 instead of not set" in record.differences(other, evaluating=True)


def test_task_lengths_come_from_the_model_input():
    assert task("copy", length=12).x_train.shape[1] == 12
    assert task("addition", length=8).x_train.shape[1] == 8  # 2 digits
    with pytest.raises(DataError, match=r"model's input \[7\] must be even"):
        task("sort", length=7)
    with pytest.raises(DataError, match=r"length: 4 makes copy sequences of 8 tokens, but the model's input is \[10\]"):
        task("copy", {"length": 4}, length=10)
    with pytest.raises(DataError, match=r"3 x digits \+ 2 tokens, which the model's input \[9\] is not"):
        task("addition", length=9)
    with pytest.raises(DataError, match="vocabulary is fixed"):
        task("addition", {"vocab_size": 12})
    with pytest.raises(DataError, match="min_length: 6 must be from 1 to length"):
        task("copy", {"length": 5, "min_length": 6})
    with pytest.raises(DataError, match=r"outputs 10 numbers per sample; a sequence model outputs \(T, K\)"):
        load_data("copy", {}, input_shape=(16,), num_outputs=10, registry=REGISTRY)
    with pytest.raises(DataError, match="is generated and reads no files"):
        load_data("sort", {}, data_dir="/tmp", registry=REGISTRY)


# -- the vocabulary in preprocessing.json ---------------------------------------------------

def test_preprocessing_round_trips_the_vocabulary(tmp_path):
    vocab = Vocabulary("token", ("<pad>", "<sep>", "a"), padding=0)
    pre = Preprocessing(normalize="none", input_shape=(6,), raw_dtype="int64", vocabulary=vocab)
    assert Preprocessing.load(pre.save(tmp_path)).vocabulary == vocab
    images = Preprocessing(normalize="unit", input_shape=(1, 2, 2))
    assert "vocabulary" not in images.to_dict()  # image runs' files are as before
    for broken, fragment in [({"unit": "word", "tokens": ["a"], "padding": None}, "unit 'word'"),
                             ({"unit": "char", "tokens": ["b", "a"], "padding": None}, "code point order"),
                             ({"unit": "byte", "tokens": ["a"], "padding": None}, "lists none"),
                             ({"unit": "char", "tokens": ["a"], "padding": 1}, "padding"),
                             ({"unit": "char"}, "expected an object")]:
        with pytest.raises(DataError, match=f"x.json: vocabulary: .*{fragment}"):
            Preprocessing.from_dict(dict(pre.to_dict(), vocabulary=broken), "x.json")


def test_load_dataset_gives_the_token_windows(hermetic):  # noqa: F811
    import layerkit

    (x, y), (x_test, y_test) = layerkit.load_dataset("sort")
    assert x.shape == y.shape == (len(x), 16) and x.dtype == y.dtype == np.int64 and len(x_test) == 1000
    (x, y), _ = layerkit.load_dataset("text")  # the default corpus, windows of 64
    assert x.shape[1] == 64 and np.array_equal(x[0, 1:], y[0, :-1])
