"""Tests of the backend dispatch table ``spectral_curv.backends`` (fast paths vs generic route)."""

from __future__ import annotations

import contextlib
import importlib
import subprocess
import sys
import types

import array_api_compat
import numpy as np
import pytest

from conftest import _load, asarray, backend, to_numpy
from spectral_curv import backends, baselines, maps, optim

#: Every op a backend module registers, by backend; the test below checks TABLE has no others.
EXPECTED = {
    "cayley_apply_neumann": {"torch"},
    "cayley_apply_quadratic": {"torch"},
    "cayley_apply_quartic": {"torch"},
    "cayley_apply_exact": {"torch"},
    "damped_generator": {"torch"},
    "gram": {"torch"},
    "known_all": {"torch"},
    "match_norm": {"torch"},
    "unstack": {"torch"},
    "newton_schulz5": {"torch"},
    "segment_direction": {"torch"},
    "update_params": {"torch"},
}


def _load_all_fast_paths() -> None:
    """Import every fast-path module whose framework is installed (fills TABLE)."""
    for name in backends._MODULES:
        try:
            _load(name)
        except pytest.skip.Exception:
            continue
        backends.lookup("cayley_apply_exact", _load(name))


def _cases(prefix: str = "cayley_apply_"):
    """(op, backend) pairs of TABLE (and of EXPECTED, so a missing entry is reported) whose op
    starts with ``prefix``."""
    _load_all_fast_paths()
    pairs = {(op, be) for op, impls in backends.TABLE.items() for be in impls}
    pairs |= {(op, be) for op, bes in EXPECTED.items() for be in bes}
    return sorted((op, be) for op, be in pairs if op.startswith(prefix))


def _rand_skew(rng, shape, fro):
    a = rng.standard_normal(shape)
    x = a - np.swapaxes(a, -1, -2)
    return x * (fro / np.linalg.norm(x, axis=(-2, -1), keepdims=True))


