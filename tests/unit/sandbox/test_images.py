"""Image names follow their content; prebuilt images cover package sets."""

from __future__ import annotations

from sandbox import images
from sandbox.config import PrebuiltImage
from tests.unit.sandbox.conftest import reconfigure


def fresh_hash(runtime: str) -> str:
    images.image_hash.cache_clear()
    return images.image_hash(runtime)


def test_the_image_tag_changes_with_the_launcher_and_the_base_image(engine):
    before = fresh_hash("python")
    assert images.image_name("python") == f"isol8-unit-python:{before}"
    launcher = next(p for p in (engine.images_dir / "common").rglob("*.py") if "launcher" in str(p))
    launcher.write_text(launcher.read_text() + "\n# changed\n")
    changed = fresh_hash("python")
    assert changed != before
    reconfigure(engine, base_image="debian:bookworm-slim")
    assert fresh_hash("python") != changed
    images.image_hash.cache_clear()


def test_compiled_files_do_not_change_the_tag(engine):
    before = fresh_hash("bash")
    cache = engine.images_dir / "common" / "__pycache__"
    cache.mkdir(exist_ok=True)
    (cache / "x.cpython-311.pyc").write_bytes(b"\0")
    assert fresh_hash("bash") == before
    images.image_hash.cache_clear()


def test_a_prebuilt_image_covers_only_subsets_of_its_packages_for_its_runtime(engine):
    reconfigure(engine, prebuilt_images=(PrebuiltImage(tag="py-data:1", runtime="python", packages=("numpy", "Six")),))
    covering = images.covering_image(runtime="python", packages=["six"])
    assert covering is not None and covering.tag == "py-data:1"
    assert images.covering_image(runtime="python", packages=["six", "requests"]) is None
    assert images.covering_image(runtime="node", packages=["six"]) is None
    assert images.covering_image(runtime="python", packages=[]) is None


def test_prebuilt_package_names_are_checked_like_requests():
    assert images.package_names_valid("python", ["six", "numpy==2.0"])
    assert not images.package_names_valid("python", ["--extra-index-url=http://x"])
    assert not images.package_names_valid("bash", ["six"])
