"""Reads a cairn checkpoint the way a Python user would, and checks the contract.

usage: read_checkpoint.py CKPT

1. Audits the pickle stream: every opcode and every class it names must be
   among those PyTorch's weights-only unpickler accepts (torch >= 2.0).
2. torch.load(path, weights_only=True). PyTorch 1.13's weights-only unpickler
   lacks BINFLOAT (added in 2.0); on 1.13 the test adds exactly that opcode and
   nothing else, so every other check is the real 1.13 code path.
3. Plain torch.load(path) (the default of torch < 2.6).
4. The Lightning-like top-level keys, their types, and that a torch.optim
   optimizer accepts the saved state and takes a step from it.
Prints OK and a JSON summary on success; exits 1 with the reason otherwise.
"""
import io
import json
import pickle
import pickletools
import sys
import zipfile

import torch

path = sys.argv[1]

ALLOWED_OPS = {
    "PROTO", "STOP", "MARK", "EMPTY_DICT", "EMPTY_LIST", "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3",
    "SETITEM", "SETITEMS", "APPEND", "APPENDS", "NONE", "NEWTRUE", "NEWFALSE", "BININT", "BININT1", "BININT2",
    "LONG1", "BINFLOAT", "BINUNICODE", "GLOBAL", "REDUCE", "BINPERSID", "BINPUT", "LONG_BINPUT", "BINGET",
    "LONG_BINGET",
}
ALLOWED_GLOBALS = {"torch._utils _rebuild_tensor_v2", "collections OrderedDict"}


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


with zipfile.ZipFile(path) as z:
    names = z.namelist()
    pkl = [n for n in names if n.endswith("/data.pkl")]
    if len(pkl) != 1:
        fail("expected one data.pkl record, got %r" % names)
    data = z.read(pkl[0])
for op, arg, _ in pickletools.genops(data):
    if op.name not in ALLOWED_OPS:
        fail("opcode %s is not accepted by weights_only loading" % op.name)
    if op.name == "GLOBAL":
        if arg not in ALLOWED_GLOBALS and not (arg.startswith("torch ") and arg.endswith("Storage")):
            fail("class %s is not accepted by weights_only loading" % arg)

major = int(torch.__version__.split(".")[0])
if major < 2:
    # torch 1.13's weights-only unpickler accepts everything above except
    # BINFLOAT. Swap each float for a placeholder string, load with the real
    # 1.13 weights-only code, then put the floats back.
    import struct

    floats = []
    rewritten = bytearray()
    ops = list(pickletools.genops(data))
    for i, (op, arg, pos) in enumerate(ops):
        end = ops[i + 1][2] if i + 1 < len(ops) else len(data)
        if op.name == "BINFLOAT":
            tag = ("\x00cairn-float-%d" % len(floats)).encode()
            floats.append(arg)
            rewritten += pickle.BINUNICODE + struct.pack("<I", len(tag)) + tag
        else:
            rewritten += data[pos:end]
    mem = io.BytesIO()
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(mem, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            body = bytes(rewritten) if info.filename.endswith("/data.pkl") else zin.read(info.filename)
            zout.writestr(info.filename, body)
    mem.seek(0)
    loaded = torch.load(mem, weights_only=True)

    def restore(x):
        if isinstance(x, str) and x.startswith("\x00cairn-float-"):
            return floats[int(x[len("\x00cairn-float-"):])]
        if isinstance(x, dict):
            return type(x)((restore(k), restore(v)) for k, v in x.items())
        if isinstance(x, list):
            return [restore(v) for v in x]
        return x

    safe = restore(loaded)
else:
    safe = torch.load(path, weights_only=True)

plain = torch.load(path) if major < 2 else torch.load(path, weights_only=False)


def same(a, b, where="root"):
    if type(a) != type(b):
        fail("%s: %s vs %s between weights_only and plain loading" % (where, type(a), type(b)))
    if isinstance(a, dict):
        if list(a.keys()) != list(b.keys()):
            fail("%s: keys differ" % where)
        for k in a:
            same(a[k], b[k], "%s.%s" % (where, k))
    elif isinstance(a, list):
        if len(a) != len(b):
            fail("%s: lengths differ" % where)
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, "%s[%d]" % (where, i))
    elif isinstance(a, torch.Tensor):
        if not torch.equal(a, b):
            fail("%s: tensors differ" % where)
    elif a != b and not (isinstance(a, float) and a != a and b != b):
        fail("%s: %r vs %r" % (where, a, b))


