import json

import numpy as np
import pytest
import torch

from diffuser.datasets.normalization import (
    GaussianNormalizer,
    MinMaxNormalizer,
    make_normalizers,
    normalizer_from_state_dict,
)

RNG = np.random.default_rng(0)
DATA = (RNG.normal(size=(500, 3)) * [1.0, 10.0, 0.01] + [0.0, -5.0, 3.0]).astype(np.float32)


def fitted(kind: str):
    if kind == "gaussian":
        return GaussianNormalizer(DATA.mean(axis=0, dtype=np.float64), DATA.std(axis=0, dtype=np.float64))
    return MinMaxNormalizer(DATA.min(axis=0), DATA.max(axis=0))


@pytest.mark.parametrize("kind", ["gaussian", "minmax"])
def test_round_trip_on_numpy_and_torch_with_leading_dims(kind):
    normalizer = fitted(kind)
    x = DATA[:24].reshape(2, 4, 3, 3)
    back = normalizer.unnormalize(normalizer.normalize(x))
    assert isinstance(back, np.ndarray) and back.shape == x.shape
    np.testing.assert_allclose(back, x, rtol=1e-5, atol=1e-5)

    for dtype in (torch.float32, torch.float64):
        t = torch.as_tensor(x, dtype=dtype)
        normalized = normalizer.normalize(t)
        assert normalized.dtype == dtype and normalized.shape == t.shape
        assert not torch.allclose(normalized, t)
        torch.testing.assert_close(normalizer.unnormalize(normalized), t, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(normalized.numpy(), normalizer.normalize(x), rtol=1e-5, atol=1e-6)


def test_gaussian_gives_zero_mean_unit_std_and_minmax_spans_minus_one_to_one():
    z = fitted("gaussian").normalize(DATA)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=0), 1.0, atol=1e-4)
    m = fitted("minmax").normalize(DATA)
    np.testing.assert_allclose(m.min(axis=0), -1.0, atol=1e-6)
    np.testing.assert_allclose(m.max(axis=0), 1.0, atol=1e-6)


def test_constant_dimensions_map_to_zero_without_blowing_up():
    data = np.array([[1.0, 2.0], [3.0, 2.0], [5.0, 2.0]], dtype=np.float32)
    gaussian = GaussianNormalizer(data.mean(axis=0), data.std(axis=0))
    minmax = MinMaxNormalizer(data.min(axis=0), data.max(axis=0))
    for normalizer in (gaussian, minmax):
        normalized = normalizer.normalize(data)
        np.testing.assert_array_equal(normalized[:, 1], 0.0)
        # A value off the constant at evaluation stays on the scale of the raw difference.
        assert abs(normalizer.normalize(np.array([3.0, 2.5], dtype=np.float32))[1]) <= 0.5 + 1e-6
        np.testing.assert_allclose(normalizer.unnormalize(normalized), data, atol=1e-6)


@pytest.mark.parametrize("kind", ["gaussian", "minmax"])
def test_state_dict_round_trip_is_plain_and_exact(kind, tmp_path):
    normalizer = fitted(kind)
    state = normalizer.state_dict()
    assert state["kind"] == kind
    restored_json = normalizer_from_state_dict(json.loads(json.dumps(state)))
    torch.save({"normalizer": state}, tmp_path / "state.pt")
    restored_torch = normalizer_from_state_dict(
        torch.load(tmp_path / "state.pt", weights_only=True)["normalizer"]
    )
    for restored in (restored_json, restored_torch, type(normalizer).from_state_dict(state)):
        assert type(restored) is type(normalizer)
        np.testing.assert_array_equal(restored.normalize(DATA), normalizer.normalize(DATA))


def test_state_dict_of_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="kind"):
        normalizer_from_state_dict({"kind": "robust", "mean": [0.0], "std": [1.0]})
    with pytest.raises(ValueError, match="MinMaxNormalizer"):
        MinMaxNormalizer.from_state_dict(fitted("gaussian").state_dict())


def test_wrong_last_dimension_is_rejected():
    with pytest.raises(ValueError, match="3-dimensional"):
        fitted("gaussian").normalize(np.zeros((2, 4), dtype=np.float32))


def _metadata(action_low, action_high):
    actions = RNG.uniform(-0.5, 0.25, size=(100, 2))
    return {
        "name": "synthetic",
        "action_low": action_low,
        "action_high": action_high,
        "stats": {
            "observations": {
                "mean": DATA.mean(axis=0, dtype=np.float64).tolist(),
                "std": DATA.std(axis=0, dtype=np.float64).tolist(),
                "min": DATA.min(axis=0).tolist(),
                "max": DATA.max(axis=0).tolist(),
            },
            "actions": {
                "mean": actions.mean(axis=0).tolist(),
                "std": actions.std(axis=0).tolist(),
                "min": actions.min(axis=0).tolist(),
                "max": actions.max(axis=0).tolist(),
            },
        },
    }


@pytest.mark.parametrize("kind", ["gaussian", "minmax"])
def test_make_normalizers_scales_actions_from_their_bounds_not_the_data(kind):
    normalizers = make_normalizers(_metadata([-2.0, 0.0], [2.0, 1.0]), kind)
    assert normalizers["observations"].kind == kind
    np.testing.assert_allclose(
        normalizers["observations"].normalize(DATA), fitted(kind).normalize(DATA), atol=1e-6
    )
    bounds = np.array([[-2.0, 0.0], [2.0, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(normalizers["actions"].normalize(bounds), [[-1.0, -1.0], [1.0, 1.0]])


def test_unbounded_action_dimensions_fall_back_to_the_data_range():
    metadata = _metadata([-1.0, float("-inf")], [1.0, float("inf")])
    normalizer = make_normalizers(metadata, "gaussian")["actions"]
    stats = metadata["stats"]["actions"]
    edges = np.array([[-1.0, stats["min"][1]], [1.0, stats["max"][1]]], dtype=np.float32)
    np.testing.assert_allclose(normalizer.normalize(edges), [[-1.0, -1.0], [1.0, 1.0]], atol=1e-6)


def test_unknown_observation_normalizer_names_the_config_key():
    with pytest.raises(ValueError, match="`normalizer`"):
        make_normalizers(_metadata([-1.0, -1.0], [1.0, 1.0]), "zscore")