@pytest.mark.parametrize(("op", "be"), _cases())
@pytest.mark.parametrize("batch", [(), (3,), (2, 2)])
def test_fast_path_equals_generic_route(op, be, batch):
    xp = _load(be)  # skips when the framework is absent
    impl = backends.lookup(op, xp)
    assert impl is not None, f"no fast path registered for {op} on {be}"
    assert impl is backends.TABLE[op][be]
    mode = op.removeprefix("cayley_apply_")
    n = 6
    eye = np.eye(n)
    for terms in [0, 1, 3] if mode == "neumann" else [1]:
        rng = np.random.default_rng(terms + 10 * len(batch))
        x = asarray(xp, _rand_skew(rng, (*batch, n, n), 0.6))
        b = asarray(xp, rng.standard_normal((*batch, n, n)))
        fast = maps.cayley_apply(b, x, mode=mode, terms=terms)
        direct = impl(b, x, terms)
        with backends.generic_only():
            assert backends.lookup(op, xp) is None
            generic = maps.cayley_apply(b, x, mode=mode, terms=terms)
        assert backends.lookup(op, xp) is impl  # the context manager restores dispatch
        # the damped rule's step guard (max_norm) takes the same path in both
        for rho in (0.1, 10.0):
            guarded = maps.cayley_apply(b, x, mode=mode, terms=terms, max_norm=rho)
            with backends.generic_only():
                ref_g = maps.cayley_apply(b, x, mode=mode, terms=terms, max_norm=rho)
            np.testing.assert_allclose(to_numpy(guarded), to_numpy(ref_g), rtol=0, atol=1e-12)
        assert fast.dtype == generic.dtype == xp.float64
        assert tuple(fast.shape) == tuple(generic.shape) == (*batch, n, n)
        f, gen = to_numpy(fast), to_numpy(generic)
        np.testing.assert_allclose(f, gen, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(to_numpy(direct), f)
        # both are B·Cayley(X) (exact) or B·(I+X)²Π(I+X^{2^k}) (neumann), checked in numpy
        xn, bn = to_numpy(x), to_numpy(b)
        if mode == "exact":
            ref = bn @ ((eye + xn) @ np.linalg.inv(eye - xn))
        elif mode == "quadratic":
            ref = bn @ (eye + 2 * xn + 2 * xn @ xn)
        elif mode == "quartic":
            a1, a2, c = maps.QUARTIC_COEFFS
            ref = bn @ (eye + a1 * xn + c * xn @ xn) @ (eye + a2 * xn + c * xn @ xn)
        else:
            prod = (eye + xn) @ (eye + xn)
            y = xn @ xn
            for _ in range(terms):
                prod = prod @ (eye + y)
                y = y @ y
            ref = bn @ prod
        np.testing.assert_allclose(f, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("op", "be"), _cases("damped_generator"))
@pytest.mark.parametrize("batch", [(), (3,), (2, 2)])
def test_damped_generator_fast_path_equals_generic_route(op, be, batch):
    """``maps.rotation_generator`` (damped rule, symmetric ``W``) through the fast path equals
    the generic route, and both equal the formula ``X = −s·Wδ/(δ² + κ²(2sW)²)`` in numpy,
    with a scalar scale and with a per-matrix array scale (as ``kron`` passes it)."""
    xp = _load(be)
    impl = backends.lookup(op, xp)
    assert impl is not None and impl is backends.TABLE[op][be]
    rng = np.random.default_rng(len(batch))
    n = 7
    a = rng.standard_normal((*batch, n, 3))
    w64 = a @ np.swapaxes(a, -1, -2)
    d64 = rng.uniform(0.5, 2.0, (*batch, n))
    d64[..., 1] = d64[..., 0]  # an exact tie: no rotation of that pair
    for s64 in (0.05, rng.uniform(0.01, 0.2, (*batch, 1, 1))):
        w, d = asarray(xp, w64), asarray(xp, d64)
        s = s64 if isinstance(s64, float) else asarray(xp, s64)
        fast = maps.rotation_generator(w, d, s, symmetric=True)
        with backends.generic_only():
            generic = maps.rotation_generator(w, d, s, symmetric=True)
        diff = d64[..., :, None] - d64[..., None, :]
        ref = -s64 * w64 * diff / (diff**2 + maps.DAMPED_KAPPA2 * (2 * s64 * w64) ** 2)
        assert fast.dtype == generic.dtype
        np.testing.assert_allclose(to_numpy(fast), to_numpy(generic), rtol=0, atol=1e-14)
        np.testing.assert_allclose(to_numpy(fast), ref, rtol=1e-12, atol=1e-15)
        assert np.all(to_numpy(fast)[..., 1, 0] == 0.0)
    # the inputs are not modified (the fast path works in place on its own temporaries)
    np.testing.assert_array_equal(to_numpy(w), w64)
    np.testing.assert_array_equal(to_numpy(d), d64)


@pytest.mark.parametrize("be", sorted(EXPECTED["gram"]))
@pytest.mark.parametrize(
    ("shape", "transposed"),
    [((5, 7), False), ((256, 40), False), ((300, 300), True), ((2, 513, 64), False)],
)
def test_gram_fast_path_equals_x_xT(be, shape, transposed):
    """The blocked ``x xᵀ`` (split from 256 rows on) against float64 NumPy: the same entries to
    round-off, for odd sizes, batches and a transposed view."""
    from spectral_curv import _array

    xp = _load(be)
    x64 = np.random.default_rng(7).standard_normal(shape)
    for dtype, tol in ((xp.float64, 1e-12), (xp.float32, 1e-4)):
        if transposed:  # a non-contiguous view (x = yᵀ), as orthonormalize passes Bᵀ
            x = asarray(xp, np.ascontiguousarray(np.swapaxes(x64, -1, -2)), dtype).mT
        else:
            x = asarray(xp, x64, dtype)
        g = backends.lookup("gram", xp)(x)
        ref = to_numpy(x).astype(np.float64)
        ref = ref @ np.swapaxes(ref, -1, -2)
        got = to_numpy(g)
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.abs(ref).max())
        # the mirrored off-diagonal blocks are exactly symmetric
        if shape[-2] >= 256:
            h = shape[-2] // 2
            np.testing.assert_array_equal(got[..., h:, :h], np.swapaxes(got[..., :h, h:], -1, -2))
        np.testing.assert_array_equal(to_numpy(_array.gram(x)), got)
        with backends.generic_only():
            generic = to_numpy(_array.gram(x))
        np.testing.assert_allclose(got, generic, rtol=tol, atol=tol * np.abs(ref).max())


