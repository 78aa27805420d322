# The C extensions: _atomics gives the rings real acquire/release ordering (see
# amqscale/ipc/_atomics.c); _ccodec is the codec's optional fast path (amqscale/_ccodec.c),
# the pure-Python codec being the reference and the fallback.
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("amqscale.ipc._atomics", ["amqscale/ipc/_atomics.c"], extra_compile_args=["-O2"]),
        Extension("amqscale._ccodec", ["amqscale/_ccodec.c"], extra_compile_args=["-O2"]),
    ]
)
