"""Cross-framework parity: Keras 3 (torch backend) keras.applications.ResNet50 against our imported v1 model."""

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")  # a test dependency (pip install -e '.[test]'); CI installs it
from keras.src.legacy.saving import legacy_h5_format  # noqa: E402

from resnet50 import weights  # noqa: E402


@pytest.fixture(scope="module")
def keras_model():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    m = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classifier_activation=None)
    for layer in m.layers:  # random BN parameters and statistics, not the identity they start as
        if layer.__class__.__name__ == "BatchNormalization":
            n = layer.get_weights()[0].shape
            # A block's last BN gets small scales, as in trained ResNets: otherwise the variance doubles at every
            # residual addition and the logits reach ~1e2, where float32 rounding alone is ~1e-4.
            lo, hi = (0.1, 0.3) if layer.name.endswith("_3_bn") else (0.5, 1.5)
            layer.set_weights([rng.uniform(lo, hi, n).astype("f4"), rng.normal(0, 0.1, n).astype("f4"),
                               rng.normal(0, 0.1, n).astype("f4"), rng.uniform(0.5, 1.5, n).astype("f4")])
    return m


@pytest.mark.parametrize("layout", ["keras3", "legacy"])
def test_keras_resnet50_parity(tmp_path, keras_model, layout):
    import h5py

    if layout == "keras3":
        path = tmp_path / "resnet50.weights.h5"
        keras_model.save_weights(path)
    else:  # the Keras 2 layout of the published keras.applications files
        path = tmp_path / "resnet50.h5"
        with h5py.File(path, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, keras_model)
    ck = weights.load(path)
    cfg = ck.config
    assert (ck.arch, cfg.variant, cfg.conv_bias, cfg.bn_eps, cfg.num_classes) == ("resnet50", "v1", True, 1.001e-5, 1000)

    rng = np.random.default_rng(1)
    rgb = rng.uniform(0, 255, (2, 64, 64, 3)).astype("f4")
    # Keras' own preprocessing ("caffe": RGB -> BGR, subtract the means) and forward pass
    x_keras = keras.applications.resnet50.preprocess_input(rgb.copy())
    ref = keras.ops.convert_to_numpy(keras_model(x_keras, training=False))
    # ours: RGB in 0..1, normalised with the preprocessing stored by the importer
    mean = torch.tensor(ck.preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(ck.preprocessing.std).view(1, 3, 1, 1)
    x = (torch.from_numpy(rgb).permute(0, 3, 1, 2) / 255 - mean) / std
    with torch.no_grad():
        out = ck.model.eval()(x).numpy()
    assert np.abs(ref).max() > 1  # the comparison is not between two near-zero outputs
    assert np.abs(out - ref).max() <= 1e-4


def test_keras_file_errors(tmp_path):
    import h5py

    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_group("layers").create_group("dense").create_group("vars").create_dataset("0", data=np.zeros(3))
    with pytest.raises(weights.UserError, match="not keras.applications ResNet"):
        weights.load(tmp_path / "other.h5")
    (tmp_path / "junk.h5").write_bytes(b"\x89HDF junk")
    with pytest.raises(weights.UserError, match="not a readable HDF5 file"):
        weights.load(tmp_path / "junk.h5")
