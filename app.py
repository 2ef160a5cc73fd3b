"""Hugging Face Spaces entry point: the mclSTExp demo app (Gradio).

Spaces run this file; the app itself lives in `mclstexp_hub.app` (also `mclstexp app`).
Set `MCLSTEXP_APP_MODEL` (a checkpoint folder or Hub id) to preselect the model.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # a checkout works without install

from mclstexp_hub.app.ui import build_app, launch_kwargs

demo = build_app()

if __name__ == "__main__":
    demo.launch(**launch_kwargs())
