# The C extensions: _atomics gives the rings real acquire/release ordering (see
# amqscale/ipc/_atomics.c); _ccodec is the codec's optional fast path (amqscale/_ccodec.c),
# the pure-Python codec being the reference and the fallback; _hotpath is the worker's
# per-message calls into proton (amqscale/workers/_hotpath.c), engine.py's Python the same.
# _clinks: the blocking face's once-a-message calls (amqscale/_clinks.c), links.py the same.
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("amqscale.ipc._atomics", ["amqscale/ipc/_atomics.c"], extra_compile_args=["-O2"]),
        Extension("amqscale._ccodec", ["amqscale/_ccodec.c"], extra_compile_args=["-O2"]),
        Extension("amqscale._clinks", ["amqscale/_clinks.c"], extra_compile_args=["-O2"]),
        Extension("amqscale.workers._hotpath", ["amqscale/workers/_hotpath.c"],
                  extra_compile_args=["-O2"]),
    ]
)