@pytest.mark.parametrize("be", sorted(EXPECTED["match_norm"]))
@pytest.mark.parametrize("p", [1.0, 1.5, 4.0, 0.5])
def test_match_norm_fast_path_equals_generic_route(be, p):
    """The fused ``match_norm`` against the generic route and a float64 NumPy reference
    (``v ⊙ Π d^{-1/p}`` at the norm of ``ref``), per stacked matrix, with a spectrum wide
    enough that ``d^{-1/p}`` alone would overflow float32 at p = 0.5; ``v`` is not modified."""
    xp = _load(be)
    rng = np.random.default_rng(3)
    v64 = rng.standard_normal((3, 4, 5))
    d1 = np.exp(rng.uniform(-40.0, 40.0, (3, 4, 1)))
    d2 = np.exp(rng.uniform(-5.0, 5.0, (3, 1, 5)))
    ref64 = rng.standard_normal((3, 4, 5))
    out64 = v64 * np.exp(-(np.log(d1) + np.log(d2)) / p)
    want = out64 * (
        np.linalg.norm(ref64, axis=(-2, -1), keepdims=True)
        / np.linalg.norm(out64, axis=(-2, -1), keepdims=True)
    )
    args = [asarray(xp, a) for a in (v64, d1, d2, ref64)]
    fast = maps.match_norm(args[0], args[1:3], p=p, ref=args[3], axes=(-2, -1))
    with backends.generic_only():
        generic = maps.match_norm(args[0], args[1:3], p=p, ref=args[3], axes=(-2, -1))
    np.testing.assert_allclose(to_numpy(fast), to_numpy(generic), rtol=1e-12, atol=0)
    np.testing.assert_allclose(to_numpy(fast), want, rtol=1e-9, atol=0)
    np.testing.assert_array_equal(to_numpy(args[0]), v64)
    f32 = [asarray(xp, a, xp.float32) for a in (v64, d1, d2, ref64)]
    u32 = to_numpy(maps.match_norm(f32[0], f32[1:3], p=p, ref=f32[3], axes=(-2, -1)))
    assert np.all(np.isfinite(u32))
    np.testing.assert_allclose(u32, want, rtol=2e-4, atol=1e-6 * np.abs(want).max())


