"""The networks of the seed documents, as their authors wrote them."""

from __future__ import annotations

from torch import nn


class FashionNet(nn.Module):
    """Seed 003's Fashion-MNIST network: two conv+BN+ReLU blocks with max-pooling, two linears."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3, stride=1, padding=1)
        self.bn1 = nn.BatchNorm2d(32)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, stride=1, padding=1)
        self.bn2 = nn.BatchNorm2d(64)
        self.relu2 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(7 * 7 * 64, 512)
        self.relu3 = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(512, 10)

    def forward(self, x):
        x = self.maxpool(self.relu1(self.bn1(self.conv1(x))))
        x = self.maxpool(self.relu2(self.bn2(self.conv2(x))))
        x = x.view(-1, 7 * 7 * 64)
        return self.fc2(self.relu3(self.fc1(x)))
