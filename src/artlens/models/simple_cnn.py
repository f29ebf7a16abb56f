"""The seed projects' baseline CNN, trained from scratch: two conv layers with ReLU and max pooling,
then a linear layer.

In artlens the linear layer is the task head (`artlens.models.heads`), so the backbone ends at the
conv stack: its features are the flattened output of the second conv block. An adaptive average pool
to a fixed 8x8 grid first makes the feature size (64 * 8 * 8 = 4096) independent of the input size;
at the default 128 px input it averages 4x4 cells of the 32x32 map.
"""

from __future__ import annotations

from torch import nn

FEATURE_GRID = 8


class SimpleCNN(nn.Module):
    """conv3x3(3->c1) ReLU maxpool2 -> conv3x3(c1->c2) ReLU maxpool2 -> avgpool(8x8) -> flatten.

    `num_classes` > 0 adds the seed's linear classifier (`fc`); 0 returns the features."""

    def __init__(self, channels: tuple[int, int] = (32, 64), num_classes: int = 0):
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(3, c1, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, kernel_size=3, padding=1),
            nn.ReLU(),  # not in-place: Grad-CAM hooks this layer ("features.4")
            nn.MaxPool2d(2),
        )
        self.pool = nn.AdaptiveAvgPool2d(FEATURE_GRID)
        self.flatten = nn.Flatten(1)
        self.num_features = c2 * FEATURE_GRID * FEATURE_GRID
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.features(x))))
