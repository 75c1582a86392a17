"""The step engine (``optim.Options``, ``buckets``, ``precondition_step``, ``update_param``)
and the edge cases of issue "Reliability" that live in it or in the adapters' thin layers.

Each test below fails on the code before the engine: options defined three times with
drifting defaults, an overflowing first step, float16 factors accepted, OneCycleLR cycling
the grafting betas, unclear errors for int/meta parameters and mismatched dtypes.
"""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest

from spectral_curv import kron, optim


def test_one_set_of_defaults_for_every_adapter():
    defaults = optim.Options().as_dict()
    torch = pytest.importorskip("torch")
    from spectral_curv.numpy import SpectralKron as NumpyKron
    from spectral_curv.torch import SpectralKron as TorchKron

    w = torch.nn.Parameter(torch.zeros(2, 2))
    assert TorchKron([w]).defaults == defaults
    assert NumpyKron({"w": np.zeros((2, 2))}).options == defaults
    pytest.importorskip("optax")
    from spectral_curv import optax as sco

    for fn in (sco.spectral_kron, sco.scale_by_spectral_kron):
        sig = inspect.signature(fn).parameters
        for name, value in defaults.items():
            if name in sig:
                assert sig[name].default == value, (fn.__name__, name)
    assert set(defaults) - {"lr"} <= set(inspect.signature(sco.spectral_kron).parameters)


def test_options_validate_once_and_name_the_option():
    with pytest.raises(ValueError, match="`step_scale`"):
        optim.Options(step_scale="unit")
    with pytest.raises(ValueError, match="`nonfinite`"):
        optim.Options(nonfinite="ignore")
    with pytest.raises(ValueError, match="float16"):
        optim.Options(precond_dtype=np.float16)
    with pytest.raises(TypeError):
        optim.Options(lrr=0.1)  # a misspelt option is not silently ignored
    o = optim.Options(graft_betas=[0.8, 0.9])
    assert o.graft_betas == (0.8, 0.9) and hash(o.replace(lr=0.5).lr) == hash(0.5)


def test_deprecated_names_warn_and_map():
    with pytest.warns(DeprecationWarning, match="graft_betas"):
        out = optim.renamed({"betas": (0.8, 0.9)})
    assert out == {"graft_betas": (0.8, 0.9)}
    with pytest.raises(TypeError, match="both"):
        optim.renamed({"eps": 1e-6, "graft_eps": 1e-7})


def test_first_step_does_not_overflow():
    """A gradient whose square overflows float32 used to make α₀ fall back to 1, so the
    first step was ``lr·G``; now α₀ is formed without overflow and clamped: the step is
    O(1) for |G| up to √max and finite beyond."""
    st = optim.init(optim.plan((4, 3)), (4, 3), dtype=np.float32)
    for scale, bound in ((1e19, 2.0), (1e25, 1e7), (1e38, 1e20)):
        G = np.full((4, 3), scale, dtype=np.float32)
        with np.errstate(over="ignore"):
            s0 = optim.first_state(st, G, damping=1e-8)
            u = optim.direction(s0, G, p=2)
        assert np.all(np.isfinite(u)) and float(np.abs(u).max()) <= bound, scale
    diag0 = optim.init(optim.Plan("diag"), (2,), dtype=np.float32)
    with np.errstate(over="ignore"):
        d = optim.first_state(diag0, np.array([1e30, 1.0], dtype=np.float32), damping=0.0)
    assert np.all(np.isfinite(d.d)) and float(d.d[0]) == float(np.finfo(np.float32).max)


def test_kron_rejects_a_gradient_of_another_dtype():
    st = kron.init(3, 2, dtype=np.float32)
    with pytest.raises(ValueError, match="dtype float64 but the state's factors are float32"):
        kron.precondition(st, np.ones((3, 2)), p=2)


def test_first_order_cone_checked_in_kron():
    st = kron.init(3, 2)
    with pytest.raises(ValueError, match="gamma"):
        kron.update_gop(st, np.ones((3, 2)), beta2=0.5, gamma=3.0, exp="first_order")