same(safe, plain)
ckpt = safe

PLAIN_TYPES = (dict, list, str, int, float, bool, type(None), torch.Tensor)


def plain_only(x, where="root"):
    if not isinstance(x, PLAIN_TYPES):
        fail("%s has type %s" % (where, type(x)))
    if isinstance(x, dict):
        for k, v in x.items():
            if not isinstance(k, (str, int)):
                fail("%s has a key of type %s" % (where, type(k)))
            plain_only(v, "%s.%s" % (where, k))
    if isinstance(x, list):
        for i, v in enumerate(x):
            plain_only(v, "%s[%d]" % (where, i))


plain_only(ckpt)

REQUIRED = {
    "format_version": int, "cairn_version": str, "epoch": int, "global_step": int, "batch_in_epoch": int,
    "state_dict": dict, "optimizer_states": list, "lr_schedulers": list, "rng_states": dict, "metrics": dict,
    "values": dict, "callbacks": dict, "hyper_parameters": dict,
}
for key, typ in REQUIRED.items():
    if key not in ckpt:
        fail("missing top-level key " + key)
    if not isinstance(ckpt[key], typ):
        fail("%s is %s, expected %s" % (key, type(ckpt[key]), typ))
for name, t in ckpt["state_dict"].items():
    if not isinstance(t, torch.Tensor):
        fail("state_dict[%s] is not a tensor" % name)
for name, series in ckpt["metrics"].items():
    if "/" not in name:
        fail("metric name %s is not split/name" % name)
    expected = {"epoch": torch.int64, "step": torch.int64, "value": torch.float64, "seq": torch.int64}
    for k, dtype in expected.items():
        col = series[k]
        if not isinstance(col, torch.Tensor) or col.dim() != 1 or col.dtype != dtype:
            fail("metric %s: %s is not a 1-D %s tensor" % (name, k, dtype))
    lens = {k: len(series[k]) for k in expected}
    if len(set(lens.values())) != 1:
        fail("metric %s has columns of different lengths %r" % (name, lens))
if not isinstance(ckpt["rng_states"]["cpu"], torch.Tensor) or ckpt["rng_states"]["cpu"].dtype != torch.uint8:
    fail("rng_states.cpu is not a uint8 tensor")

# The optimizer state is in torch.optim's own layout: a torch optimizer takes it.
for opt_state in ckpt["optimizer_states"]:
    if set(opt_state) < {"state", "param_groups"}:
        fail("optimizer state lacks state/param_groups")
    params = [torch.nn.Parameter(t.clone().float()) for t in ckpt["state_dict"].values()]
    kind = opt_state.get("cairn_kind", "adam")
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD,
           "rmsprop": torch.optim.RMSprop, "adagrad": torch.optim.Adagrad}[kind]
    n = sum(len(g["params"]) for g in opt_state["param_groups"])
    if n == len(params):
        opt = cls(params, lr=0.1)
        clean = {"state": opt_state["state"], "param_groups": opt_state["param_groups"]}
        opt.load_state_dict(clean)
        if opt.param_groups[0]["lr"] != opt_state["param_groups"][0]["lr"]:
            fail("torch.optim did not take the saved lr")
        # ... and steps from it: a training job continued in Python (at a
        # nonzero lr: a finished cosine schedule saves lr 0).
        for group in opt.param_groups:
            group["lr"] = 0.01
        before = [p.detach().clone() for p in params]
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()
        if not any(not torch.equal(b, p.detach()) for b, p in zip(before, params)):
            fail("a torch.optim step from the loaded state changed no parameter")
        for group in opt.param_groups:
            for p in group["params"]:
                st = opt.state.get(p, {})
                for k, v in st.items():
                    if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape != p.shape:
                        fail("optimizer state %s has shape %s for a parameter of %s" % (k, v.shape, p.shape))

summary = {
    "torch": torch.__version__,
    "epoch": ckpt["epoch"],
    "global_step": ckpt["global_step"],
    "params": {k: list(v.shape) for k, v in ckpt["state_dict"].items()},
    "metrics": {k: len(v["value"]) for k, v in ckpt["metrics"].items()},
    "values": {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in ckpt["values"].items()},
    "callbacks": sorted(ckpt["callbacks"]),
    "lr": [g["lr"] for o in ckpt["optimizer_states"] for g in o["param_groups"]],
}
print("OK " + json.dumps(summary))
