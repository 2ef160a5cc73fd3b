"""`mclstexp app`: serve the demo app (Gradio) — slide in, gene maps, domains and .h5ad out."""

from __future__ import annotations

import argparse

from ._options import add_command, add_device_option


def _app(args: argparse.Namespace) -> int:
    from mclstexp_hub.app import launch

    print(f"mclstexp app: serving on http://{args.host}:{args.port} (Ctrl-C stops it)",
          flush=True)
    launch(model=args.model, device=args.device, host=args.host, port=args.port)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers, "app",
        "serve the demo web app (Gradio): upload a slide, see gene maps and domains", """
        Starts the demo app of app.py (the Hugging Face Spaces entry point) on HOST:PORT:
        choose a checkpoint (folder or Hub id), upload an H&E image and a spots CSV (or
        tile the tissue), run, browse gene maps (and neighbour_spread when the model gives it),
        spatial domains (PCA -> k-means) and download the prediction (.h5ad). Needs the
        `app` extra: pip install 'mclstexp-hub[app]'.""")
    p.add_argument("--model", default=None,
                   help="checkpoint folder or Hub id preselected in the app "
                        "(default: $MCLSTEXP_APP_MODEL)")
    p.add_argument("--port", type=int, default=7860, help="port (7860)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (127.0.0.1; 0.0.0.0 serves the network)")
    add_device_option(p)
    p.set_defaults(func=_app)
