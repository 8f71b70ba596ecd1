"""PyTorch's own GradScaler on a sequence of (already scaled) gradients, for
tests/test_averaging.cpp to compare cairn's GradScaler with; and a check that
a cairn checkpoint's grad_scaler, ema_state_dict and swa_state_dict load into
Python objects.

usage: amp_reference.py scaler IN.pt OUT.pt       # exit 3: this torch has no CPU GradScaler
       amp_reference.py load CKPT FEATURES HIDDEN,HIDDEN CLASSES
"""
import sys

import torch


def cpu_scaler(**kw):
    try:
        return torch.amp.GradScaler("cpu", **kw)
    except (AttributeError, TypeError, RuntimeError) as e:
        print("no CPU GradScaler in torch", torch.__version__, ":", e)
        sys.exit(3)


if sys.argv[1] == "scaler":
    spec = torch.load(sys.argv[2])
    scaler = cpu_scaler(init_scale=float(spec["init_scale"]), growth_factor=2.0, backoff_factor=0.5,
                        growth_interval=int(spec["growth_interval"]))
    p = torch.nn.Parameter(torch.zeros(spec["grads"].shape[1]))
    opt = torch.optim.SGD([p], lr=0.1)
    scaler.scale(torch.tensor(1.0))  # initialises the scale, as a first backward would
    scales, params = [], []
    for g in spec["grads"]:
        p.grad = g.clone()
        scaler.step(opt)
        scaler.update()
        scales.append(scaler.get_scale())
        params.append(p.detach().clone())
    torch.save({"scales": torch.tensor(scales, dtype=torch.float64), "params": torch.stack(params)}, sys.argv[3])
    print("steps", len(scales), "final scale", scales[-1])
elif sys.argv[1] == "load":
    # torch 1.13's weights-only unpickler lacks BINFLOAT (read_checkpoint.py covers that path).
    c = torch.load(sys.argv[2], weights_only=True) if int(torch.__version__.split(".")[0]) >= 2 else torch.load(sys.argv[2])
    features, hidden, classes = int(sys.argv[3]), [int(h) for h in sys.argv[4].split(",")], int(sys.argv[5])
    layers, n = [torch.nn.Flatten()], features
    for h in hidden:  # cairn's mlp: Flatten, (Linear, ReLU, Dropout)*, Linear
        layers += [torch.nn.Linear(n, h), torch.nn.ReLU(), torch.nn.Dropout(0.3)]
        n = h
    layers.append(torch.nn.Linear(n, classes))
    for key in ("ema_state_dict", "swa_state_dict"):
        if key in c:
            m = torch.nn.Sequential(*layers)
            m.load_state_dict(c[key])
            print(key, "loaded", sum(t.numel() for t in m.state_dict().values()), "values")
    if "evaluate_with" in c:
        print("evaluate_with", c["evaluate_with"])
    if "grad_scaler" in c:
        s = c["grad_scaler"]
        assert set(s) == {"scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"}, s
        if hasattr(torch, "amp") and hasattr(torch.amp, "GradScaler"):
            g = torch.amp.GradScaler("cpu")
            g.load_state_dict(s)
            print("grad_scaler loaded: scale", g.get_scale(), "tracker", g._get_growth_tracker())
        else:
            print("grad_scaler keys ok (torch", torch.__version__, "has no CPU GradScaler to load them into)")
