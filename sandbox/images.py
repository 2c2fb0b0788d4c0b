"""Sandbox images: named by a hash of what they are built from, built without a registry.

An image is tagged ``<prefix>-<runtime>:<hash>`` where the hash covers its
Dockerfile, the shared files (images/common: the launcher, the user setup),
the local CA certificates and the base image's name: an unchanged image is not
rebuilt, and a worker always runs the image that matches its code. The base
image is pulled when a registry is reachable, or made with debootstrap.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path

from sandbox import dockerapi
from sandbox.config import PrebuiltImage, current
from sandbox.errors import SandboxError
from sandbox.runtimes import RUNTIMES

Log = Callable[[str], None]
LABEL_MANAGED = "isol8.managed"
LABEL_IMAGE = "isol8.image"
# The python image with the scientific stack, for stateful python sessions
# (plots, DataFrames); plain runs keep the slim python image.
SCIENCE = "python-science"


def extra_ca_files() -> list[Path]:
    """Local CA certificates the images must trust (ISOL8_EXTRA_CA_DIR).

    Machines whose egress goes through a TLS-intercepting proxy trust its CA
    locally; package installs inside the sandboxes need it too.
    """
    folder = current().extra_ca_dir
    return sorted(folder.glob("*.crt")) if folder.is_dir() else []


@cache
def image_hash(runtime: str) -> str:
    """Content hash of what the runtime's image is built from, and the base image.

    Computed once per process: a worker keeps using the image that matches the
    code it started with.
    """
    images = current().images_dir
    if runtime == SCIENCE:  # built FROM the python image: its hash and its own Dockerfile
        digest = hashlib.sha256(image_hash("python").encode())
        digest.update((images / SCIENCE / "Dockerfile").read_bytes())
        return digest.hexdigest()[:12]
    digest = hashlib.sha256(current().base_image.encode())
    common = sorted(p for p in (images / "common").rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for path in [images / runtime / "Dockerfile", *common, *extra_ca_files()]:
        digest.update(str(path.relative_to(images) if path.is_relative_to(images) else path.name).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def image_name(runtime: str) -> str:
    return f"{current().image_prefix}-{runtime}:{image_hash(runtime)}"


def image_exists(name: str) -> bool:
    return dockerapi.image_labels(name) is not None


@cache
def science_image() -> str | None:
    """The python-science image for a stateful python session, when it is configured and built.

    Looked up once per process, like ``image_hash``: a session's start asks
    the engine nothing more (the image is built before the worker starts).
    """
    if not current().science_image:
        return None
    name = image_name(SCIENCE)
    return name if image_exists(name) else None


def build_science_image(*, log: Log, force: bool = False) -> None:
    """Build python-science when configured (after the python image, which it starts FROM)."""
    if current().science_image:
        build_image(SCIENCE, log=log, force=force)


def missing_images(runtimes: list[str] | tuple[str, ...]) -> list[str]:
    return [image_name(rt) for rt in runtimes if not image_exists(image_name(rt))]


def ensure_base_image(log: Log) -> None:
    """Make the base image exist: pull it, or debootstrap it when there is no registry."""
    base = current().base_image
    if image_exists(base):
        return
    if not base.startswith("isol8-base:"):
        log(f"pulling base image {base}")
        dockerapi.pull_image(base)
        return
    if shutil.which("debootstrap") is None:
        raise SandboxError("debootstrap is not installed (apt-get install debootstrap)")
    suite = base.split(":", 1)[1]
    mirror = current().debian_mirror
    log(f"building base image {base} with debootstrap ({suite}, {mirror})")
    with tempfile.TemporaryDirectory(prefix="isol8-rootfs-") as rootfs:
        subprocess.run(["debootstrap", "--variant=minbase", suite, rootfs, mirror], check=True,
                       stdout=subprocess.DEVNULL)
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        assert tar.stdout is not None
        dockerapi.import_image(tar.stdout, repository=base.split(":")[0], tag=suite)
        tar.wait()
    if not image_exists(base):
        raise SandboxError(f"importing {base} failed")


def build_image(runtime: str, *, log: Log, force: bool = False) -> str:
    name = image_name(runtime)
    if not force and image_exists(name):
        log(f"{name} is up to date")
        return name
    log(f"building {name}")
    with tempfile.TemporaryDirectory(prefix="isol8-build-") as context:
        # The build context: images/ plus the local CA certificates in common/ca/.
        shutil.copytree(current().images_dir, context, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
        ca_dir = Path(context) / "common" / "ca"
        ca_dir.mkdir(exist_ok=True)
        for cert in extra_ca_files():
            shutil.copy(cert, ca_dir / cert.name)
        _build(name, runtime, context, log)
    remove_old_images(runtime, keep=name, log=log)
    return name


def remove_old_images(runtime: str, *, keep: str, log: Log) -> None:
    """Drop this runtime's earlier builds (other content hashes) that no container uses.

    Only images this project built (its prefix and label) are touched; one a
    container still runs from (a live session) stays until a later build.
    """
    repository = f"{current().image_prefix}-{runtime}"
    for image_id, tags in dockerapi.list_images(repository, label=f"{LABEL_MANAGED}=true"):
        old = [t for t in tags if t.startswith(f"{repository}:") and t != keep]
        if old and keep not in tags and dockerapi.remove_image(image_id):
            log(f"  removed old image {', '.join(old)}")


def _build(name: str, runtime: str, context: str, log: Log) -> None:
    dockerfile = f"{runtime}/Dockerfile"
    if not (Path(context) / dockerfile).exists():
        dockerfile = "Dockerfile"
    buildargs = {"BASE_IMAGE": current().base_image}
    if runtime == SCIENCE:
        buildargs["PYTHON_IMAGE"] = image_name("python")
    for chunk in dockerapi.build_image(
        context=context, dockerfile=dockerfile, tag=name, buildargs=buildargs,
        labels={LABEL_MANAGED: "true", LABEL_IMAGE: runtime},
    ):
        if "error" in chunk:
            raise SandboxError(f"building {name}: {chunk['error'].strip()}")
        text = chunk.get("stream", "").strip()
        if text.startswith("Step "):
            log(f"  {text}")


# ------------------------------------------------------------------ prebuilt


def package_names_valid(runtime: str, packages: list[str] | tuple[str, ...]) -> bool:
    installer = RUNTIMES[runtime].installer
    return installer is not None and all(installer.name_pattern.match(p) for p in packages)


def build_prebuilt(image: PrebuiltImage, *, log: Log) -> None:
    """Bake the image's packages into its tag on top of the runtime's image (isol8's prebuiltImages).

    Skipped when the tag exists and was built from the current runtime image
    with the same packages. Build-time installs are the operator's own config,
    so they use the build's network directly.
    """
    if not package_names_valid(image.runtime, image.packages):
        raise SandboxError(f"prebuiltImages {image.tag}: invalid package names for {image.runtime}")
    base = image_name(image.runtime)
    wanted = ",".join(sorted(image.packages))
    labels = dockerapi.image_labels(image.tag)
    if labels is not None and labels.get("isol8.base") == base and labels.get("isol8.packages") == wanted:
        log(f"{image.tag} is up to date")
        return
    log(f"building prebuilt image {image.tag} ({image.runtime}: {wanted})")
    install = json.dumps([*RUNTIMES[image.runtime].prebuilt_install, *sorted(image.packages)])
    dockerfile = "\n".join([
        f"FROM {base}",
        "USER root",
        "ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt",
        f"RUN {install}",
        f'LABEL isol8.managed="true" isol8.base="{base}" isol8.packages="{wanted}" isol8.prebuilt="{image.tag}"',
    ])
    with tempfile.TemporaryDirectory(prefix="isol8-prebuilt-") as context:
        (Path(context) / "Dockerfile").write_text(dockerfile + "\n")
        _build(image.tag, image.runtime, context, log)


def build_prebuilt_images(log: Log) -> None:
    """Build the config's prebuiltImages that are missing or out of date."""
    for image in current().prebuilt_images:
        build_prebuilt(image, log=log)


def covering_image(*, runtime: str, packages: list[str]) -> PrebuiltImage | None:
    """A prebuilt image whose packages include all of these, if any (none without packages)."""
    if not packages:
        return None
    wanted = {p.lower() for p in packages}
    for image in current().prebuilt_images:
        if image.runtime == runtime and wanted <= {p.lower() for p in image.packages}:
            return image
    return None
