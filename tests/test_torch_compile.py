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


MAPS = [("quadratic", "kron"), ("neumann", "kron"), ("exact", "kron"), ("quadratic", "corrected")]
PLANS = [("kron", 7, 5, False, False), ("kron", 7, 5, False, True)]
#: every map on the first plan, the second plan with the default map in the quick run (2-3 s
#: a compilation); the other combinations under `slow`
HOT_PATHS = [
    pytest.param(
        cayley,
        eigenvalues,
        plan,
        id=f"plan{i}-{cayley}-{eigenvalues}",
        marks=[pytest.mark.slow] if i and (cayley, eigenvalues) != MAPS[0] else [],
    )
    for i, plan in enumerate(PLANS)
    for cayley, eigenvalues in MAPS
]


@pytest.mark.parametrize(("cayley", "eigenvalues", "plan"), HOT_PATHS)
def test_kron_hot_path_compiles_without_graph_breaks(cayley, eigenvalues, plan):
    torch.manual_seed(0)
    xp = optim.namespace(torch.zeros(1))
    st = optim.init(plan, (7, 5), batch=(3,), eigenvalues=eigenvalues, dtype=torch.float64, xp=xp)
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


# ------------------------------------------------------------ SpectralKron.step, compiled
# torch's compiled-optimizer tests compile ``opt.step`` with ``fullgraph=True``; the
# ``eager`` backend runs dynamo's graph with the same kernels as eager mode, so the compiled
# trajectory equals the eager one bitwise (the skip is a ``torch.where`` that picks the new
# values exactly). The schedule below has every phase within 8 steps: t=0 first step,
# t=1 warmup refresh with re-orthonormalisation, t=2 plain, t=3 refresh, t=6 refresh with
# re-orthonormalisation.
import copy  # noqa: E402
import io  # noqa: E402
import re  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

from torch import nn  # noqa: E402
from torch._dynamo.testing import CompileCounterWithBackend  # noqa: E402

import spectral_curv.torch as sct  # noqa: E402
from spectral_curv.torch import SpectralKron  # noqa: E402

OPTS = dict(lr=0.05, precond_warmup=2, update_interval=3, reorth_interval=2)
X = torch.randn(8, 4, generator=torch.Generator().manual_seed(2))


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Every optimizer's ``step`` is torch's one wrapper function, whose graphs count
    together against ``recompile_limit`` (8): about 5 per SpectralKron (first step, then
    one per phase), so a test that compiles three needs more."""
    torch._dynamo.reset()
    cfg = torch._dynamo.config
    limit = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    with cfg.patch(**{limit: 32}):
        yield
    torch._dynamo.reset()


def _model() -> nn.Module:
    torch.manual_seed(0)  # a 3×4 and two stacked 3×3 Kronecker weights, diagonal biases
    return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3))


def _grads(model: nn.Module, t: int) -> None:
    model.zero_grad()
    model(X + 0.1 * t).square().mean().backward()


def _steps(model, opt, step, ts) -> None:
    for t in ts:
        _grads(model, t)
        step()


def _equal(ma, oa, mb, ob) -> None:
    for a, b in zip(ma.parameters(), mb.parameters()):
        assert torch.equal(a, b)
        sa, sb = oa.state[a], ob.state[b]
        assert sa.keys() == sb.keys()
        for k in sa:
            assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def _compiled(opt, counter=None):
    return torch.compile(opt.step, fullgraph=True, backend=counter or "eager")


# Each test below traces the whole ``SpectralKron.step`` (one graph per schedule phase, 17-39 s
# each on a CPU): ``slow``, so that ``-m "not slow"`` stays under two minutes (CI runs them);
# the quick run keeps the hot-path and post-processing compilations above.
@pytest.mark.slow
def test_compiled_step_equals_eager_bitwise():
    kw = dict(update_interval=3, precond_warmup=2, reorth_interval=2, cayley="quadratic")
    phases, refreshes = set(), 0
    for t in range(8):
        first, refresh, reorth = optim.schedule(t, refreshes, **kw)
        phases.add((first, refresh, reorth))
        refreshes += refresh
    T, F = True, False
    assert phases == {(T, T, F), (F, T, T), (F, F, F), (F, T, F)}  # every phase is covered

    me, mc = _model(), _model()
    oe, oc = SpectralKron(me.parameters(), **OPTS), SpectralKron(mc.parameters(), **OPTS)
    counter = CompileCounterWithBackend("eager")
    step = _compiled(oc, counter)
    _steps(mc, oc, step, range(8))
    graphs = counter.frame_count
    assert 1 < graphs <= 6  # the first call and one graph per phase, not one per step
    oc.state_dict()  # folds the compiled skip count in place: the graphs still match
    _steps(mc, oc, step, range(8, 12))  # phases seen before: no new graph
    assert counter.frame_count == graphs
    _steps(me, oe, oe.step, range(12))
    _equal(me, oe, mc, oc)
    assert int(oc.state[mc[0].weight]["refreshes"]) == 5  # t = 0, 1, 3, 6, 9


@pytest.mark.slow
def test_compiled_nonfinite_gradient_is_skipped():
    """``nonfinite="skip"``: parameters, momentum, factors and ``rejected`` stay as they were
    (a refresh step, so the factors would change); the counters advance (the schedule is
    fixed when the graph is built) and ``skipped_steps`` counts it."""
    model = _model()
    opt = SpectralKron(model.parameters(), nonfinite="skip", **OPTS)
    step = _compiled(opt)
    _steps(model, opt, step, range(3))
    before = copy.deepcopy((list(model.parameters()), opt.state_dict()["state"]))
    _grads(model, 3)
    model[2].weight.grad[0, 1] = float("nan")
    step()
    after = (list(model.parameters()), opt.state_dict()["state"])
    for a, b in zip(before[0], after[0]):
        assert torch.equal(a, b)
    for i, st in before[1].items():
        for k, v in st.items():
            want = v + 1 if k in ("step", "refreshes") else v
            assert torch.equal(after[1][i][k], want), (i, k)
    assert opt.skipped_steps == 1 and opt.state_dict()["param_groups"][0]["skipped_steps"] == 1
    _steps(model, opt, step, [4])
    assert all(bool(p.isfinite().all()) for p in model.parameters())
    assert not torch.equal(model[0].weight, before[0][0]) and opt.skipped_steps == 1


@pytest.mark.slow
def test_compiled_raise_skips_with_one_notice(monkeypatch):
    """A graph cannot raise on data: as torch's optimizers mask a step on ``found_inf``, the
    compiled step skips it, and says so once, while dynamo traces."""
    monkeypatch.setattr(sct._compile, "_NOTICE", [])
    model = _model()
    opt = SpectralKron(model.parameters(), **OPTS)
    step = _compiled(opt)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _steps(model, opt, step, range(2))
        _grads(model, 2)
        model[0].bias.grad[0] = float("inf")
        w = model[0].weight.detach().clone()
        step()
    notes = [w for w in seen if "cannot raise" in str(w.message)]
    assert len(notes) == 1 and torch.equal(model[0].weight, w) and opt.skipped_steps == 1


@pytest.mark.slow
def test_state_dict_of_compiled_run_resumes_like_eager():
    """4 compiled steps, ``state_dict`` through ``torch.save``, 4 more steps (eager, compiled,
    or on a deep copy) equal 8 eager steps."""
    ref = _model()
    oref = SpectralKron(ref.parameters(), **OPTS)
    _steps(ref, oref, oref.step, range(8))

    model = _model()
    opt = SpectralKron(model.parameters(), **OPTS)
    _steps(model, opt, _compiled(opt), range(4))
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    for how in ("eager", "compiled", "deepcopy"):
        m, o = copy.deepcopy((model, opt))  # one memo: the copy steps the copied parameters
        if how != "deepcopy":
            o = SpectralKron(m.parameters(), **OPTS)
            buf.seek(0)
            o.load_state_dict(torch.load(buf, weights_only=True))
        _steps(m, o, o.step if how == "eager" else _compiled(o), range(4, 8))
        _equal(ref, oref, m, o)


@pytest.mark.slow
def test_guide_example_runs(monkeypatch):
    """The ``torch.compile`` example of docs/guide/torch.md runs (on the eager backend)."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "guide" / "torch.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    (code,) = [b for b in blocks if "torch.compile(" in b]
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, **{**kw, "backend": "eager"}))
    exec(compile(code, "docs/guide/torch.md", "exec"), {"__name__": "guide_torch"})