def test_buckets_group_by_plan_storage_and_schedule():
    o = optim.Options(update_interval=3, precond_warmup=0)
    pk = optim.plan((4, 3))
    b = optim.buckets([(pk, "a", 3, 1), (pk, "b", 3, 1), (pk, "a", 4, 2), (pk, "a", 6, 2)], o)
    got = {(k.storage, k.refresh): v for k, v in b.items()}
    assert got == {("a", True): [0, 3], ("b", True): [1], ("a", False): [2]}


def test_precondition_step_under_lax_cond_matches_python():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(0)
    o = optim.Options()
    pl = optim.plan((4, 3))
    G = rng.standard_normal((4, 3))
    st_np = optim.init(pl, (4, 3), dtype=np.float64)
    st_j = optim.init(pl, (4, 3), dtype=jnp.float64, xp=jnp)

    def run(st: object, G: object, cond: object) -> object:
        return optim.precondition_step(
            [st], [G], first=True, refresh=True, reorth=True, options=o, cond=cond
        )

    ref = run(st_np, G, optim.python_cond)
    got = jax.jit(lambda s, g: run(s, g, jax.lax.cond))(st_j, jnp.asarray(G))
    np.testing.assert_allclose(np.asarray(got[2][0]), ref[2][0], rtol=1e-12, atol=1e-14)
    assert bool(got[1][0]) and bool(ref[1][0])


# ----------------------------------------------------------------------------- torch
def test_one_cycle_lr_drives_the_momentum_the_step_uses():
    torch = pytest.importorskip("torch")
    from spectral_curv.torch import SpectralKron

    w = torch.nn.Parameter(torch.zeros(3, 2))
    opt = SpectralKron([w], lr=0.1)
    assert "betas" not in opt.defaults  # else torch's schedulers would cycle betas[0]
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.1, total_steps=10, cycle_momentum=True, base_momentum=0.5
    )
    seen = []
    for _ in range(4):
        w.grad = torch.ones(3, 2)
        opt.step()
        sched.step()
        seen.append(opt.param_groups[0]["momentum"])
    assert len(set(seen)) > 1 and min(seen) >= 0.5  # cycled, in the scheduler's range


def test_tensor_lr_must_be_one_element():
    torch = pytest.importorskip("torch")
    from spectral_curv.torch import SpectralKron

    w = torch.nn.Parameter(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="Tensor lr must be 1-element"):
        SpectralKron([w], lr=torch.tensor([0.1, 0.2]))


@pytest.mark.parametrize("what", ["int64", "meta", "float16-factors"])
def test_torch_bad_parameters_get_clear_errors(what):
    torch = pytest.importorskip("torch")
    from spectral_curv.torch import SpectralKron

    if what == "float16-factors":
        with pytest.raises(ValueError, match="float16"):
            SpectralKron([torch.nn.Parameter(torch.zeros(2, 2))], precond_dtype=torch.float16)
        return
    if what == "int64":
        w = torch.zeros(3, 2, dtype=torch.int64)
        w.grad = torch.ones(3, 2, dtype=torch.int64)
        match = "floating-point"
    else:
        w = torch.nn.Parameter(torch.zeros(3, 2, device="meta"))
        w.grad = torch.ones(3, 2, device="meta")
        match = "meta"
    opt = SpectralKron([w], lr=0.1)
    with pytest.raises(TypeError, match=match):
        opt.step()
    assert not opt.state  # nothing was created


def test_bf16_and_fp16_params_get_float32_factors():
    torch = pytest.importorskip("torch")
    from spectral_curv.torch import SpectralKron

    for dt in (torch.bfloat16, torch.float16):
        w = torch.nn.Parameter(torch.zeros(3, 2, dtype=dt))
        opt = SpectralKron([w], lr=0.1)
        w.grad = torch.ones(3, 2, dtype=dt)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            opt.step()
        assert opt.state[w]["B_C"].dtype == torch.float32 and w.dtype == dt


