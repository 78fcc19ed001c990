"""Packaging rules: names that must not shadow other packages, subpackages that must exist."""

import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_no_top_level_modules_shadowing_common_packages():
    for name in ("datasets", "kernels"):
        assert not (ROOT / name).exists() and not (ROOT / f"{name}.py").exists()


def test_subpackages_import():
    for sub in ("probes", "compressors", "kernels", "datasets", "fingerprint", "models", "runner", "cli"):
        importlib.import_module(f"kvfp.{sub}")


def test_packaged_model_is_package_data():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"kvfp.models" = ["kvfp-tiny/*"]' in text
