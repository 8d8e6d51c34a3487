"""The model zoo and how models come in: architectures by name, checkpoints, and the user's own modules.

Owns the built-in architectures (`mlp`: MLP and the `Normalize` input layer; `convnets`: LeNet, SmallCNN;
`resnet`), the name -> factory registry (`architectures`), safetensors checkpoints (`checkpoint`) and loading a
user's Python factory with its weights (`user_models`). Every model is a plain `nn.Module` taking inputs in
the data's scale, normalisation inside. May import the vocabulary (`errors`) and `runtime`; nothing above.
"""

from .architectures import ARCHITECTURES, build_model, register_architecture
from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from .convnets import LeNet, SmallCNN
from .mlp import MLP, Normalize
from .resnet import ResidualBlock, ResNet
from .user_models import load_user_model, load_weights

__all__ = [
    "ARCHITECTURES",
    "MLP",
    "Checkpoint",
    "CheckpointError",
    "LeNet",
    "Normalize",
    "ResNet",
    "ResidualBlock",
    "SmallCNN",
    "build_model",
    "load_checkpoint",
    "load_user_model",
    "load_weights",
    "register_architecture",
    "save_checkpoint",
]