# ----------------------------------------------------------------------------- optax
def test_optax_nonfinite_skip_keeps_every_state_under_jit():
    jax = pytest.importorskip("jax")
    pytest.importorskip("optax")
    import optax

    from spectral_curv.optax import spectral_kron

    jnp = jax.numpy
    params = {"w": jnp.ones((4, 3), jnp.float32), "b": jnp.zeros(3, jnp.float32)}
    opt = spectral_kron(1e-2, nonfinite="skip")
    state = opt.init(params)
    upd = jax.jit(opt.update)
    g = jax.tree.map(jnp.ones_like, params)
    u, state = upd(g, state, params)
    params = optax.apply_updates(params, u)
    bad = {**g, "w": g["w"].at[0, 0].set(jnp.nan)}
    u2, state2 = upd(bad, state, params)
    assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(u2))
    same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), state2, state)
    flat = jax.tree_util.tree_leaves_with_path(same)
    changed = [jax.tree_util.keystr(p) for p, v in flat if not v]
    assert changed == [".inner_state[0].skipped"] or all("skipped" in c for c in changed)
    assert int(state2[0].skipped) == 1


def test_optax_nonfinite_raise_raises():
    jax = pytest.importorskip("jax")
    pytest.importorskip("optax")
    from spectral_curv.optax import scale_by_spectral_kron

    jnp = jax.numpy
    tx = scale_by_spectral_kron()
    g = {"w": jnp.full((2, 2), jnp.nan)}
    with pytest.raises(ValueError, match="NaN or inf"):
        tx.update(g, tx.init(g))  # eager: at once
    with pytest.raises(Exception, match="NaN or inf"):  # jit: from the host callback
        jax.block_until_ready(jax.jit(tx.update)(g, tx.init(g)))


def test_optax_complex_params_raise():
    jax = pytest.importorskip("jax")
    pytest.importorskip("optax")
    from spectral_curv.optax import spectral_kron

    with pytest.raises(TypeError, match="real floating"):
        spectral_kron(1e-2).init({"w": jax.numpy.ones((2, 2), jax.numpy.complex64)})