@pytest.mark.parametrize("be", sorted(EXPECTED["newton_schulz5"]))
@pytest.mark.parametrize("shape", [(6, 4), (4, 6)])
def test_newton_schulz5_fast_path_equals_generic_route(be, shape):
    """torch.optim.Muon's ``addmm`` loop against the generic products (wide and tall)."""
    xp = _load(be)
    g = asarray(xp, np.random.default_rng(4).standard_normal(shape))
    fast = baselines.newton_schulz5(g)
    with backends.generic_only():
        generic = baselines.newton_schulz5(g)
    np.testing.assert_allclose(to_numpy(fast), to_numpy(generic), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("be", sorted(EXPECTED["segment_direction"]))
@pytest.mark.parametrize("with_ref", [False, True])
def test_segment_direction_fast_path_equals_generic_route(be, with_ref):
    """The scatter-reduce ``segment_direction`` against the generic per-slice route (and its
    ``ref`` shortcut: the ``p = 2`` step given instead of formed), with empty segments."""
    xp = _load(be)
    rng = np.random.default_rng(5)
    sizes = [3, 0, 5, 1, 0]
    d64, g64 = np.exp(rng.uniform(-20, 20, 9)), rng.standard_normal(9)
    d, g = asarray(xp, d64), asarray(xp, g64)
    ref = asarray(xp, g64 / np.sqrt(d64)) if with_ref else None
    fast = optim.segment_direction(d, g, sizes, p=1.5, ref=ref)
    with backends.generic_only():
        generic = optim.segment_direction(d, g, sizes, p=1.5, ref=ref)
    np.testing.assert_allclose(to_numpy(fast), to_numpy(generic), rtol=1e-12, atol=0)


@pytest.mark.parametrize("be", sorted(EXPECTED["update_params"]))
@pytest.mark.parametrize(
    "opts",
    [
        {},
        {"momentum": 0.0},
        {"nesterov": True},
        {"max_update_rms": 0.3, "weight_decay": 0.1},
        {"max_update_rms": 0.3, "nesterov": True},
        {"max_update_rms": 0.3, "momentum": 0.0},
        {"graft": "adam", "weight_decay": 0.1},
    ],
)
def test_update_params_fast_path_equals_generic_route(be, opts):
    """The ``torch._foreach_*`` end of a step against ``optim.update_param`` per parameter,
    for the fused options and the ones it hands back (grafting; a float32 parameter of a
    float64 direction), two steps so that momentum is used; its inputs are not changed; its
    in-place form (the torch optimizer's) gives the same bits."""
    xp = _load(be)
    o = optim.Options(lr=0.1, **opts)
    shapes, dts = [(3, 4), (5,), (0,), (2, 2)], [xp.float64, xp.float64, xp.float64, xp.float32]

    def run(mode: str) -> list[np.ndarray]:
        rng = np.random.default_rng(6)
        ps = [asarray(xp, rng.standard_normal(s), dt) for s, dt in zip(shapes, dts)]
        sl = [optim.init_slots(xp, s, o, dtype=xp.float64, device=None) for s in shapes]
        for t in (1, 2):
            us = [asarray(xp, rng.standard_normal(s)) for s in shapes]
            gs = [asarray(xp, rng.standard_normal(s)) for s in shapes]
            if mode == "inplace":  # the torch optimizer's form: into ps and sl
                fast_paths.update_params(ps, gs, us, sl, [t] * 4, o, inplace=True)
                continue
            before = [to_numpy(x).copy() for x in ps + [s.momentum_buffer for s in sl]]
            with backends.generic_only() if mode == "generic" else contextlib.nullcontext():
                new, new_sl = optim.update_params(ps, gs, us, sl, steps=[t] * 4, options=o)
            after = [to_numpy(x) for x in ps + [s.momentum_buffer for s in sl]]
            for a, b in zip(before, after):  # the inputs are not changed
                np.testing.assert_array_equal(a, b)
            ps, sl = new, new_sl
        return [to_numpy(x) for x in ps] + [to_numpy(s.momentum_buffer) for s in sl]

    assert backends.lookup("update_params", xp) is backends.TABLE["update_params"][be]
    fast_paths = importlib.import_module(f"spectral_curv.backends.{be}")
    fast = run("fast")
    for a, b in zip(fast, run("generic")):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-12)
    for a, b in zip(fast, run("inplace")):  # the same bits
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_update_params_in_place_keeps_the_pure_bits_in_low_precision(dtype):
    """``precond_dtype=torch.bfloat16``: in-place foreach ops round the momentum and decay
    factors to bf16 (0.9 → 0.8984), out-of-place ones do not; the torch optimizer's in-place
    end of a step gave other bits than the pure form (found by a review)."""
    torch = pytest.importorskip("torch")
    from spectral_curv.backends import torch as fast_paths

    dt = getattr(torch, dtype)
    o = optim.Options(lr=0.1, momentum=0.9, weight_decay=0.3, max_update_rms=0.5)
    gen = torch.Generator().manual_seed(0)
    ps = [torch.randn(s, generator=gen).to(dt) for s in ((3, 4), (5,))]
    sl = [optim.Slots(torch.randn(p.shape, generator=gen).to(dt)) for p in ps]
    us = [torch.randn(p.shape, generator=gen).to(dt) for p in ps]
    pure, pure_sl = fast_paths.update_params(ps, us, us, sl, [2, 2], o)
    fast_paths.update_params(ps, us, us, sl, [2, 2], o, inplace=True)
    for a, b in zip(
        pure + [s.momentum_buffer for s in pure_sl], ps + [s.momentum_buffer for s in sl]
    ):
        assert torch.equal(a, b)


def test_known_all_reads_only_host_values(xp):
    """``_array.known_all`` says True only for all-true flags it can read without a device
    sync or a traced value (NumPy, array-api-strict, torch on the CPU outside compile), so
    that keep-last-good may skip its ``where``; anywhere else False (the ``where`` route)."""
    from spectral_curv import _array

    ok, bad = xp.asarray([True, True]), xp.asarray([True, False])
    host = backend(xp) in ("numpy", "array_api_strict", "torch")
    assert _array.known_all(xp, ok) is host
    assert _array.known_all(xp, bad) is False
    if backend(xp) == "jax":
        import jax

        seen = []
        jax.jit(lambda f: seen.append(_array.known_all(xp, f)) or f)(ok)
        assert seen == [False]
    if backend(xp) == "torch":
        import torch

        with pytest.MonkeyPatch.context() as mp:  # as while dynamo traces a step
            mp.setattr(torch.compiler, "is_compiling", lambda: True)
            assert _array.known_all(xp, ok) is False
        assert _array.known_all(xp, ok.to("meta")) is False  # not on the CPU
        seen = []
        torch.func.vmap(lambda f: seen.append(_array.known_all(xp, f)) or f)(ok[:, None])
        trace = torch.jit.trace
        trace(
            lambda f: seen.append(_array.known_all(xp, f > 0)) or f, ok.double(), check_trace=False
        )
        assert seen == [False, False]


