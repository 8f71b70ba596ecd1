"""Writes (and reads) cairn's sharded tensor format: data larger than memory
for `data.name: shards`, memory-mapped by cairn as training goes.

    import numpy as np, cairn_shards
    cairn_shards.write_shards("data/train", x_train, y_train, per_shard=4096)
    cairn_shards.write_shards("data/valid", x_valid, y_valid)

x: the examples, first dimension N (any numeric dtype: uint8 images stay one
byte per value on disk and are read as float32); y: the targets (class
labels, or numbers with a float loss), first dimension N, or None. numpy
arrays or torch tensors. Or from a torch.save dict of splits:

    python3 python/cairn_shards.py data.pt data/ --per-shard 4096
    # data.pt = {"train_x", "train_y", optional "valid_x"/"valid_y", "test_x"/"test_y"}
    # -> data/train, data/valid, data/test (YAML: path, valid_path, test_path)

The format (little endian), one file per shard, `shard-00000.cshard`, ...:
  8 bytes "CAIRNSHD", u32 version (1), u32 header bytes (a multiple of 64),
  u64 examples, u8 x dtype, u8 y dtype (0: no targets), u8 x rank, u8 y rank,
  u32 0, the x then y dimensions past the first (u64 each), zeros to the
  header's size; then every example's x, then every example's y, row-major.
  dtypes: 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float16, 7 float32, 8 float64.
"""
import argparse
import os
import struct
import sys

import numpy as np

MAGIC = b"CAIRNSHD"
DTYPES = {np.dtype(np.uint8): 1, np.dtype(np.int8): 2, np.dtype(np.int16): 3, np.dtype(np.int32): 4,
          np.dtype(np.int64): 5, np.dtype(np.float16): 6, np.dtype(np.float32): 7, np.dtype(np.float64): 8}
CODES = {v: k for k, v in DTYPES.items()}


def _array(a, name):
    if a is None:
        return None
    if hasattr(a, "detach"):  # a torch tensor
        a = a.detach().cpu().numpy()
    a = np.ascontiguousarray(a)
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
    if a.dtype not in DTYPES:
        raise ValueError(f"{name}: dtype {a.dtype} is not one cairn reads ({', '.join(str(d) for d in DTYPES)})")
    if a.ndim < 1:
        raise ValueError(f"{name}: needs a first dimension (the examples)")
    if a.ndim > 9:
        raise ValueError(f"{name}: more than 8 dimensions per example")
    return a.astype(a.dtype.newbyteorder("<"), copy=False)


def _header(count, x, y):
    xd, yd = DTYPES[x.dtype.newbyteorder("=")], (DTYPES[y.dtype.newbyteorder("=")] if y is not None else 0)
    xs, ys = x.shape[1:], (y.shape[1:] if y is not None else ())
    head = MAGIC + struct.pack("<II", 1, 0) + struct.pack("<Q", count)
    head += struct.pack("<BBBBI", xd, yd, len(xs), len(ys), 0)
    head += b"".join(struct.pack("<Q", d) for d in (*xs, *ys))
    size = (len(head) + 63) // 64 * 64
    head = head[:8] + struct.pack("<II", 1, size) + head[16:]
    return head + b"\0" * (size - len(head))


def write_shards(folder, x, y=None, per_shard=4096, prefix="shard"):
    """Writes x (and y) as shards of `per_shard` examples into `folder`; returns their paths."""
    x, y = _array(x, "x"), _array(y, "y")
    if y is not None and len(y) != len(x):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
    if per_shard < 1:
        raise ValueError("per_shard must be >= 1")
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, start in enumerate(range(0, len(x), per_shard)):
        xs = x[start:start + per_shard]
        ys = y[start:start + per_shard] if y is not None else None
        path = os.path.join(folder, f"{prefix}-{i:05d}.cshard")
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:  # whole shards only: written aside, then renamed
            f.write(_header(len(xs), xs, ys))
            f.write(xs.tobytes())
            if ys is not None:
                f.write(ys.tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        paths.append(path)
    return paths


def read_shard(path):
    """(x, y) of one shard as read-only memory-mapped numpy arrays (y None without targets)."""
    with open(path, "rb") as f:
        head = f.read(32)
    if head[:8] != MAGIC:
        raise ValueError(f"{path}: not a cairn shard")
    version, size = struct.unpack("<II", head[8:16])
    (count,) = struct.unpack("<Q", head[16:24])
    xd, yd, xr, yr, _ = struct.unpack("<BBBBI", head[24:32])
    with open(path, "rb") as f:
        f.seek(32)
        dims = struct.unpack(f"<{xr + yr}Q", f.read(8 * (xr + yr)))
    xs, ys = (count, *dims[:xr]), (count, *dims[xr:])
    x = np.memmap(path, dtype=CODES[xd].newbyteorder("<"), mode="r", offset=size, shape=xs)
    y = None
    if yd:
        y = np.memmap(path, dtype=CODES[yd].newbyteorder("<"), mode="r", offset=size + x.nbytes, shape=ys)
    return x, y


def main(argv=None):
    p = argparse.ArgumentParser(description="torch.save dict of splits -> cairn shard folders")
    p.add_argument("data", help="a torch.save file: {'train_x', 'train_y', 'valid_x', ...}")
    p.add_argument("out", help="folder to write train/, valid/, test/ into")
    p.add_argument("--per-shard", type=int, default=4096)
    a = p.parse_args(argv)
    import torch
    d = torch.load(a.data, map_location="cpu")
    for split in ("train", "valid", "test"):
        if f"{split}_x" in d:
            paths = write_shards(os.path.join(a.out, split), d[f"{split}_x"], d.get(f"{split}_y"), a.per_shard)
            print(f"{split}: {len(d[f'{split}_x'])} examples in {len(paths)} shards under {os.path.join(a.out, split)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
