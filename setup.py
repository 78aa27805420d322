# The C extension gives the rings real acquire/release ordering (see amqscale/ipc/_atomics.c).
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("amqscale.ipc._atomics", ["amqscale/ipc/_atomics.c"], extra_compile_args=["-O2"]),
    ]
)
