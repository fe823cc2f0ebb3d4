"""A stage's cache key moves only when code the stage runs changes (``tasks.common.module_code_hash``)."""

from __future__ import annotations

from pathlib import Path

from tasks.common import module_code_hash, source_closure


def test_stage_closure_holds_what_the_stage_imports_and_nothing_else() -> None:
    closure = source_closure("tasks.export")
    assert {"tasks.export", "asr_optimize.model.onnx_files", "asr_optimize.quality.parity"} <= set(closure)
    assert "asr_optimize.loadtest.soak" not in closure and "asr_optimize.triton.hotswap" not in closure
    assert not any(name.startswith(("flows", "benchmarks", "tools")) for name in closure)


def write_package(root: Path) -> None:
    pkg = root / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "stage.py").write_text("def build():\n    from pkg.helper import value  # a lazy import counts\n"
                                  "    return value()\n")
    (pkg / "helper.py").write_text('"""Helper."""\nfrom pkg import deep\n\ndef value():\n    return deep.X\n')
    (pkg / "deep.py").write_text("X = 1\n")
    (pkg / "unrelated.py").write_text('"""Never imported by the stage."""\nY = 2\n')


def test_docstring_edit_in_unrelated_module_keeps_key_edit_in_imported_module_moves_it(tmp_path: Path) -> None:
    write_package(tmp_path)

    def key() -> str:
        module_code_hash.cache_clear()  # cached per process: code does not change under a running flow
        return module_code_hash("pkg.stage", roots=(tmp_path,), first_party=("pkg",))

    assert set(source_closure("pkg.stage", roots=(tmp_path,), first_party=("pkg",))) == {
        "pkg", "pkg.stage", "pkg.helper", "pkg.deep"}
    before = key()
    (tmp_path / "pkg" / "unrelated.py").write_text('"""Reworded docstring."""\nY = 2\n')
    assert key() == before
    (tmp_path / "pkg" / "deep.py").write_text("X = 2\n")  # two imports away, through the lazy one
    assert key() != before
