"""What a prediction request asks for, checked before any model sees it (``inputs``, pure):
numbers float32 cannot hold are refused by name, whatever way they arrive."""

import json
import struct

import numpy as np
import pytest

from services.serving.errors import BadRequestError
from services.serving.inputs import v1_inputs, v2_inputs

ZEROS = [[0.0] * 28 for _ in range(28)]


def _image_with(value, at=(3, 5)):
    image = [row[:] for row in ZEROS]
    image[at[0]][at[1]] = value
    return image


@pytest.mark.parametrize("value", [1e39, -1e39, 3.5e38])
def test_a_v1_number_beyond_float32_is_refused_naming_where_and_what(value):
    with pytest.raises(BadRequestError) as refused:
        v1_inputs({"instances": [ZEROS, _image_with(value)]})
    message = str(refused.value)
    assert message.startswith("instances[1][3][5]: ")
    assert repr(value) in message and "out of float32's range" in message


@pytest.mark.parametrize("literal,shown", [("NaN", "not a number"), ("Infinity", "inf"),
                                           ("-Infinity", "-inf"), ("1e999", "inf")])
def test_v1_nan_and_infinity_which_python_s_json_parses_are_refused(literal, shown):
    """``json.loads`` accepts NaN, Infinity and numbers too large for a double (as inf)."""
    text = json.dumps({"instances": [_image_with(0.25, at=(0, 1))]}).replace("0.25", literal)
    with pytest.raises(BadRequestError, match=r"^instances\[0\]\[0\]\[1\]: ") as refused:
        v1_inputs(json.loads(text))
    assert shown in str(refused.value)


def test_the_largest_float32_and_plain_pixels_pass():
    biggest = float(np.finfo(np.float32).max)
    kind, images = v1_inputs({"instances": [_image_with(biggest), _image_with(255)]})
    assert kind == "arrays" and images.shape == (2, 28, 28) and np.isfinite(images).all()


def test_a_v2_json_number_beyond_float32_is_refused_naming_its_element():
    data = [0.0] * 1568
    data[900] = 1e39
    with pytest.raises(BadRequestError) as refused:
        v2_inputs({"inputs": [{"name": "images", "shape": [2, 28, 28], "datatype": "FP32",
                               "data": data}]})
    assert str(refused.value).startswith("inputs[0].data element 900: 1e+39 is out of float32's")


def test_v2_nested_json_data_names_the_element_row_major():
    data = np.zeros((1, 28, 28)).tolist()
    data[0][1][2] = float("nan")
    with pytest.raises(BadRequestError, match=r"inputs\[0\]\.data element 30: not a number"):
        v2_inputs({"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "FP32",
                               "data": data}]})


@pytest.mark.parametrize("datatype,value,shown", [
    ("FP64", 1e39, "1e+39 is out of float32's range"),
    ("FP32", float("inf"), "inf is out of float32's range"),
    ("FP32", float("nan"), "not a number"),
    ("FP64", float("-inf"), "-inf is out of float32's range"),
])
def test_v2_binary_data_beyond_float32_is_refused(datatype, value, shown):
    dtype = {"FP32": "<f4", "FP64": "<f8"}[datatype]
    values = np.zeros(784, dtype)
    values[7] = value
    raw = values.tobytes()
    body = {"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": datatype,
                        "parameters": {"binary_data_size": len(raw)}}]}
    with pytest.raises(BadRequestError) as refused:
        v2_inputs(body, memoryview(raw))
    assert str(refused.value) == f"inputs[0] element 7: {shown}" + (
        "" if "not a number" in shown else " (its largest is 3.4e+38)")


def test_v2_integer_data_is_never_out_of_range():
    raw = struct.pack("<784q", *([2**62] + [0] * 783))
    body = {"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "INT64",
                        "parameters": {"binary_data_size": len(raw)}}]}
    kind, images = v2_inputs(body, memoryview(raw))
    assert kind == "arrays" and np.isfinite(images).all()
