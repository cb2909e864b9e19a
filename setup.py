"""Build the C wire decoder and jsonpb reader; all other metadata lives in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "flowpipe.codec._wire",
            ["flowpipe/codec/_wire.c"],
            extra_compile_args=["-O2", "-std=c99", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        ),
        Extension(
            "flowpipe.codec._jsonpb",
            ["flowpipe/codec/_jsonpb.c"],
            extra_compile_args=["-O2", "-std=c99", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        ),
    ]
)
