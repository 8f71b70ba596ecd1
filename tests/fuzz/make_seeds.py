"""Seed corpora for the libFuzzer targets, from real files.

usage: make_seeds.py OUT_DIR CONFIG_DIR [CAIRN_CHECKPOINT ...]

Writes OUT_DIR/{checkpoint,weights,config,set_args,state,data}/seed-* :
  * checkpoints cairn wrote (whole files, and their data.pkl for the
    wrapped-pickle modes; see harness.h for the leading mode byte),
  * files saved by Python's torch.save (python3-torch): state_dicts of the
    harness's 4-3-2 MLP, nested and shared tensors, plain dicts,
  * the YAML experiments in CONFIG_DIR, and some --set argument lists,
  * mutation lists for the state target (4 bytes each: node, operation,
    argument; see harness.h): every operation at nodes spread over the tree,
  * PNG images (grey, RGB, palette, 16-bit; encoded here with zlib) and
    shards written by python/cairn_shards.py, for the data target,
  * the hand-made hostile inputs of tests/hostile/ up to 64 KiB.
"""
import io
import os
import sys
import zipfile
from collections import OrderedDict

import torch

out, config_dir, checkpoints = sys.argv[1], sys.argv[2], sys.argv[3:]
dirs = {t: os.path.join(out, t) for t in ("checkpoint", "weights", "config", "set_args", "state", "data")}
for d in dirs.values():
    os.makedirs(d, exist_ok=True)
count = {t: 0 for t in dirs}


def seed(target, data):
    count[target] += 1
    with open(os.path.join(dirs[target], "seed-%03d" % count[target]), "wb") as f:
        f.write(data)


def pickle_of(zip_bytes):
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as z:
        name = next(n for n in z.namelist() if n.endswith("/data.pkl"))
        return z.read(name)


# Mode bytes (harness.h): 0 whole file + checksums, 1 whole file, 2 wrapped
# pickle with checksums, 3 wrapped pickle with CRC only; 0x80 header-only.
for path in checkpoints:
    data = open(path, "rb").read()
    seed("checkpoint", b"\x00" + data)
    seed("checkpoint", b"\x80" + data)
    seed("checkpoint", b"\x02" + pickle_of(data))
    seed("checkpoint", b"\x82" + pickle_of(data))


def torch_save(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


torch.manual_seed(0)
mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
shared = torch.arange(12, dtype=torch.float32)
objects = [
    mlp.state_dict(),
    {"state_dict": mlp.state_dict(), "epoch": 3, "note": "from python"},
    {"w": torch.ones(3), "n": 2, "lr": 0.5, "ok": True, "none": None},
    {"a": shared[:4], "b": shared[4:].view(2, 4), "c": shared.view(3, 4).t()},  # views sharing one storage
    OrderedDict([("x", [1, 2, [3, {"y": torch.zeros(2, 2, dtype=torch.float64)}]]), ("z", (4, 5))]),
    {"ints": torch.arange(6, dtype=torch.int64), "half": torch.ones(4, dtype=torch.float16),
     "bool": torch.tensor([True, False]), "bytes": torch.arange(5, dtype=torch.uint8)},
]
for obj in objects:
    data = torch_save(obj)
    for target in ("checkpoint", "weights"):
        seed(target, b"\x01" + data)
        seed(target, b"\x03" + pickle_of(data))

for name in sorted(os.listdir(config_dir)):
    if name.endswith((".yaml", ".yml")):
        seed("config", open(os.path.join(config_dir, name), "rb").read())
seed("config", b"""name: small
seed: 7
run: {dir: runs/small}
data: {name: synthetic, train_size: 64, batch_size: 8}
model: {name: cnn, channels: [4], hidden: 8}
optimizer: {name: adamw, lr: 0.001, weight_decay: 0.01}
scheduler: {name: one_cycle, max_lr: 0.01}
trainer: {max_epochs: 3, accumulate_grad_batches: 2, gradient_clip_val: 1.0}
callbacks:
  - {name: checkpoint, monitor: valid/acc, mode: max, save_top_k: 2, every_n_train_steps: 3}
  - {name: early_stopping, monitor: valid/loss, patience: 5}
  - {name: csv_logger}
  - {name: progress_bar}
""")
seed("config", b"defaults: &d {batch_size: 8}\ndata: {<<: *d, name: synthetic}\nmodel: {name: mlp}\n")

for lines in (
    b"trainer.max_epochs=5\n",
    b"optimizer.lr=0.01\ndata.batch_size=16\n",
    b"callbacks[0].save_top_k=3\ncallbacks[1].patience=1\n",
    b"model.hidden=[16, 8]\nscheduler=null\n",
    b"scheduler={name: step, step_size: 2, gamma: 0.5}\n",
    b"seed=3\nrun.dir=/tmp/x\n",
):
    seed("set_args", lines)

# The state target: one or two mutations of the base checkpoint's tree
# (nodes 0..~280 in depth-first order; operations 0..7, tests/fuzz/harness.h).
for node in range(0, 288, 9):
    for op in range(8):
        seed("state", bytes([node >> 8, node & 0xFF, op, (node * 7 + op) & 0xFF]))
seed("state", bytes([0, 20, 5, 2, 0, 42, 1, 1]))

# The data target (harness.h): images (mode bit 0 clear; bit 1 RGB) and shards (bit 0 set).
import struct  # noqa: E402
import zlib  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
import cairn_shards  # noqa: E402


def png(width, height, colour, depth, rows, palette=None):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
    if palette:
        out += chunk(b"PLTE", palette)
    return out + chunk(b"IDAT", zlib.compress(b"".join(b"\0" + r for r in rows))) + chunk(b"IEND", b"")


rng = np.random.default_rng(0)
seed("data", b"\x00" + png(8, 6, 0, 8, [rng.integers(0, 256, 8, dtype=np.uint8).tobytes() for _ in range(6)]))
seed("data", b"\x02" + png(5, 7, 2, 8, [rng.integers(0, 256, 15, dtype=np.uint8).tobytes() for _ in range(7)]))
seed("data", b"\x02" + png(4, 4, 3, 8, [bytes([0, 1, 2, 1])] * 4, palette=bytes(range(9))))
seed("data", b"\x00" + png(3, 3, 0, 16, [rng.integers(0, 256, 6, dtype=np.uint8).tobytes() for _ in range(3)]))
seed("data", b"\x02" + png(3, 2, 6, 8, [rng.integers(0, 256, 12, dtype=np.uint8).tobytes() for _ in range(2)]))
import tempfile  # noqa: E402
with tempfile.TemporaryDirectory() as tmp:
    for i, (x, y) in enumerate([
        (rng.random((5, 1, 3, 3), dtype=np.float32), rng.integers(0, 4, 5)),
        (rng.integers(0, 255, (4, 2, 2), dtype=np.uint8), None),
        (rng.random((3, 4)).astype(np.float16), rng.random((3, 2))),
    ]):
        path = cairn_shards.write_shards(os.path.join(tmp, str(i)), x, y)[0]
        seed("data", (b"\x01" if y is None or y.dtype.kind == "i" else b"\x03") + open(path, "rb").read())

# The hand-made hostile inputs (tests/hostile/) that fit libFuzzer's
# -max_len: the fuzzers start from every trap already known.
hostile = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "hostile")
for name in sorted(os.listdir(hostile)):
    target = os.path.splitext(name)[1][1:]
    path = os.path.join(hostile, name)
    if target in dirs and os.path.isfile(path) and os.path.getsize(path) <= 65536:
        seed(target, open(path, "rb").read())

print(" ".join("%s: %d seeds" % (t, n) for t, n in count.items()))
