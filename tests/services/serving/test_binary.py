"""The binary tensor data extension's per-tensor declaration, read strictly."""

import pytest

from services.serving.binary import binary_size
from services.serving.errors import BadRequestError


def test_a_tensor_declares_its_binary_size_or_none():
    assert binary_size({"name": "images"}, "inputs[0]") is None  # its data is JSON
    assert binary_size({"parameters": {"binary_data_size": 12}}, "inputs[0]") == 12


def test_parameters_that_are_not_an_object_are_named():
    with pytest.raises(BadRequestError, match=r"inputs\[0\]\.parameters must be an object"):
        binary_size({"parameters": [1]}, "inputs[0]")
