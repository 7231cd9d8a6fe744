"""A small NNI model space for the end-to-end test (3 x 2 = 6 candidates, fast to freeze)."""

import torch.nn as nn
from nni.nas.nn.pytorch import LayerChoice, ModelSpace


class TinySpace(ModelSpace):
    def __init__(self, num_labels: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.block = LayerChoice([
            nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()),
            nn.Sequential(nn.Conv2d(16, 16, 5, padding=2, bias=False), nn.BatchNorm2d(16), nn.ReLU()),
            nn.Identity(),
        ], label="block")
        self.down = LayerChoice([nn.MaxPool2d(2), nn.Conv2d(16, 16, 3, stride=2, padding=1)], label="down")
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_labels))

    def forward(self, x):
        return self.head(self.down(self.block(self.stem(x))))
