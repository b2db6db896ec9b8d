"""Only the optional native extension; everything else is in setup.cfg."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        # SRTP protect and batched sends for the fan-out. Optional: without a C
        # compiler the pure-Python path (broadcast/media/udp_mux.py) sends the same
        # packets, more slowly.
        Extension(
            "broadcast.media._fanout",
            ["broadcast/media/_fanout.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra"],
            optional=True,
        )
    ]
)
