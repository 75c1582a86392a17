from conftest import asarray, to_numpy
from spectral_curv import full


def test_roundtrip(xp, jit):
    st = full.init(4, xp=xp)
    g = asarray(xp, [1.0, 2.0, 3.0, 4.0])
    f = jit(lambda s, g: full.update_gop(s, g, beta2=0.1))
    st = f(st, g)
    st = f(st, g)
    assert to_numpy(st.d).shape == (4,)
