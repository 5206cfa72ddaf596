"""The package as a user installs it: a wheel, built through the sdist as an index would, that carries
the vocabulary, the configs and the sample dialogues, and commands that work from a folder with no
checkout around it."""

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ["vocab/vocab.txt", "data/train.txt", "data/valid.txt",
           *sorted(f"configs/{p.name}" for p in (ROOT / "configs").glob("*.json"))]


def run(args, **kw):
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, **kw)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def build(hook: str, source: Path, out: Path) -> Path:
    """Call setuptools' PEP 517 hook in `source`, offline, as `pip wheel --no-build-isolation` would."""
    code = f"import sys; from setuptools import build_meta; print(build_meta.{hook}(sys.argv[1]))"
    name = run([sys.executable, "-c", code, str(out)], cwd=source).stdout.split()[-1]
    return out / name


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("build")
    # Build from a copy of what the build reads: setuptools writes build/ and *.egg-info beside the sources.
    source = tmp / "checkout"
    shutil.copytree(ROOT / "chatbot", source / "chatbot", ignore=shutil.ignore_patterns("__pycache__"))
    for relative in ["pyproject.toml", "README.md", "LICENSE", *SHIPPED]:
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / relative, source / relative)
    sdist = build("build_sdist", source, tmp / "dist")
    with tarfile.open(sdist) as archive:
        # Python >= 3.12 warns without a filter; 3.10's and 3.11's first releases have none.
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        archive.extractall(tmp / "unpacked", **safe)
    (unpacked,) = (tmp / "unpacked").iterdir()
    return build("build_wheel", unpacked, tmp / "dist")


def test_wheel_carries_the_checkouts_vocab_configs_and_sample(wheel):
    with zipfile.ZipFile(wheel) as archive:
        for relative in SHIPPED:
            assert archive.read(f"chatbot/bundled/{relative}") == (ROOT / relative).read_bytes(), relative
        names = archive.namelist()
    assert {"chatbot/resources.py", "chatbot/cli.py", "chatbot/serve/static/chat.html"} <= set(names)
    assert not [n for n in names if n.startswith(("tests/", "vocab/", "configs/", "data/"))]


def test_commands_work_from_a_folder_with_no_checkout(wheel, tmp_path):
    site, work = tmp_path / "site", tmp_path / "work"
    work.mkdir()
    run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target", str(site),
         str(wheel)])
    env = dict(os.environ, PYTHONPATH=str(site), HF_HUB_OFFLINE="1", CHATBOT_CACHE=str(tmp_path / "cache"))
    where = run([sys.executable, "-c", "import chatbot; print(chatbot.__file__)"], env=env, cwd=work).stdout
    assert where.strip() == str(site / "chatbot" / "__init__.py")

    # No data, model or vocabulary flags: the bundled sample, tiny config and vocabulary, into ./model.
    run([site / "bin" / "chatbot-train", "--max-steps", "2", "--batch-size", "4", "--quiet"],
        env=env, cwd=work)
    args = json.loads((work / "model" / "final" / "training_args.json").read_text(encoding="utf-8"))
    bundled = site / "chatbot" / "bundled"
    assert (args["train"], args["valid"], args["vocab"], args["config"], args["max_len"]) == (
        str(bundled / "data" / "train.txt"), str(bundled / "data" / "valid.txt"),
        str(bundled / "vocab" / "vocab.txt"), "tiny", 256)
    assert (work / "model" / "best").is_dir()  # validated on the bundled validation dialogues
    chat = run([site / "bin" / "chatbot-chat", "--max-len", "3", "--seed", "1", "--no-transcript",
                "--history-file", str(tmp_path / "history")], env=env, cwd=work, input="你好\n")
    assert len(chat.stdout.splitlines()) == 1


def test_wheel_carries_the_license(wheel):
    with zipfile.ZipFile(wheel) as archive:
        (license_file,) = [n for n in archive.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
        assert archive.read(license_file) == (ROOT / "LICENSE").read_bytes()
        metadata = archive.read(next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA")))
    assert b"License-Expression: MIT" in metadata
