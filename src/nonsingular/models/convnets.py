"""Convolutional networks beside the MLP.

Both networks are plain `nn.Sequential`s of Normalize, Conv2d, ReLU, pooling, Flatten and Linear, so every
bound that follows a Sequential (IBP: all of these layers) and every attack path applies to them. Under a
per-example weight threat their convolutions take the explicit path (Lemma 1 does not hold for a kernel
applied at many positions, THEORY.md section 3) and their Linear layers the Lemma 1 path.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .mlp import Normalize

__all__ = ["LeNet", "SmallCNN"]


def _image_shape(input_shape: Sequence[int], arch: str) -> tuple[int, int, int]:
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{arch} needs image inputs of shape (C, H, W), got {list(shape)}")
    return shape  # type: ignore[return-value]


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class SmallCNN(nn.Sequential):
    """Normalize -> Conv(C, c1, 3, pad 1) -> ReLU -> Conv(c1, c2, 3, stride 2, pad 1) -> ReLU -> Flatten
    -> Linear(., hidden) -> ReLU -> Linear(hidden, num_classes).

    Downsampling is a stride-2 convolution rather than pooling, so the network is only Linear/Conv/ReLU
    layers: the kind every bound in the package covers and the smallest conv net that still has a
    convolution applied at many positions (the case Lemma 1 does not cover).

    Args:
        input_shape: (C, H, W) of one example, e.g. (1, 28, 28).
        num_classes: number of logits.
        mean: input normalisation (scalar or per channel), in the data's scale.
        std: its standard deviation, in the same form as mean.
        channels: (c1, c2) output channels of the two convolutions.
        hidden: width of the hidden Linear layer.

    Shapes: x (N, C, H, W) -> logits (N, num_classes).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        mean: float | Sequence[float] = 0.0,
        std: float | Sequence[float] = 1.0,
        channels: Sequence[int] = (16, 32),
        hidden: int = 100,
    ) -> None:
        c, h, w = _image_shape(input_shape, "cnn")
        if len(channels) != 2 or min(int(k) for k in channels) < 1 or hidden < 1 or num_classes < 2:
            raise ValueError(
                f"cnn needs two positive channel counts, hidden >= 1 and num_classes >= 2, "
                f"got channels={list(channels)}, hidden={hidden}, num_classes={num_classes}"
            )
        c1, c2 = (int(k) for k in channels)
        h2, w2 = _conv_out(h, 3, 2, 1), _conv_out(w, 3, 2, 1)
        super().__init__(
            Normalize(mean, std),
            nn.Conv2d(c, c1, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(c2 * h2 * w2, int(hidden)),
            nn.ReLU(),
            nn.Linear(int(hidden), num_classes),
        )


_POOLS = ("avg", "max", "stride")


class LeNet(nn.Sequential):
    """LeNet-5 style: Normalize -> [Conv 5x5 (pad 2) -> ReLU -> 2x2 downsample] x 2 -> Flatten
    -> Linear -> ReLU -> Linear -> ReLU -> Linear.

    Padding 2 keeps every convolution "same"-sized, so the network fits 8x8 digits as well as 28x28 MNIST and
    32x32 CIFAR (28x28 gives 16 x 7 x 7 features before the first Linear layer).

    Args:
        input_shape: (C, H, W) of one example.
        num_classes: number of logits.
        mean: input normalisation (scalar or per channel).
        std: its standard deviation, in the same form as mean.
        channels: output channels of the two convolutions (LeNet-5: 6, 16).
        hidden: widths of the two hidden Linear layers (LeNet-5: 120, 84).
        pool: "avg" (LeNet-5's subsampling; a linear map), "max", or "stride" (a stride-2 convolution instead
            of a pooling layer, for tools that handle only Conv/Linear/ReLU). IBP covers all three.

    Shapes: x (N, C, H, W) -> logits (N, num_classes).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        mean: float | Sequence[float] = 0.0,
        std: float | Sequence[float] = 1.0,
        channels: Sequence[int] = (6, 16),
        hidden: Sequence[int] = (120, 84),
        pool: str = "avg",
    ) -> None:
        c, h, w = _image_shape(input_shape, "lenet")
        if pool not in _POOLS:
            raise ValueError(f"lenet pool must be one of {list(_POOLS)}, got {pool!r}")
        if len(channels) != 2 or len(hidden) != 2 or min(*channels, *hidden) < 1 or num_classes < 2:
            raise ValueError(
                f"lenet needs two positive channel counts, two positive hidden widths and num_classes >= 2, "
                f"got channels={list(channels)}, hidden={list(hidden)}, num_classes={num_classes}"
            )
        layers: list[nn.Module] = [Normalize(mean, std)]
        for c_out in (int(k) for k in channels):
            if pool == "stride":
                layers += [nn.Conv2d(c, c_out, 5, stride=2, padding=2), nn.ReLU()]
                h, w = _conv_out(h, 5, 2, 2), _conv_out(w, 5, 2, 2)
            else:
                down = nn.AvgPool2d(2) if pool == "avg" else nn.MaxPool2d(2)
                layers += [nn.Conv2d(c, c_out, 5, padding=2), nn.ReLU(), down]
                h, w = h // 2, w // 2
            if h < 1 or w < 1:
                raise ValueError(f"lenet: input of shape {list(input_shape)} is too small for two 2x downsamplings")
            c = c_out
        n_in = c * h * w
        layers.append(nn.Flatten())
        for width in (int(k) for k in hidden):
            layers += [nn.Linear(n_in, width), nn.ReLU()]
            n_in = width
        layers.append(nn.Linear(n_in, num_classes))
        super().__init__(*layers)
