"""Well-known Caffe networks written out by code, for tests of shapes and parameter counts."""

from __future__ import annotations


class Net:
    """Collects prototxt layers; each method appends one layer and returns its top."""

    def __init__(self, name: str, shape: tuple[int, ...]) -> None:
        dims = " ".join(f"dim: {d}" for d in shape)
        self.lines = [
            f'name: "{name}"',
            f'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}',
        ]

    def add(self, name: str, type_: str, bottoms: list[str], body: str = "", top: str | None = None) -> str:
        top = top or name
        wiring = " ".join(f'bottom: "{b}"' for b in bottoms) + f' top: "{top}"'
        self.lines.append(f'layer {{ name: "{name}" type: "{type_}" {wiring} {body} }}')
        return top

    def conv(self, name: str, bottom: str, n: int, k: int, s: int = 1, p: int = 0, group: int = 1) -> str:
        top = self.add(
            name,
            "Convolution",
            [bottom],
            f"convolution_param {{ num_output: {n} kernel_size: {k} stride: {s} pad: {p} group: {group} }}",
        )
        return self.add(f"relu_{name}", "ReLU", [top], top=top)

    def pool(
        self, name: str, bottom: str, k: int, s: int, p: int = 0, kind: str = "MAX", round_mode: str = "CEIL"
    ) -> str:
        return self.add(
            name,
            "Pooling",
            [bottom],
            f"pooling_param {{ pool: {kind} kernel_size: {k} stride: {s} pad: {p} round_mode: {round_mode} }}",
        )

    def lrn(self, name: str, bottom: str, size: int = 5) -> str:
        return self.add(name, "LRN", [bottom], f"lrn_param {{ local_size: {size} alpha: 0.0001 beta: 0.75 }}")

    def fc(self, name: str, bottom: str, n: int, relu: bool = True) -> str:
        top = self.add(name, "InnerProduct", [bottom], f"inner_product_param {{ num_output: {n} }}")
        return self.add(f"relu_{name}", "ReLU", [top], top=top) if relu else top

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def alexnet() -> str:
    n = Net("AlexNet", (10, 3, 227, 227))
    x = n.conv("conv1", "data", 96, 11, s=4)
    x = n.pool("pool1", n.lrn("norm1", x), 3, 2)
    x = n.conv("conv2", x, 256, 5, p=2, group=2)
    x = n.pool("pool2", n.lrn("norm2", x), 3, 2)
    x = n.conv("conv3", x, 384, 3, p=1)
    x = n.conv("conv4", x, 384, 3, p=1, group=2)
    x = n.pool("pool5", n.conv("conv5", x, 256, 3, p=1, group=2), 3, 2)
    x = n.fc("fc7", n.fc("fc6", x, 4096), 4096)
    n.add("prob", "Softmax", [n.fc("fc8", x, 1000, relu=False)])
    return n.text()


INCEPTIONS = [  # name, 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool projection
    ("3a", 64, 96, 128, 16, 32, 32),
    ("3b", 128, 128, 192, 32, 96, 64),
    ("4a", 192, 96, 208, 16, 48, 64),
    ("4b", 160, 112, 224, 24, 64, 64),
    ("4c", 128, 128, 256, 24, 64, 64),
    ("4d", 112, 144, 288, 32, 64, 64),
    ("4e", 256, 160, 320, 32, 128, 128),
    ("5a", 256, 160, 320, 32, 128, 128),
    ("5b", 384, 192, 384, 48, 128, 128),
]


def googlenet(round_mode: str = "CEIL") -> str:
    n = Net("GoogLeNet", (10, 3, 224, 224))
    x = n.conv("conv1", "data", 64, 7, s=2, p=3)
    x = n.lrn("norm1", n.pool("pool1", x, 3, 2, round_mode=round_mode))
    x = n.conv("conv2", n.conv("conv2_reduce", x, 64, 1), 192, 3, p=1)
    x = n.pool("pool2", n.lrn("norm2", x), 3, 2, round_mode=round_mode)
    for name, c1, r3, c3, r5, c5, proj in INCEPTIONS:
        p = f"inception_{name}/"
        branches = [
            n.conv(p + "1x1", x, c1, 1),
            n.conv(p + "3x3", n.conv(p + "3x3_reduce", x, r3, 1), c3, 3, p=1),
            n.conv(p + "5x5", n.conv(p + "5x5_reduce", x, r5, 1), c5, 5, p=2),
            n.conv(p + "pool_proj", n.pool(p + "pool", x, 3, 1, p=1, round_mode=round_mode), proj, 1),
        ]
        x = n.add(p + "output", "Concat", branches)
        if name in ("3b", "4e"):
            x = n.pool(f"pool{name[0]}", x, 3, 2, round_mode=round_mode)
    x = n.pool("pool5", x, 7, 1, kind="AVE", round_mode=round_mode)
    x = n.add("drop", "Dropout", [x], "dropout_param { dropout_ratio: 0.4 }", top=x)
    n.add("prob", "Softmax", [n.fc("loss3/classifier", x, 1000, relu=False)])
    return n.text()


def cifar10_quick() -> str:
    n = Net("CIFAR10_quick", (1, 3, 32, 32))
    x = n.pool("pool1", n.conv("conv1", "data", 32, 5, p=2), 3, 2)
    x = n.pool("pool2", n.conv("conv2", x, 32, 5, p=2), 3, 2, kind="AVE")
    x = n.pool("pool3", n.conv("conv3", x, 64, 5, p=2), 3, 2, kind="AVE")
    n.add("prob", "Softmax", [n.fc("ip2", n.fc("ip1", x, 64, relu=False), 10, relu=False)])
    return n.text()
