"""torch.save of the bench_checkpoint 'big' state (6 x Linear(4096, 4096) + Adam), timed.

usage: python_save.py DIR LAYERS REPEATS   -> prints the median seconds and the file size
"""
import os
import sys
import time

import torch

d, layers, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
torch.set_num_threads(1)
model = torch.nn.Sequential(*[torch.nn.Linear(4096, 4096) for _ in range(layers)])
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
model(torch.randn(2, 4096)).sum().backward()
opt.step()
path = os.path.join(d, "python.pt")
times = []
for _ in range(repeats):
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        torch.save({"state_dict": model.state_dict(), "optimizer_states": [opt.state_dict()]}, f)
        f.flush()
        os.fsync(f.fileno())
    times.append(time.perf_counter() - t0)
size = os.path.getsize(path)
os.remove(path)
print(sorted(times)[len(times) // 2], size)
