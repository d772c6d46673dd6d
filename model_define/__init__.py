"""The model zoo. Importing this package registers every model (see registry.register)."""
from model_define import (  # noqa: F401
    classic,
    mobilefacenet,
    mobilenet,
    resnet_cifar,
    resnet_ir,
    small,  # noqa: F401  (registers models)
)
from model_define.registry import ModelSpec, get_model, list_models, model_spec, register  # noqa: F401