@pytest.mark.slow  # jit compilations (~5 s)
def test_optax_rejected_refresh_warns_once():
    jax = pytest.importorskip("jax")
    pytest.importorskip("optax")
    from spectral_curv.optax import scale_by_spectral_kron

    jnp = jax.numpy
    tx = scale_by_spectral_kron()
    g = {"w": jnp.ones((3, 2), jnp.float32)}
    state = tx.init(g)
    _, state = tx.update(g, state)
    huge = {"w": jnp.full((3, 2), 1e30, jnp.float32)}  # finite; its square overflows
    with pytest.warns(optim.RejectedRefreshWarning):
        _, state = tx.update(huge, state)
    assert int(state.rejected["w"]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", optim.RejectedRefreshWarning)
        _, state = tx.update(huge, state)  # once per transform
    assert int(state.rejected["w"]) == 2


@pytest.mark.parametrize("p", [2.0, 1.5])
@pytest.mark.parametrize("step", [0, 1, 10])
def test_bucket_step_equals_each_parameter_alone(p, step):
    """``optim.bucket_step`` (Kronecker layers stacked, diagonal parameters concatenated, the
    p2 size per parameter) gives each parameter what ``precondition_step`` gives it alone,
    and counts a rejected refresh for the parameter it belongs to (an inf in its gradient)."""
    rng = np.random.default_rng(step)
    o = optim.Options(p=p, update_interval=2)  # step 1: no refresh
    for shape, n in (((4, 3), 3), ((5,), 4)):
        pl = optim.plan(shape)
        sts = []
        for _ in range(n):  # some history: other factors per parameter
            st = optim.init(pl, optim.matrix_shape(pl, shape))
            G = rng.standard_normal(shape).reshape(optim.matrix_shape(pl, shape))
            st = optim.first_state(st, G, damping=1e-8)
            sts.append(optim.refresh(st, G, **o.refresh_kwargs())[0] if step else st)
        grads = [rng.standard_normal(shape) for _ in range(n)]
        grads[2][0] = np.inf
        ((key, _),) = optim.buckets([(pl, "cpu", step, step)] * n, o).items()
        with np.errstate(all="ignore"):
            res = optim.bucket_step(sts, grads, key, o)
            alone = [
                optim.precondition_step(
                    [st],
                    [g.reshape(optim.matrix_shape(pl, shape))],
                    first=key.first,
                    refresh=key.refresh,
                    reorth=key.reorth,
                    options=o,
                )
                for st, g in zip(sts, grads)
            ]
        for st, u, (new, _, us) in zip(res.states, res.directions, alone):
            for a, b in zip(st, new[0]):
                if a is not None:
                    np.testing.assert_allclose(a, b, rtol=1e-12, atol=0)
            np.testing.assert_allclose(u, us[0].reshape(u.shape), rtol=1e-12, atol=0)
        want = [int(not np.all(oks[0])) for _, oks, _ in alone]
        got = [0] * n if res.rejected is None else res.rejected.tolist()
        assert got == want == [int(key.refresh and i == 2) for i in range(n)]


def test_rms_clip_of_a_huge_finite_update_clips_it():
    """A finite float32 update whose squares overflow (|U| ≳ 1.8e19, e.g. ``step_scale="raw"``
    with ``p < 1`` and tiny gradients) was scaled by ``c/inf = 0``: a zero step, silently
    (found by an outside fuzz). Its RMS now comes from the entries scaled by the largest, in
    the generic route, the torch fast path and JAX alike."""
    u = np.array([1e20, -1e20, 0.0, 3e19], dtype=np.float32)
    want = u.astype(np.float64) * (3.0 / np.sqrt(np.mean(u.astype(np.float64) ** 2)))
    with np.errstate(over="ignore"):
        got = optim.clip_rms(u, 3.0)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    o = optim.Options(max_update_rms=3.0, lr=1.0, momentum=0.0)
    slots = [optim.Slots(np.zeros(4, np.float32))]
    with np.errstate(over="ignore"):
        new, _ = optim.update_params(
            [np.zeros(4, np.float32)], [u], [u], slots, steps=[1], options=o
        )
    np.testing.assert_allclose(new[0], -want, rtol=1e-6)
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(u)
    for mom in (0.0, 0.9):  # the foreach fast path, with and without momentum
        o = optim.Options(max_update_rms=3.0, lr=1.0, momentum=mom)
        new, _ = optim.update_params(
            [torch.zeros(4)], [t], [t], [optim.Slots(torch.zeros(4))], steps=[1], options=o
        )
        np.testing.assert_allclose(new[0].numpy(), -want, rtol=1e-6)
    jnp = pytest.importorskip("jax.numpy")
    np.testing.assert_allclose(np.asarray(optim.clip_rms(jnp.asarray(u), 3.0)), want, rtol=1e-5)
    for empty in (np.zeros((0,), np.float32), jnp.zeros((3, 0))):  # no largest entry
        assert optim.clip_rms(empty, 3.0).shape == empty.shape


def test_foreach_end_of_step_keeps_each_parameter_dtype():
    """Clipped updates of float32 and float64 parameters in one call: the norms were stacked
    into float64, and a 0-d float32 parameter came back float64 (the NumPy adapter on torch
    tensors then refused the next step; found by an outside fuzz)."""
    torch = pytest.importorskip("torch")
    o = optim.Options(max_update_rms=0.1, lr=0.5, momentum=0.0)
    ps = [torch.tensor(0.5), torch.zeros(3, dtype=torch.float64), torch.ones(2)]
    us = [torch.tensor(2.0), torch.ones(3, dtype=torch.float64), torch.ones(2)]
    for mom, nesterov in ((0.0, False), (0.9, True), (0.9, False)):
        o = o.replace(momentum=mom, nesterov=nesterov)
        slots = [optim.Slots(torch.zeros_like(u)) for u in us]
        new, sl = optim.update_params(ps, us, us, slots, steps=[1] * 3, options=o)
        assert [w.dtype for w in new] == [p.dtype for p in ps]
        assert [s.momentum_buffer.dtype for s in sl] == [p.dtype for p in ps]
        from spectral_curv.numpy import SpectralKron

        opt = SpectralKron([p.clone() for p in ps], max_update_rms=0.1, momentum=mom)
        qs = [p.clone() for p in ps]
        for _ in range(3):  # a later step checks the dtypes it is given
            qs = opt.step(qs, us)
        assert [q.dtype for q in qs] == [p.dtype for p in ps]
