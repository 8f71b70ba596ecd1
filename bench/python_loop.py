"""The bench_loop workload in Python PyTorch; prints the median steps/s.

usage: python_loop.py EPOCHS REPEATS [DEVICE [STEPS]]
    DEVICE cpu (default) or cuda; STEPS > 0 limits an epoch to that many
    training batches (a smoke run)
"""
import gzip
import sys
import time

import numpy as np
import torch

epochs, repeats = int(sys.argv[1]), int(sys.argv[2])
device = sys.argv[3] if len(sys.argv) > 3 else "cpu"
limit = int(sys.argv[4]) * 64 if len(sys.argv) > 4 and int(sys.argv[4]) > 0 else None
torch.set_num_threads(1)
root = "/usr/share/datasets/fashion-mnist/"


def idx(name):
    with gzip.open(root + name) as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


x = (torch.from_numpy(idx("train-images-idx3-ubyte.gz").copy()).float() / 255 - 0.2860) / 0.3530
y = torch.from_numpy(idx("train-labels-idx1-ubyte.gz").copy()).long()
x = x.unsqueeze(1)
n_valid = 6000
g = torch.Generator().manual_seed(0)
perm = torch.randperm(len(x), generator=g)
train_idx, valid_idx = perm[:-n_valid].sort().values, perm[-n_valid:].sort().values
xt, yt, xv, yv = x[train_idx], y[train_idx], x[valid_idx], y[valid_idx]
if limit:
    xt, yt = xt[:limit], yt[:limit]


def run():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Dropout(0.1),
        torch.nn.Linear(256, 128), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(128, 10)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps = 0
    t0 = time.perf_counter()
    for e in range(epochs):
        model.train()
        order = torch.randperm(len(xt), generator=torch.Generator().manual_seed(e))
        loss_sum = acc_sum = 0.0
        for k in range(0, len(xt), 64):
            idx_ = order[k:k + 64]
            bx, by = xt.index_select(0, idx_).to(device), yt.index_select(0, idx_).to(device)
            opt.zero_grad()
            logits = model(bx)
            loss = torch.nn.functional.cross_entropy(logits, by)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(by)
            acc_sum += logits.argmax(1).eq(by).sum().item()
            steps += 1
        model.eval()
        with torch.no_grad():
            for k in range(0, len(xv), 64):
                bx, by = xv[k:k + 64].to(device), yv[k:k + 64].to(device)
                logits = model(bx)
                torch.nn.functional.cross_entropy(logits, by).item()
                logits.argmax(1).eq(by).sum().item()
    return steps / (time.perf_counter() - t0)


if __name__ == "__main__":
    rates = sorted(run() for _ in range(repeats))
    print(rates[len(rates) // 2])
