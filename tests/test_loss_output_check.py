"""``validate`` checks the loss against the model's output before any data is read (issue 19, item 4)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import shipped_model_files
from layerkit.cli import main
from layerkit.errors import DataError, ShapeError
from layerkit.modelfile.build import build_graph_from
from layerkit.plugins.manager import get_registry

# the most common beginner mistake: no flatten before the classifier's dense layer
BEGINNER_CNN = {
    "format": 1, "input": {"shape": [1, 28, 28]},
    "layers": [{"type": "conv2d", "filters": 8, "kernel_size": 3}, {"type": "relu"},
               {"type": "max_pool2d", "pool_size": 2}, {"type": "dense", "units": 10}],
    "loss": {"type": "softmax_cross_entropy"},
    "training": {"dataset": "mnist", "epochs": 1},
}


def test_the_beginner_cnn_fails_validate_at_the_last_layer_with_the_fix(write_model, capsys):
    path = write_model(BEGINNER_CNN)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1, err
    assert f"{path}: layers[3]: 'dense_3' (dense) gives the output (8, 13, 10)" in err
    assert "softmax_cross_entropy needs a flat output" in err
    assert 'add {"type": "flatten"} before \'dense_3\' (dense) (layers[3])' in err


def test_fit_reports_the_same_error_before_reading_data(write_model, tmp_path, capsys):
    path = write_model(BEGINNER_CNN)
    assert main(["validate", str(path)]) == 2
    expected = capsys.readouterr().err
    # no such data folder: an error about the data would mean the data was read first
    assert main(["fit", str(path), "--data-dir", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "model.json: layers[3]: " in err
    assert err.split("layers[3]: ")[1] == expected.split("layers[3]: ")[1]


def test_with_the_flatten_it_validates_and_without_a_dense_no_flatten_is_suggested():
    fixed = {**BEGINNER_CNN, "layers": [*BEGINNER_CNN["layers"][:3], {"type": "flatten"},
                                        BEGINNER_CNN["layers"][3]]}
    assert build_graph_from(fixed).output.output_shape == (10,)
    no_dense = {**BEGINNER_CNN, "layers": BEGINNER_CNN["layers"][:3]}
    with pytest.raises(ShapeError) as info:
        build_graph_from(no_dense)
    assert "max_pool2d_2" in str(info.value) and "flatten" not in str(info.value)


def test_an_elementwise_loss_takes_a_feature_map_but_not_weights_of_the_wrong_size():
    mse = {**BEGINNER_CNN, "loss": {"type": "mse"}}
    assert build_graph_from(mse).output.output_shape == (8, 13, 10)
    weighted = {**mse, "loss": {"type": "binary_cross_entropy", "weight": [1.0] * 10}}
    with pytest.raises(ShapeError, match="weight entries"):
        build_graph_from(weighted)


@pytest.mark.parametrize("path", shipped_model_files(), ids=lambda p: p.stem)
def test_every_shipped_model_passes_the_loss_check(path):
    build_graph_from(path)


@pytest.mark.parametrize("loss_type", sorted(get_registry().entries["loss"]))
@pytest.mark.parametrize("shape", [(4,), (1,), (2, 4), (3, 2, 2)])
def test_output_problem_is_what_forward_finds(loss_type, shape):
    # the static claim and the run-time behaviour agree: a shape the check lets through trains,
    # a shape it refuses fails in forward on any target
    loss = get_registry().get("loss", loss_type)()
    problem = loss.output_problem(shape)
    rng = np.random.default_rng(0)
    out = rng.uniform(0.1, 0.9, size=(3, *shape))
    # class ids per sample, rows like the output, and class ids per position (a sequence loss)
    targets = [rng.integers(0, shape[-1], size=3), rng.uniform(0.1, 0.9, size=(3, *shape)),
               rng.integers(0, shape[-1], size=(3, *shape[:-1]))]
    ok = []
    for target in targets:
        try:
            loss.forward(out, target)
            ok.append(True)
        except DataError:
            ok.append(False)
    assert (problem is None) == any(ok), (problem, ok)


@pytest.mark.parametrize("loss_type", ["softmax_cross_entropy", "nll", "multiclass_hinge"])
def test_class_weights_of_the_wrong_length_are_refused_statically(loss_type):
    loss = get_registry().get("loss", loss_type)(class_weights=[1.0, 2.0])
    assert loss.output_problem((2,)) is None
    assert "class_weights has 2 entries for 3 outputs" == loss.output_problem((3,))