def test_keep_last_good_under_a_trace():
    """A refresh traced with a good gradient (``torch.jit.trace``) still rejects a later
    non-finite one: keep-last-good is not a Python branch frozen at trace time."""
    torch = pytest.importorskip("torch")
    from spectral_curv import optim

    g = torch.linspace(-1.0, 1.0, 12, dtype=torch.float64).reshape(4, 3)
    pl = optim.plan((4, 3))
    st = optim.first_state(optim.init(pl, (4, 3), xp=optim.namespace(g)), g, damping=0.0)
    st = st._replace(alpha=torch.as_tensor(st.alpha, dtype=torch.float64))

    def refresh(g):
        new, ok = optim.refresh(st, g, precond_lr=0.1)
        return new.alpha, ok

    traced = torch.jit.trace(refresh, (g,), check_trace=False)
    bad = g.clone()
    bad[0, 0] = float("nan")
    alpha, ok = traced(bad)
    assert not bool(ok) and float(alpha) == float(st.alpha)


def test_torch_guard_of_a_large_float32_step():
    """The torch step guard (power iterations, float64 norms) gives float64 NumPy's scale for
    ``‖X‖₂`` from 1e-3 to 1e8 in float32, where ``‖m⁴v‖²`` overflows float32, and lets
    autograd through."""
    torch = pytest.importorskip("torch")
    from spectral_curv.backends import torch as fast

    rng = np.random.default_rng(5)
    a = rng.standard_normal((2, 16, 16))
    x64 = a - np.swapaxes(a, -1, -2)
    x64 /= np.linalg.norm(x64, 2, axis=(-2, -1), keepdims=True)
    xp64 = array_api_compat.array_namespace(x64)
    for size in (1e-3, 1.0, 1e3, 1e6, 1e8):
        x = size * x64
        y = -(x @ np.swapaxes(x, -1, -2))  # X² of a skew X
        want = maps.guard_scale(xp64, y, 0.25, square=True)
        got = fast._guard(torch.tensor(y, dtype=torch.float32), 0.25, True)
        assert got.dtype == torch.float32
        np.testing.assert_allclose(to_numpy(got).astype(np.float64), want, rtol=1e-4)
    x = torch.tensor(x64[0], requires_grad=True)
    maps.cayley_apply(
        torch.eye(16, dtype=torch.float64), x, mode="quadratic", max_norm=0.1
    ).sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("mode", ["quadratic", "quartic", "neumann"])
def test_torch_fast_path_broadcasts_a_shared_basis(mode):
    """A 2-D basis with a batch of generators (leading axes broadcast, as in the generic
    route): the fused ``P + P·F`` takes the broadcasting product instead of failing."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    a = rng.standard_normal((3, 5, 5))
    x = torch.tensor(0.1 * (a - np.swapaxes(a, -1, -2)))
    b = torch.tensor(np.linalg.qr(rng.standard_normal((5, 5)))[0])
    fast = maps.cayley_apply(b, x, mode=mode, terms=2, max_norm=0.25)
    with backends.generic_only():
        generic = maps.cayley_apply(b, x, mode=mode, terms=2, max_norm=0.25)
    assert tuple(fast.shape) == (3, 5, 5)
    np.testing.assert_allclose(to_numpy(fast), to_numpy(generic), rtol=0, atol=1e-12)


def test_namespace_memo_skips_void_dtypes():
    """``_array.array_namespace`` is memoised per type, but a NumPy array of jax's ``float0``
    (which array_api_compat maps to ``jax.numpy``) neither fills nor reads the memo."""
    jax = pytest.importorskip("jax")
    from spectral_curv import _array

    z = np.zeros(2, dtype=jax.dtypes.float0)
    assert _array.array_namespace(z) is array_api_compat.array_namespace(z)
    assert _array.array_namespace(np.ones(2)) is array_api_compat.array_namespace(np.ones(2))
    assert _array.array_namespace(z) is array_api_compat.array_namespace(z)


def test_table_has_the_expected_entries():
    _load_all_fast_paths()
    for op, impls in backends.TABLE.items():
        assert op in EXPECTED, f"untested op {op} in TABLE"
        assert set(impls) <= EXPECTED[op] | {"cupy", "jax"}, impls
    if "torch" in sys.modules:
        for op in EXPECTED:
            assert "torch" in backends.TABLE.get(op, {}), op


def test_torch_fast_path_low_precision():
    """bfloat16 / float16: the exact map is solved in float32 and cast back."""
    torch = pytest.importorskip("torch")
    xp = _load("torch")
    rng = np.random.default_rng(3)
    x64 = _rand_skew(rng, (5, 5), 0.5)
    b64 = np.linalg.qr(rng.standard_normal((5, 5)))[0]
    ref = b64 @ ((np.eye(5) + x64) @ np.linalg.inv(np.eye(5) - x64))
    for dt in (torch.bfloat16, torch.float16):
        x, b = asarray(xp, x64, dt), asarray(xp, b64, dt)
        for mode in ("exact", "neumann", "quadratic", "quartic"):
            out = maps.cayley_apply(b, x, mode=mode, terms=4)
            if mode in ("quadratic", "quartic"):  # O(X³) from Cayley: compare with the map
                ref_m = maps.cayley_apply(b64, x64, mode=mode)
                assert out.dtype == dt
                np.testing.assert_allclose(to_numpy(out.float()), ref_m, rtol=0, atol=5e-2)
                continue
            assert out.dtype == dt
            np.testing.assert_allclose(to_numpy(out.float()), ref, rtol=0, atol=5e-2)


def test_torch_batched_exact_cayley_on_two_threads():
    """Regression: torch 2.13's batched CPU LU failed intermittently on 2 threads ("Pivots
    given to lu_solve must all be greater or equal to 1"), even for I; every n = 512 batch of
    2 or more failed on the project's 2-core machines. The fast path solves a CPU batch one
    matrix at a time; checked against float64 numpy."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        rng = np.random.default_rng(5)
        x64 = _rand_skew(rng, (3, 512, 512), 0.02)
        b64 = np.stack([np.linalg.qr(rng.standard_normal((512, 512)))[0] for _ in range(3)])
        out = maps.cayley_apply(torch.from_numpy(b64), torch.from_numpy(x64), mode="exact")
    finally:
        torch.set_num_threads(threads)
    i = np.eye(512)
    ref = b64 @ np.linalg.solve(i - x64, i + x64)
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-10)