def _broken_backend(gm, inputs):
    raise RuntimeError("no C++ compiler here")


def test_compile_step_falls_back_to_eager_with_one_warning():
    """A backend that cannot compile (inductor without a compiler, say): ``compile_step`` warns
    once and steps eagerly, bitwise the eager optimizer's steps (the failed compilation
    changed no state)."""
    from spectral_curv.torch import CompileFallbackWarning, compile_step

    me, mc = _model(), _model()
    oe, oc = SpectralKron(me.parameters(), **OPTS), SpectralKron(mc.parameters(), **OPTS)
    step = compile_step(oc, backend=_broken_backend)
    with pytest.warns(CompileFallbackWarning, match="no C\\+\\+ compiler here"):
        _steps(mc, oc, step, range(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)  # warned once, not every step
        _steps(mc, oc, step, range(1, 5))
    _steps(me, oe, oe.step, range(5))
    _equal(me, oe, mc, oc)


@pytest.mark.slow
def test_compile_step_compiles_and_equals_eager_bitwise():
    """Where compiling works (dynamo's ``eager`` backend here), ``compile_step`` runs the
    graphs, one per schedule phase, and gives the eager numbers bit for bit."""
    from spectral_curv.torch import CompileFallbackWarning, compile_step

    me, mc = _model(), _model()
    oe, oc = SpectralKron(me.parameters(), **OPTS), SpectralKron(mc.parameters(), **OPTS)
    counter = CompileCounterWithBackend("eager")
    step = compile_step(oc, backend=counter)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        _steps(mc, oc, step, range(8))
    assert 1 < counter.frame_count <= 6
    _steps(me, oe, oe.step, range(8))
    _equal(me, oe, mc, oc)


def test_compile_step_checks_layout_options_eagerly():
    """A graph cannot raise, so the check of the options that fix a parameter's state
    (``max_precond_dim``, ``eigenvalues``, ``graft`` changed after its first step) runs
    eagerly in ``compile_step`` before the compiled step (found by a review: the compiled
    step ignored the change and the state dict it wrote did not load)."""
    w = nn.Parameter(torch.randn(6, 4))
    opt = SpectralKron([w], lr=0.01)
    step = sct.compile_step(opt, backend="eager")
    w.grad = torch.randn(6, 4)
    step()
    opt.param_groups[0]["max_precond_dim"] = 4
    before = {k: v.clone() for k, v in opt.state[w].items()}
    with pytest.raises(ValueError, match="max_precond_dim"):
        step()
    for k, v in opt.state[w].items():
        assert torch.equal(v, before[k]), k
