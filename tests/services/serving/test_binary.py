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


def test_answers_are_written_as_the_shortest_decimals_of_their_float32_values():
    import json

    import numpy as np

    from services.serving.binary import json_bytes

    rng = np.random.default_rng(3)
    batch = rng.random((4, 10), dtype=np.float32)
    batch[0, 0] = np.float32(0.1)
    rows = batch[1:3]  # a slice of a batch, as each request gets its own rows
    every_other = batch[:, ::2]  # not C-ordered: written all the same
    text = json_bytes({"predictions": rows, "odd": every_other, "model_version": "7"})
    read = json.loads(text)
    assert read["model_version"] == "7"
    assert np.array_equal(np.array(read["predictions"], np.float32), rows)  # exact, as float32
    assert np.array_equal(np.array(read["odd"], np.float32), every_other)
    assert b"0.1," in json_bytes({"p": batch[0]})  # not 0.10000000149011612
