"""The optimizer's per-step math traces under ``torch.compile(fullgraph=True)``: no graph breaks.

The hot path of ``SpectralKron`` (``optim.first_state``/``refresh``/``reorthonormalize``/
``direction`` on a stack of same-shaped layers, the diagonal scheme, and the
post-processing) is compiled with dynamo's ``eager`` backend (graph capture only, no
inductor code generation, so it stays fast on a CPU) and must give the eager numbers.
Hyperparameters that schedules change are passed as 0-d tensors.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import spectral_curv.torch  # noqa: E402,F401  (registers the torch fast paths up front)
from spectral_curv import optim  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # dynamo's lru_cache notes


def _kron_hot(st, G, precond_lr, cayley):
    st = optim.first_state(st, G, damping=1e-8)
    st, ok = optim.refresh(
        st,
        G,
        precond_lr=precond_lr,
        damping=1e-8,
        cayley=cayley,
        exp="first_order" if cayley != "exact" else "exact",
    )
    st = optim.reorthonormalize(st)
    return st, ok, optim.direction(st, G, p=2)


def _post(u, g, m, v, buf, param, lr, step):
    u, m, v = optim.graft_adam(u, g, m, v, step=step, betas=(0.9, 0.99), eps=1e-8)
    u = optim.clip_rms(u, 0.5)
    buf = optim.add_momentum(buf, u, 0.9)
    return optim.apply_update(param, buf, lr=lr, weight_decay=0.01), m, v, buf


def _close(a, b, tol):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert float((a - b).abs().max()) <= tol * (1.0 + float(b.abs().max()))


@pytest.mark.parametrize("cayley", ["quadratic", "neumann", "exact"])
@pytest.mark.parametrize("plan", [("kron", 7, 5, False, False), ("kron", 7, 5, False, True)])
def test_kron_hot_path_compiles_without_graph_breaks(cayley, plan):
    torch.manual_seed(0)
    xp = optim.namespace(torch.zeros(1))
    st = optim.init(plan, (7, 5), batch=(3,), dtype=torch.float64, xp=xp)
    G = torch.randn(3, 7, 5, dtype=torch.float64)
    lr = torch.tensor(0.2, dtype=torch.float64)
    compiled = torch.compile(_kron_hot, fullgraph=True, backend="eager", dynamic=False)
    got = compiled(st, G, lr, cayley)
    ref = _kron_hot(st, G, lr, cayley)
    for a, b in zip(got[0], ref[0]):
        if b is not None:
            _close(a, b, 1e-12)
    assert torch.equal(got[1], ref[1]) and bool(ref[1].all())
    _close(got[2], ref[2], 1e-12)


def test_diag_and_postprocess_compile_without_graph_breaks():
    torch.manual_seed(1)
    xp = optim.namespace(torch.zeros(1))
    st = optim.init(("diag",), (6,), dtype=torch.float32, xp=xp)
    g = torch.randn(6)

    def diag_hot(st, g, precond_lr):
        st = optim.first_state(st, g, damping=0.0)
        st, ok = optim.refresh(st, g, precond_lr=precond_lr)
        return st, ok, optim.direction(st, g, p=2)

    lr = torch.tensor(0.1)
    got = torch.compile(diag_hot, fullgraph=True, backend="eager")(st, g, lr)
    ref = diag_hot(st, g, lr)
    _close(got[0].d, ref[0].d, 1e-6)
    _close(got[2], ref[2], 1e-6)

    args = [torch.randn(4, 3) for _ in range(6)]
    args[3] = args[3].abs()  # Adam's second moment is non-negative
    post = torch.compile(_post, fullgraph=True, backend="eager")
    for step in (1, 2):  # a Python int step (the class passes the host counter)
        got = post(*args, torch.tensor(0.05), step)
        ref = _post(*args, torch.tensor(0.05), step)
        for a, b in zip(got, ref):
            _close(a, b, 1e-6)
