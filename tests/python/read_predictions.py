"""Reads the predictions `cairn predict --out FILE.pt` wrote, as a Python user would.

usage: read_predictions.py FILE.pt
torch.load (weights_only=True, the default since PyTorch 2.6, where the
version has it); prints each tensor's shape and exits 1 if the dict lacks
`outputs` or its tensors disagree in length.
"""
import sys

import torch

major = int(torch.__version__.split(".")[0])
d = torch.load(sys.argv[1], weights_only=True) if major >= 2 else torch.load(sys.argv[1])
if not isinstance(d, dict) or "outputs" not in d:
    print("FAIL: no outputs in %r" % type(d))
    sys.exit(1)
n = d["outputs"].shape[0]
for k, v in d.items():
    if isinstance(v, torch.Tensor):
        print("%s %s" % (k, tuple(v.shape)))
        if v.shape[0] != n:
            print("FAIL: %s has %d rows, outputs %d" % (k, v.shape[0], n))
            sys.exit(1)
print("OK")
