"""Which torch._foreach_* overloads synchronise with the host on CUDA (sync debug mode "error"); one line each.

The skip-aware LAMB update (hpdm_cli/train/optim.py) feeds device scalars to foreach ops; this
probe is why it passes `keep` to the step counts as a list.
    python benchmarks/foreach_sync.py        (a CUDA machine)
"""
import torch
x = [torch.randn(3, 3, device="cuda") for _ in range(4)]
g = [torch.randn(3, 3, device="cuda") for _ in range(4)]
s = [torch.zeros((), device="cuda") for _ in range(4)]
k = torch.ones((), device="cuda")
cases = {
    "_foreach_add_(0-dim list, tensor)": lambda: torch._foreach_add_(s, k),
    "_foreach_mul_(list, tensor)": lambda: torch._foreach_mul_(x, k),
    "_foreach_add_(0-dim list, [tensor]*n)": lambda: torch._foreach_add_(s, [k] * 4),
    "_foreach_mul_(list, [0-dim]*n)": lambda: torch._foreach_mul_(x, [k] * 4),
    "_foreach_lerp_(list, list, [0-dim]*n)": lambda: torch._foreach_lerp_(x, g, [k * 0.1] * 4),
    "_foreach_lerp_(list, list, float)": lambda: torch._foreach_lerp_(x, g, 0.1),
}
for name, f in cases.items():
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        f(); r = "no sync"
    except RuntimeError as e:
        r = "SYNCS: " + str(e).splitlines()[0][:80]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    print(f"{name:45s} {r}")
