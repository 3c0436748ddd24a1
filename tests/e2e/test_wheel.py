"""A regular (non-editable) install finds the embedded models, tokenizer and corpora."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from helpers.paths import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (path,) = out.glob("neuroscope-*.whl")
    return path


def test_wheel_holds_the_embedded_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for model in ("toy-1l", "toy-1l-solu", "toy-2l"):
        assert f"neuroscope_data/models/{model}/model.safetensors" in names
        assert f"neuroscope_data/models/{model}/bridge_config.json" in names
    assert {"neuroscope_data/tokenizer/tokenizer.json", "neuroscope_data/corpora/code.parquet",
            "neuroscope_data/corpora/prose.parquet", "neuroscope_data/corpora/PROVENANCE.md"} <= names
    assert "indexer/run/engine.py" in names and "indexer/store/query.py" in names


def test_installed_wheel_indexes_toy_1l_from_another_folder(wheel, tmp_path):
    """Install the wheel (no deps: the test venv has them) into a target folder and run it from
    elsewhere, with the source tree off the path."""
    target = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    code = (
        f"import sys; sys.path.insert(0, {str(target)!r})\n"
        "import indexer, indexer.inputs.data as d\n"
        f"assert indexer.__file__.startswith({str(target)!r}), indexer.__file__\n"
        "print(d.data_dir())\n"
        "from indexer.cli import main\n"
        "sys.exit(main(['index', '--model', 'toy-1l', '--corpus', 'code', '--tokens', '600', '--ctx-len', '64',\n"
        f"              '--sites', 'mlp_post', '--out', {str(tmp_path / 'idx')!r}, '--quiet']))\n"
    )
    env_cwd = tmp_path  # not the repository
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=env_cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[0].startswith(str(target))
    assert (tmp_path / "idx" / "manifest.json").is_file()
