"""The one exception type for a user's mistake: the CLI prints its message on one line and exits non-zero."""

import importlib


class UserError(ValueError):
    """Bad input from a user (a name, a path, a file, a size). The message names the problem and the fix."""

    exit_code = 2


# The pip name of each optional dependency and the extra of this package that installs it.
OPTIONAL = {
    "onnx": ("onnx", "onnx"), "onnxruntime": ("onnxruntime", "onnx"), "onnxscript": ("onnxscript", "onnx"),
    "openvino": ("openvino", "openvino"), "starlette": ("starlette", "serve"), "uvicorn": ("uvicorn", "serve"),
    "h5py": ("h5py", "keras"), "pycocotools": ("pycocotools", "detect"), "huggingface_hub": ("huggingface_hub", "hf"),
    "tensorboard": ("tensorboard", "tensorboard"), "mlperf_loadgen": ("mlcommons-loadgen", "loadgen"),
    "ray": ("'ray[data]'", "ray"), "pyarrow": ("pyarrow", "ray"),
}


def require(module: str, purpose: str):
    """Import the optional dependency ``module``, or raise a one-line UserError naming the pip package and the
    extra of this package that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        pip, extra = OPTIONAL.get(top, (top, "all"))
        raise UserError(f"{purpose} needs the optional dependency {top!r}: pip install {pip} "
                        f"(or the extra: pip install 'resnet50[{extra}]')") from None
