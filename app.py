"""Hugging Face Spaces entry point (``app_file``): build the UI from the catalog and launch it."""

from playground.ui import launch

if __name__ == "__main__":
    launch()
