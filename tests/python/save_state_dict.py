"""Writes a state_dict with Python's torch.save, for cairn's loading tests.

usage: save_state_dict.py OUT {plain|mlp32|wrong}
  plain  a small dict of tensors
  mlp32  the state_dict of cairn's `mlp` with hidden [32] on Fashion-MNIST
  wrong  the same with one shape changed, one name missing and one extra
"""
import sys
from collections import OrderedDict

import torch

out, kind = sys.argv[1], sys.argv[2]
torch.manual_seed(3)
if kind == "plain":
    torch.save({"w": torch.ones(3), "n": 2}, out)
    sys.exit(0)

# Same layout as cairn's make_mlp: Flatten, Linear, ReLU, [Dropout], Linear.
model = torch.nn.Sequential(
    torch.nn.Flatten(), torch.nn.Linear(784, 32), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(32, 10)
)
sd = model.state_dict()
if kind == "wrong":
    sd = OrderedDict(sd)
    sd["1.weight"] = torch.zeros(16, 784)
    del sd["4.bias"]
    sd["9.extra"] = torch.zeros(1)
torch.save(sd, out)
# Print a checksum of the weights so the test can compare what cairn loaded.
print(float(sum(t.double().sum() for t in model.state_dict().values())))
