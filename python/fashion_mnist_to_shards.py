"""Fashion-MNIST (Debian's dataset-fashion-mnist) as cairn shards, for
configs/fashion_mnist_shards.yaml: uint8 images [N, 1, 28, 28] and labels.

    python3 python/fashion_mnist_to_shards.py data/fashion-mnist-shards [--per-shard 6000] [--limit N]
    # -> data/fashion-mnist-shards/{train,valid,test}/shard-*.cshard
"""
import argparse
import gzip
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cairn_shards  # noqa: E402


def idx(path):
    """An IDX file (.gz) as a numpy array of its shape."""
    with gzip.open(path) as f:
        data = f.read()
    rank = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(rank)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * rank).reshape(shape)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--root", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--per-shard", type=int, default=6000)
    p.add_argument("--limit", type=int, default=0, help="the first N training and test images only")
    a = p.parse_args(argv)
    x, y = idx(f"{a.root}/train-images-idx3-ubyte.gz"), idx(f"{a.root}/train-labels-idx1-ubyte.gz")
    tx, ty = idx(f"{a.root}/t10k-images-idx3-ubyte.gz"), idx(f"{a.root}/t10k-labels-idx1-ubyte.gz")
    if a.limit:
        x, y, tx, ty = x[:a.limit], y[:a.limit], tx[:a.limit], ty[:a.limit]
    n_valid = len(x) // 10  # the last tenth of the training images validate
    splits = {"train": (x[:-n_valid], y[:-n_valid]), "valid": (x[-n_valid:], y[-n_valid:]), "test": (tx, ty)}
    for name, (images, labels) in splits.items():
        paths = cairn_shards.write_shards(os.path.join(a.out, name), images[:, None], labels.astype(np.int64), a.per_shard)
        print(f"{name}: {len(images)} images in {len(paths)} shards under {os.path.join(a.out, name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
