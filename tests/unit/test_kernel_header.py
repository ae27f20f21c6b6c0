"""The C kernels' header (``kernels/tuneloop.h``) and the ctypes signatures in ``native`` agree.

Read from the header's text: no compiled library needed. A function whose argument count or
types, or return type, differ between C and Python, or that one side lacks, fails the test.
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import shutil
import subprocess

import pytest

from tuneloop.engine import native

Signature = tuple[type | None, list[type]]

#: C types of kernel arguments and results -> ctypes (any pointer is a ``c_void_p``: a data_ptr())
C_TYPES: dict[str, type | None] = {
    "void": None,
    "int": ctypes.c_int,
    "int32_t": ctypes.c_int32,
    "int64_t": ctypes.c_int64,
    "float": ctypes.c_float,
    "double": ctypes.c_double,
}


def ctype(declaration: str, named: bool) -> type | None:
    """The ctypes type of a C declaration (``const float *x`` -> c_void_p); ``named``: it ends with a name."""
    if "*" in declaration:
        return ctypes.c_void_p
    words = [w for w in declaration.split() if w not in ("const", "volatile", "restrict")]
    if named:
        words = words[:-1]
    if len(words) != 1 or words[0] not in C_TYPES:
        raise ValueError(f"no ctypes type for C declaration {declaration!r}")
    return C_TYPES[words[0]]


def declarations(header: str) -> dict[str, Signature]:
    """Every ``tl_*`` function declared in a header's text: (return type, argument types)."""
    text = re.sub(r"/\*.*?\*/|//[^\n]*", " ", header, flags=re.S)
    text = re.sub(r"^\s*#[^\n]*", " ", text, flags=re.M)
    found: dict[str, Signature] = {}
    for result, name, arguments in re.findall(r"([\w\s*]+?)\s*\b(tl_\w+)\s*\(([^)]*)\)\s*;", text):
        args = [a for a in arguments.split(",") if a.strip() and a.strip() != "void"]
        found[name] = (ctype(result, named=False), [ctype(a, named=True) for a in args])
    return found


def disagreements(header: dict[str, Signature], table: dict[str, Signature]) -> list[str]:
    problems = [f"{name}: declared in tuneloop.h, not in native.SIGNATURES" for name in header.keys() - table.keys()]
    problems += [f"{name}: in native.SIGNATURES, not declared in tuneloop.h" for name in table.keys() - header.keys()]
    problems += [
        f"{name}: tuneloop.h says {describe(header[name])}, native.SIGNATURES says {describe(table[name])}"
        for name in sorted(header.keys() & table.keys())
        if header[name] != table[name]
    ]
    return problems


def describe(signature: Signature) -> str:
    result, args = signature
    return f"{_name(result)}({', '.join(map(_name, args))})"


def _name(t: type | None) -> str:
    return "void" if t is None else t.__name__


def test_header_and_ctypes_signatures_agree():
    header = declarations(native.HEADER.read_text())
    assert len(header) >= 9  # the parser found the declarations
    assert disagreements(header, native.SIGNATURES) == []


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("float *out, int64_t M, int64_t N);", "float *out, int64_t M, float N);"),  # a type (tl_silu_mul)
        ("float *out, int64_t M, int64_t N);", "float *out, int64_t M, int64_t N, int64_t P);"),  # a count
        ("int tl_qmatmul_i8(", "void tl_qmatmul_i8("),  # a return type
        ("void tl_silu_mul(", "void tl_silu_mul2("),  # a name: missing on both sides
    ],
)
def test_a_changed_declaration_is_caught(old, new):
    text = native.HEADER.read_text()
    assert old in text
    assert disagreements(declarations(text.replace(old, new)), native.SIGNATURES)


def test_every_source_includes_the_header():
    for source in native._SOURCES:
        assert '#include "tuneloop.h"' in source.read_text(), source.name


def test_sources_define_what_the_header_declares():
    """Each source compiles (syntax only) against the header: a definition that differs from its
    declaration is an error, and so is an exported function the header does not declare."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None or platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("needs an x86-64 C compiler")
    flags = ["-fsyntax-only", "-std=c11", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-Werror=missing-prototypes"]
    for extra in ([], ["-mavx512f", "-mavx512bw", "-mavx512vnni"]):  # both variants of each kernel
        for source in native._SOURCES:
            result = subprocess.run([compiler, *flags, *extra, str(source)], capture_output=True, text=True)
            assert result.returncode == 0, result.stderr


def test_built_library_has_every_declared_kernel():
    lib = native.library()
    if lib is None:
        pytest.skip(f"C kernels unavailable: {native.error()}")
    for name, (result, args) in native.SIGNATURES.items():
        function = getattr(lib, name)
        assert (function.restype, list(function.argtypes)) == (result, args), name
