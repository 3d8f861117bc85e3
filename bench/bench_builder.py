"""Forward speed of the built resnet50 against a hand-written ResNet-50 (CPU).

The hand-written network below is written the usual torchvision way (Bottleneck blocks,
in-place ReLUs, stride on the 3x3) with the same parameter names, so the built model's weights
load into it and both compute the same function. Runs alternate between the two models (so
drift in machine load hits both alike) and the medians are compared; the goal is the built
model within 3% of the hand-written one.

    .venv/bin/python bench/bench_builder.py [--batch 8] [--runs 15] [--threads N]
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections import OrderedDict

import torch
from torch import nn

import cnngraph


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != width * 4:
            self.downsample = nn.Sequential(OrderedDict(  # the zoo's names: conv, bn
                conv=nn.Conv2d(cin, width * 4, 1, stride, bias=False),
                bn=nn.BatchNorm2d(width * 4)))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    def __init__(self, classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin, stages = 64, []
        for width, depth, stride in [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]:
            blocks = []
            for i in range(depth):
                blocks.append(Bottleneck(cin, width, stride if i == 0 else 1))
                cin = width * 4
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


def timed(model: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(wall, CPU) seconds of one forward. CPU time (all threads of this process) is the
    steadier number on a shared machine: time spent descheduled does not count."""
    wall, cpu = time.perf_counter(), time.process_time()
    model(x)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--runs", type=int, default=15, help="timed runs per model")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    built = cnngraph.build(cnngraph.load("resnet50")).eval()
    hand = ResNet50().eval()
    hand.load_state_dict(built.state_dict())  # strict: the same parameters, the same names
    x = torch.randn(args.batch, 3, 224, 224)
    models = {"hand-written": hand, "built": built}
    with torch.inference_mode():
        difference = (built(x) - hand(x)).abs().max().item()
        for _ in range(3):  # warm-up: allocator, oneDNN primitive caches
            for model in models.values():
                timed(model, x)
        times = {name: [] for name in models}
        pairs = list(models.items())
        for run in range(args.runs):  # alternate who goes first: no order bias (caches, clocks)
            for name, model in pairs if run % 2 == 0 else pairs[::-1]:
                times[name].append(timed(model, x))

    print(f"machine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"resnet50 forward, batch {args.batch}, 3x224x224, {args.runs} interleaved runs each "
          f"(max |difference| of outputs {difference:.1e})")
    medians = {name: [1000 * statistics.median(t[i] for t in runs) for i in (0, 1)]
               for name, runs in times.items()}
    hand_wall, hand_cpu = medians["hand-written"]
    for name, (wall, cpu) in medians.items():
        print(f"  {name:13s} median wall {wall:8.1f} ms ({100 * (wall / hand_wall - 1):+5.1f}%)"
              f"   CPU {cpu:8.1f} ms ({100 * (cpu / hand_cpu - 1):+5.1f}%)")

if __name__ == "__main__":
    main()
