"""The demo app (Gradio, Hugging Face Spaces convention): H&E slide → gene maps, domains, .h5ad.

`app.py` at the repository root (what a Space runs) and `mclstexp app` both start it:

* `mclstexp_hub.app.core` — the work, without Gradio: load and cache the pipeline, predict a
  slide into `pred.h5ad`, find spatial domains, draw the pictures, turn errors into messages;
* `mclstexp_hub.app.ui` — the Gradio page around it (imports gradio; `pip install
  'mclstexp-hub[app]'`).

Importing this package is cheap (no gradio, torch or transformers).
"""

from __future__ import annotations

MODEL_ENV = "MCLSTEXP_APP_MODEL"  # default checkpoint (folder or Hub id) shown in the app
DEVICE_ENV = "MCLSTEXP_APP_DEVICE"  # "cpu" / "cuda"; default: cuda when available


def build_app(model: str | None = None, device: str | None = None):
    """The Gradio Blocks of the demo (not launched)."""
    from .ui import build_app as _build

    return _build(model=model, device=device)


def launch(model: str | None = None, device: str | None = None, host: str | None = None,
           port: int | None = None, **kwargs):
    """Build and serve the app (blocks until stopped). `host`/`port` None: Gradio's defaults
    (`GRADIO_SERVER_NAME` / `GRADIO_SERVER_PORT`, as on Spaces, else 127.0.0.1:7860)."""
    from .ui import launch as _launch

    return _launch(model=model, device=device, host=host, port=port, **kwargs)


__all__ = ["DEVICE_ENV", "MODEL_ENV", "build_app", "launch"]
