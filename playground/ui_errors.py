"""What the page refuses (an empty prompt, a bad seed, an unknown run): a message for the visitor.

Gradio prints the traceback of every ``gr.Error`` to the app's log: 28 lines for a typo, 30
attendees' typos in a workshop's log. A refusal is expected; its message says all there is."""

from __future__ import annotations

import gradio as gr


class Refused(gr.Error):
    def __init__(self, message: str, title: str = "Error") -> None:
        super().__init__(message, title=title, print_exception=False)
