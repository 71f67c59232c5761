# tests/test_my_layers.py: shape, schema, dtype and gradient tests for every layer and example
from layerkit.testing import layer_conformance_tests
test_conformance = layer_conformance_tests(plugin="my_layers")


# the first release's pytest-plugin fixtures and marker (its docs/plugins.md)
import pytest

@pytest.mark.layerkit_plugin("my-layers")
def test_my_layers(layer_case, layer_test):
    layer_test(layer_case.layer_type, layer_case.config, layer_case.input_shape)
