"""A small residual CNN with BatchNorm: the kind of network whose skip connections and normalisation layers the
graph bound engine (bounds/engine.py) exists for.

ResNet: Normalize -> Conv 3x3 -> BN -> ReLU -> ResidualBlock(c1 -> c1) -> ResidualBlock(c1 -> c2, stride 2)
-> AdaptiveAvgPool2d(pooled) -> Flatten -> Linear(., hidden) -> ReLU -> Linear(hidden, num_classes).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .mlp import Normalize

__all__ = ["ResNet", "ResidualBlock"]


class ResidualBlock(nn.Module):
    """ReLU(BN(conv(ReLU(BN(conv(h))))) + skip(h)); skip is the identity, or a 1x1 conv + BN when the shape changes.

    Shapes: (N, c_in, H, W) -> (N, c_out, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.skip = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
        self.relu2 = nn.ReLU()

    def forward(self, h: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(h)))))
        return self.relu2(out + self.skip(h))


class ResNet(nn.Module):
    """Two residual blocks with BatchNorm (see the module docstring).

    Args:
        input_shape: (C, H, W) of one example.
        num_classes: number of logits.
        mean: input normalisation (scalar or per channel), in the data's scale.
        std: its standard deviation, in the same form as mean.
        channels: (c1, c2) channels of the stem/first block and of the second (stride-2) block.
        hidden: width of the hidden Linear layer.
        pooled: side of the adaptive average pooling's output grid.

    Shapes: x (N, C, H, W) -> logits (N, num_classes).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        mean: float | Sequence[float] = 0.0,
        std: float | Sequence[float] = 1.0,
        channels: Sequence[int] = (8, 16),
        hidden: int = 64,
        pooled: int = 4,
    ) -> None:
        super().__init__()
        shape = tuple(int(d) for d in input_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"resnet needs image inputs of shape (C, H, W), got {list(shape)}")
        if len(channels) != 2 or min(int(k) for k in channels) < 1 or hidden < 1 or pooled < 1 or num_classes < 2:
            raise ValueError(
                f"resnet needs two positive channel counts, hidden >= 1, pooled >= 1 and num_classes >= 2, got "
                f"channels={list(channels)}, hidden={hidden}, pooled={pooled}, num_classes={num_classes}"
            )
        c1, c2 = (int(k) for k in channels)
        self.normalize = Normalize(mean, std)
        self.stem = nn.Sequential(nn.Conv2d(shape[0], c1, 3, padding=1, bias=False), nn.BatchNorm2d(c1), nn.ReLU())
        self.block1 = ResidualBlock(c1, c1)
        self.block2 = ResidualBlock(c1, c2, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(int(pooled))
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(c2 * pooled * pooled, int(hidden)), nn.ReLU(), nn.Linear(int(hidden), num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.block2(self.block1(self.stem(self.normalize(x))))))
