"""Small models written for the tests: each covers IR features the zoo may not."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBnRelu(nn.Module):
    """conv -> bn -> relu, the pattern every CNN starts with."""

    def __init__(self, cin=3, cout=8):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class Mixed(nn.Module):
    """Functionals, methods, shapes as values, x + x, a parameter read directly, a tuple output."""

    def __init__(self):
        super().__init__()
        self.stem = ConvBnRelu(3, 8)
        self.branch = nn.Conv2d(8, 8, 1)
        self.scale = nn.Parameter(torch.full((1, 8, 1, 1), 0.5))
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        y = self.stem(x)
        z = F.relu(self.branch(y))
        s = y + y
        t = torch.cat([s, z * self.scale], dim=1)
        pooled = F.adaptive_avg_pool2d(t, 1)
        flat = pooled.view(pooled.size(0), -1)
        return self.fc(flat), flat.mean(dim=1)


def randomize_batch_norm(model: nn.Module) -> nn.Module:
    """Give every BatchNorm non-trivial statistics, so folding is really tested."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                if m.affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.2, 0.2)
    return model.eval()


class PatchTransformer(nn.Module):
    """A small encoder classifier; torch.fx cannot trace nn.TransformerEncoder, torch.export can."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(16, 48)
        layer = nn.TransformerEncoderLayer(48, 4, 96, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(48, 10)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)).mean(1))


class AttentionBlock(nn.Module):
    """A pre-norm attention + MLP block written with nn modules, as torch.fx traces it."""

    def __init__(self, width: int = 32, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.softmax = nn.Softmax(dim=-1)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, x):
        n, t, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attention = self.softmax(q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5)
        x = x + self.proj((attention @ v).transpose(1, 2).reshape(n, t, c))
        return x + self.mlp(self.norm2(x))


class TokensAndFeatures(nn.Module):
    """Token ids [N, S] (any length) beside a feature vector [N, 6] (fixed): dynamic axes per input.

    The feature branch is called ``branch``: by default ``meta``, a name
    torch.fx's GraphModule keeps for itself.
    """

    def __init__(self, branch: str = "meta"):
        super().__init__()
        self.tokens = nn.Embedding(100, 16)
        self.branch = branch
        setattr(self, branch, nn.Linear(6, 16))
        self.head = nn.Linear(16, 3)

    def forward(self, ids, features):
        return self.head(torch.relu(self.tokens(ids).mean(1) + getattr(self, self.branch)(features)))


class TwoLengths(nn.Module):
    """Source and target token ids whose lengths vary independently."""

    def __init__(self):
        super().__init__()
        self.tokens = nn.Embedding(100, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, source, target):
        return self.head(self.tokens(source).mean(1) - self.tokens(target).mean(1))


class RecurrentStates(nn.Module):
    """A bidirectional 2-layer LSTM, then a GRU; the head reads their outputs and their last states."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(8, 16, batch_first=True, num_layers=2, bidirectional=True)
        self.gru = nn.GRU(32, 16, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        out, (h, c) = self.lstm(x)
        out, last = self.gru(out)
        return self.head(out + h[-1:].transpose(0, 1) + c[-1:].transpose(0, 1) + last.transpose(0, 1))


class TokenClassifier(nn.Module):
    """A text classifier over token ids: token and position embeddings, a transformer encoder, a head."""

    def __init__(self, vocabulary: int = 100, width: int = 32, longest: int = 64):
        super().__init__()
        self.tokens = nn.Embedding(vocabulary, width)
        self.positions = nn.Embedding(longest, width)
        layer = nn.TransformerEncoderLayer(width, 4, 2 * width, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(width, 3)

    def forward(self, ids):
        positions = torch.arange(ids.shape[1], device=ids.device)
        return self.head(self.encoder(self.tokens(ids) + self.positions(positions)).mean(1))


class FixedLengthTagger(nn.Module):
    """Per-token tags, with a learned position table of one fixed length: the sequence cannot vary."""

    def __init__(self, length: int = 12, width: int = 16):
        super().__init__()
        self.position = nn.Parameter(torch.randn(1, length, width))
        self.tag = nn.Linear(width, 5)

    def forward(self, x):
        return self.tag(x + self.position)


class TwoInputsTwoHeads(nn.Module):
    """Two inputs (an image and a per-sample scale) and two outputs (class logits, scaled box)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.cls = nn.Linear(8, 5)
        self.box = nn.Linear(8, 4)

    def forward(self, x, scale):
        features = self.body(x)
        return self.cls(features), self.box(features) * scale


class RowLSTM(nn.Module):
    """Reads a 28x28 image row by row (28 steps of 28 pixels) with an LSTM: class scores from the last step,
    ``[N, 10]``, or a tag for every row, ``[N, 28, 10]`` (``tag_rows``)."""

    def __init__(self, hidden: int = 64, tag_rows: bool = False):
        super().__init__()
        self.lstm = nn.LSTM(28, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 10)
        self.tag_rows = tag_rows

    def forward(self, x):
        steps = self.lstm(x)[0]
        return self.head(steps if self.tag_rows else steps[:, -1])


def fashion_rows(split: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` Fashion-MNIST images of ``split`` as ``[N, 28, 28]`` rows in [0, 1], and their labels."""
    from qcompile.data.builtin import fashion_mnist

    images, labels = fashion_mnist(split)
    return images[:count].squeeze(1).float() / 255, labels[:count]


def fit_on_fashion_rows(model: RowLSTM, count: int, epochs: int) -> RowLSTM:
    """Train ``model`` with Adam (lr 3e-3, batches of 64) on ``count`` Fashion-MNIST training images, the
    image's class the target of every row for a tagger; returns it in eval mode."""
    x, y = fashion_rows("train", count)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for i in range(0, len(x), 64):
            optimizer.zero_grad()
            scores, target = model(x[i:i + 64]), y[i:i + 64]
            if model.tag_rows:  # [N, 28, 10] against the class on each of the 28 rows
                scores, target = scores.transpose(1, 2), target[:, None].expand(-1, scores.shape[1])
            F.cross_entropy(scores, target).backward()
            optimizer.step()
    return model.eval()


def detector_backbone() -> nn.Module:
    """torchvision's SSDLite (MobileNetV3) feature extractor: a dict of six feature maps out, with
    randomized BatchNorm statistics. The detector around it (anchors, NMS) depends on tensor values and
    stays float; the backbone is what compiles."""
    import torchvision

    torch.manual_seed(0)
    detector = torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)
    return randomize_batch_norm(detector.backbone)
