"""layerkit generate and Model.generate: sampling from a language model's scores, and every way to ask badly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from layerkit import hookimpl
from layerkit.api import load
from layerkit.api.generate import GenerateError, sample
from layerkit.cli import main
from layerkit.data.preprocess import Preprocessing
from layerkit.data.vocabulary import Vocabulary
from layerkit.modelfile.schema import MODEL_SCHEMA
from layerkit.nn.layer import Layer, ParamSpec
from layerkit.plugins.manager import load_registry, reset_registry


class TableLM(Layer):
    """A bigram language model: the scores of every position are the row of its token id."""

    type = "table_lm"
    description = "Scores of the next token: one learnable row per token id."
    input_kind = "tokens"
    params_schema = {"type": "object", "properties": {"vocab": {"type": "integer", "minimum": 1}},
                     "required": ["vocab"], "additionalProperties": False}

    def token_range(self) -> int:
        return self.vocab

    def output_shape(self, input_shape):
        return (*tuple(input_shape), self.vocab)

    def param_specs(self, input_shape):
        return {"table": ParamSpec((self.vocab, self.vocab), "zeros")}

    def forward(self, params, x, training=False, rng=None, state=None):
        ids = np.asarray(x).astype(np.int64)  # token ids, whatever dtype the network hands them in
        return params["table"][ids], ids

    def backward(self, params, cache, dy):
        table = np.zeros_like(dy, shape=(self.vocab, self.vocab))
        np.add.at(table, cache, dy)  # test-only layer: never trained here
        return None, {"table": table}


class lm_plugin:  # noqa: N801
    @staticmethod
    @hookimpl
    def layerkit_register_layers(register):
        register(TableLM)


TEXT = "abc"
WINDOW = 4


@pytest.fixture
def registry():
    reg = load_registry(extra_plugins=[lm_plugin], entry_points=False)
    reset_registry(reg)
    yield reg
    reset_registry(None)


#: token inputs are declared once the model format has input dtypes (issue 20); before, ids arrive as floats
TOKEN_INPUT = {"dtype": "int64"} if "dtype" in MODEL_SCHEMA["properties"]["input"]["properties"] else {}


def lm_dict(unit: str = "char") -> dict:
    return {"format": 1, "name": "bigram", "input": {"shape": [WINDOW], **TOKEN_INPUT},
            "layers": [{"name": "lm", "type": "table_lm", "vocab": 3 if unit == "char" else 256}],
            "loss": {"type": "mse"}, "training": {"dataset": "text", "data": {"unit": unit}}}


@pytest.fixture
def run(tmp_path, registry):
    """A saved 'model' that always follows a with b, b with c and c with a."""
    model = load(lm_dict(), registry=registry)
    table = np.zeros((3, 3), np.float32)
    table[[0, 1, 2], [1, 2, 0]] = 20.0
    model.net.params["lm"]["table"][...] = table
    model.preprocessing = Preprocessing(normalize="none", input_shape=(WINDOW,), raw_dtype="int64",
                                        vocabulary=Vocabulary.of_text(TEXT))
    return model.save(tmp_path / "run")


def test_a_saved_language_model_continues_the_prompt(run, registry):
    model = load(run, registry=registry)
    assert model.preprocessing.vocabulary == Vocabulary.of_text(TEXT)  # saved with the weights
    assert model.generate("ab", 7, top_k=1) == "cabcabc"
    assert model.generate("cccccc", 2, temperature=0.5, seed=3) == "ab"  # context longer than the window


def test_the_cli_prints_prompt_and_continuation(run, registry, capsys):
    assert main(["generate", str(run), "--prompt", "bc", "--length", "4", "--temperature", "0.7", "--seed", "1"]) == 0
    assert capsys.readouterr().out == "bcabca\n"


@pytest.mark.parametrize("args, fragment", [
    (["--temperature", "0"], "temperature: 0.0; give a number above 0"),
    (["--temperature", "-1"], "temperature: -1.0; give a number above 0"),
    (["--top-k", "0"], "top_k: 0; give 1 or more"),
    (["--length", "-3"], "length: -3; give the number of tokens"),
])
def test_bad_settings_are_one_error_line_each(run, registry, capsys, args, fragment):
    assert main(["generate", str(run), "--prompt", "a", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0]


def test_unknown_prompt_characters_are_named(run, registry, capsys):
    assert main(["generate", str(run), "--prompt", "abxzx"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: prompt: 2 characters not in the vocabulary of 3 the model was trained on: 'x', 'z'"]


def test_a_model_without_vocabulary_or_a_missing_run_is_refused(tmp_path, registry, capsys):
    assert main(["generate", str(tmp_path / "nothing"), "--prompt", "a"]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    (tmp_path / "m.json").write_text("{}")
    assert main(["generate", str(tmp_path / "m.json"), "--prompt", "a"]) == 2
    assert "m.json: a file, not a run directory" in capsys.readouterr().err
    model = load(lm_dict(), registry=registry)
    with pytest.raises(GenerateError, match="has no vocabulary"):
        model.generate("a", 3)
    model.preprocessing = Preprocessing(normalize="none", input_shape=(WINDOW,), raw_dtype="int64",
                                        vocabulary=Vocabulary("token", ("<pad>", "<sep>", "0"), padding=0))
    with pytest.raises(GenerateError, match="synthetic task's tokens"):
        model.generate("a", 3)


def test_a_byte_model_decodes_utf8(tmp_path, registry):
    model = load(lm_dict("byte"), registry=registry)
    table = np.zeros((256, 256), np.float32)
    seq = "é!".encode()  # 0xC3 0xA9 0x21: after "!" comes the two bytes of é
    table[ord("!"), seq[0]] = table[seq[0], seq[1]] = table[seq[1], ord("!")] = 30.0
    model.net.params["lm"]["table"][...] = table
    model.preprocessing = Preprocessing(normalize="none", input_shape=(WINDOW,), raw_dtype="int64",
                                        vocabulary=Vocabulary("byte"))
    assert model.generate("!", 6, top_k=1) == "é!é!"


# -- the sampler alone ------------------------------------------------------------

def recording(k: int, seen: list):
    """A fake model: scores favour (last real token + 1) mod k; it records every input."""
    def predict(x):
        seen.append(x.copy())
        scores = np.zeros((1, x.shape[1], k))
        scores[0, np.arange(x.shape[1]), (x[0] + 1) % k] = 5.0
        return scores
    return predict


def test_sampling_slides_a_window_and_pads_short_contexts():
    seen: list = []
    out = sample(recording(5, seen), np.array([1, 2]), 4, 3, top_k=1, pad=0)
    assert out.tolist() == [3, 4, 0, 1]
    assert [s[0].tolist() for s in seen] == [[1, 2, 0], [1, 2, 3], [2, 3, 4], [3, 4, 0]]


def test_sampling_is_repeatable_and_follows_temperature():
    def flat(x):
        return np.zeros((1, x.shape[1], 4)) + np.array([0.0, 0.0, 0.0, 1.0])
    a = sample(flat, np.array([0]), 400, 2, seed=7)
    assert np.array_equal(a, sample(flat, np.array([0]), 400, 2, seed=7))
    hot = np.mean(sample(flat, np.array([0]), 400, 2, temperature=10.0, seed=7) == 3)
    cold = np.mean(sample(flat, np.array([0]), 400, 2, temperature=0.05, seed=7) == 3)
    assert cold == 1.0 and 0.15 < hot < 0.4  # 10.0 flattens e/(e+3) towards 1/4
    assert set(sample(flat, np.array([0]), 200, 2, top_k=2, seed=1).tolist()) <= {0, 1, 2, 3}
    assert len(set(sample(flat, np.array([0]), 200, 2, top_k=1, seed=1).tolist())) == 1


def test_sampling_refuses_bad_settings_and_non_language_models():
    with pytest.raises(GenerateError, match="prompt is empty"):
        sample(recording(3, []), np.array([], dtype=np.int64), 2, 3)
    with pytest.raises(GenerateError, match="temperature: nan"):
        sample(recording(3, []), np.array([1]), 2, 3, temperature=float("nan"))
    with pytest.raises(GenerateError, match=r"outputs \(3,\) per sample"):
        sample(lambda x: np.zeros((1, 3)), np.array([1]), 2, 3)


# -- after the embedding layer lands: fit a real character model on text, then generate --

def _has_embedding() -> bool:
    return "embedding" in load_registry(entry_points=False).names("layer")


@pytest.mark.skipif(not _has_embedding(), reason="needs the embedding layer and sequence_cross_entropy")
def test_fit_a_character_model_then_generate(tmp_path, capsys):
    from layerkit.training.runs import train

    text = tmp_path / "abc.txt"
    text.write_text("the cat sat on the mat. " * 200)
    registry = load_registry(entry_points=False)
    schema = registry.get("layer", "embedding").params_schema
    size_key = next(k for k in schema["properties"] if "vocab" in k or k in ("num_embeddings", "input_dim"))
    dim_key = next(k for k in schema["properties"] if k != size_key and ("dim" in k or k in ("units", "features")))
    vocab = len(set(text.read_text()))
    model = {"format": 1, "name": "bigram", "input": {"shape": [16], "dtype": "int64"},
             "layers": [{"type": "embedding", size_key: vocab, dim_key: vocab}],
             "loss": {"type": "sequence_cross_entropy"},
             "training": {"dataset": "text", "epochs": 2, "batch_size": 16, "optimizer": {"type": "adam", "lr": 0.1},
                          "data": {"data_dir": str(text), "stride": 4}}}
    run, _ = train(model, out=tmp_path / "run")
    record = json.loads((run.path / "data.json").read_text())
    assert record["files"][0]["path"] == str(text.resolve())
    assert main(["generate", str(run.path), "--prompt", "the ", "--length", "12", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("the ") and len(out) == len("the ") + 12 + 1


# -- a model too small for the text's vocabulary is refused before training ----------------

@pytest.mark.parametrize("layers, fragment", [
    ([{"name": "lm", "type": "table_lm", "vocab": 3}],
     "but layer 'lm' takes ids 0 .. 2 only; give it a vocabulary of 5"),
    ([{"name": "lm", "type": "table_lm", "vocab": 5}, {"type": "dense", "units": 4}],
     "but the model outputs 4 scores per position; make its last layer 5 wide"),
])
def test_fit_refuses_a_model_smaller_than_the_vocabulary(tmp_path, registry, layers, fragment):
    from layerkit.errors import DataError
    from layerkit.training.runs import train

    text = tmp_path / "t.txt"
    text.write_text("abcde" * 40)
    model = dict(lm_dict(), layers=layers, training={"dataset": "text", "data": {"data_dir": str(text)}})
    with pytest.raises(DataError, match=f"t.txt has 5 tokens \\(char vocabulary\\), {fragment}"):
        train(model, out=tmp_path / "run", registry=registry)
    assert not (tmp_path / "run").exists()