def _apply_exact(b, x):
    return maps.cayley_apply(b, x, mode="exact")


def _apply_neumann(b, x):
    return maps.cayley_apply(b, x, mode="neumann", terms=3)


def _apply_quadratic(b, x):
    return maps.cayley_apply(b, x, mode="quadratic")


def _apply_quartic(b, x):
    return maps.cayley_apply(b, x, mode="quartic")


def test_float32_fast_path_equals_generic(xp, jit):
    """On every backend (fast path or not) float32 stays float32 and agrees with the generic
    route (traced under jax.jit, where the dispatch happens at trace time)."""
    rng = np.random.default_rng(4)
    x = asarray(xp, _rand_skew(rng, (4, 4), 0.4), xp.float32)
    b = asarray(xp, rng.standard_normal((4, 4)), xp.float32)
    for fn in (_apply_exact, _apply_neumann, _apply_quadratic, _apply_quartic):
        out = jit(fn)(b, x)
        with backends.generic_only():
            gen = fn(b, x)
        assert out.dtype == gen.dtype == xp.float32
        np.testing.assert_allclose(to_numpy(out), to_numpy(gen), rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- import hygiene


def test_import_does_not_import_frameworks():
    code = (
        "import sys\n"
        "import numpy as np\n"
        "import spectral_curv\n"
        "from spectral_curv import full, diag, maps, backends\n"
        "st = full.update_gop(full.init(3), np.ones(3), beta2=0.1, cayley='neumann')\n"
        "st = full.update_gop(st, np.arange(3.0), beta2=0.1)\n"
        "diag.update_gop(diag.init(3), np.ones(3), beta2=0.1)\n"
        "bad = [m for m in ('torch', 'jax', 'jaxlib', 'cupy') if m in sys.modules]\n"
        "print(','.join(bad) or 'CLEAN')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "CLEAN", out.stdout + out.stderr


# --------------------------------------------------------------------------- backend_name


def test_backend_name(xp, request):
    expected = request.node.callspec.params["xp"]
    assert backends.backend_name(xp) == expected
    assert backend(xp) == expected
    # the namespace of an actual array maps to the same name
    assert backends.backend_name(array_api_compat.array_namespace(asarray(xp, [1.0]))) == expected


def test_backend_name_plain_modules():
    assert backends.backend_name(np) == "numpy"
    assert backends.backend_name(types.ModuleType("some_other_array_lib")) == "other"
    assert backends.lookup("cayley_apply_exact", np) is None  # numpy has no fast path
