"""What `pip install` puts in site-packages: `jaxrl_lm` and nothing else at the
top level (the repository's envs/ folder installs as `jaxrl_lm.envs`), and
every package folder of the repository is in pyproject.toml's list."""

import pathlib
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _setuptools_table() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _folder_of(package: str, package_dir: dict) -> pathlib.Path:
    for name, folder in package_dir.items():
        if package == name or package.startswith(name + "."):
            return ROOT / folder / package[len(name) + 1:].replace(".", "/")
    return ROOT / package.replace(".", "/")


def test_every_package_folder_is_listed():
    table = _setuptools_table()
    listed = set(table["packages"])
    folders = {_folder_of(p, table["package-dir"]) for p in listed}
    on_disk = {p.parent for top in ("jaxrl_lm", "envs") for p in (ROOT / top).rglob("__init__.py")}
    assert on_disk - folders == set(), "package folders missing from pyproject.toml's list"
    assert all((f / "__init__.py").exists() for f in folders)
    assert all(p == "jaxrl_lm" or p.startswith("jaxrl_lm.") for p in listed)


@pytest.mark.slow
def test_wheel_has_one_top_level_package(tmp_path):
    # built from a copy: setuptools writes build/ and *.egg-info next to the source
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("jaxrl_lm", "envs"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(src)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("jaxrl_lm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"jaxrl_lm"}
    assert "jaxrl_lm/envs/__init__.py" in names
    assert "jaxrl_lm/envs/data/wordle_words.txt" in names
    assert "jaxrl_lm/assets/default/tokenizer.json" in names
