"""Static checks of the Dockerfile: what it copies and runs exists, it is pinned, non-root, tini + torchrun."""
import fnmatch
import json
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of the Dockerfile, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, args = line.strip().partition(" ")
            out.append((keyword.upper(), args.strip()))
    return out


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip().rstrip("/") for line in lines if line.strip() and not line.startswith("#")]


def is_ignored(rel_path: str, patterns: list[str]) -> bool:
    parts = Path(rel_path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes for pattern in patterns)


def test_every_copied_source_exists_and_is_not_ignored():
    patterns = dockerignore_patterns()
    copies = [args for keyword, args in instructions() if keyword in ("COPY", "ADD")]
    assert copies, "the Dockerfile copies nothing"
    for args in copies:
        tokens = [t for t in shlex.split(args) if not t.startswith("--")]
        for source in tokens[:-1]:
            path = ROOT / source
            assert path.exists(), f"Dockerfile copies {source}, which does not exist"
            assert not is_ignored(source.rstrip("/"), patterns), f"{source} is excluded by .dockerignore"


def test_files_named_in_run_commands_exist():
    """Every repository file a RUN line refers to (requirements/*.txt, scripts/*.sh, ...) exists,
    and everything pip installs from is copied before that RUN."""
    copied: list[str] = []
    checked = 0
    for keyword, args in instructions():
        if keyword == "COPY":
            copied += [t.rstrip("/") for t in shlex.split(args)[:-1]]
        if keyword != "RUN":
            continue
        for token in re.findall(r"[\w./-]+\.(?:txt|sh|py|toml)\b", args):
            if token.startswith("/"):
                continue
            assert (ROOT / token).is_file(), f"RUN refers to {token}, which does not exist"
            assert any(token == c or token.startswith(c + "/") for c in copied), f"{token} used before COPY"
            checked += 1
    assert checked >= 2  # the pinned requirement files at least


def test_base_image_pinned_entrypoint_torchrun_user_not_root():
    steps = instructions()
    base = [args for keyword, args in steps if keyword == "FROM"]
    assert len(base) == 1 and re.search(r":\d+\.\d+\.\d+-", base[0]), base  # a patch version, not a moving tag
    assert "latest" not in base[0]
    entrypoint = [json.loads(args) for keyword, args in steps if keyword == "ENTRYPOINT"]
    assert entrypoint == [["/usr/bin/tini", "--", "torchrun"]]  # tini as PID 1 reaps orphaned loader workers
    users = [args for keyword, args in steps if keyword == "USER"]
    assert users and users[-1] not in ("root", "0"), users
    # the extras are installed and the runtime knobs set
    assert any(keyword == "RUN" and "[deepspeed,kernels,tune]" in args for keyword, args in steps)
    env = " ".join(args for keyword, args in steps if keyword == "ENV")
    assert "WDS_SECURE=1" in env


def test_no_data_or_credentials_in_the_image():
    patterns = dockerignore_patterns()
    for path in ("data/x.png", "runs/r/checkpoints/last.pt", "shards/demo/manifest.json", ".venv/bin/python",
                 "mlflow.db", ".git/config", ".env"):
        assert is_ignored(path, patterns), f"{path} would be sent to the docker build"
    for keyword, args in instructions():
        if keyword in ("ENV", "ARG"):
            assert not re.search(r"(TOKEN|PASSWORD|SECRET|API_KEY|AWS_|MLFLOW_TRACKING_PASSWORD)", args, re.I), args


def test_git_sha_is_a_build_argument_baked_into_the_image():
    """`docker build --build-arg GIT_SHA=$(git rev-parse HEAD)`: the image has no .git, so the commit reaches
    MLflow (mlflow.source.git.commit, git_sha) through DIAS_GIT_SHA; a label records it too. It is
    declared after every RUN, so a new commit invalidates no installed layer."""
    steps = instructions()
    keywords = [keyword for keyword, _ in steps]
    arg_at = next(i for i, (keyword, args) in enumerate(steps) if keyword == "ARG" and args.startswith("GIT_SHA"))
    assert max(i for i, keyword in enumerate(keywords) if keyword == "RUN") < arg_at
    env = " ".join(args for keyword, args in steps[arg_at:] if keyword == "ENV")
    assert re.search(r"\bDIAS_GIT_SHA=\$\{?GIT_SHA\}?", env), env
    labels = " ".join(args for keyword, args in steps if keyword == "LABEL")
    assert re.search(r"org\.opencontainers\.image\.revision=\$\{?GIT_SHA\}?", labels), labels
    assert "--build-arg GIT_SHA=" in (ROOT / "docs" / "docker.md").read_text()
