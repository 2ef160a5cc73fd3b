"""The Gradio page of the demo app: inputs on the left, maps on the right, errors as a message.

Needs the `app` extra (`pip install 'mclstexp-hub[app]'`: gradio). Element ids (`#image`,
`#spots`, `#run`, `#status`, `#gene`, `#gene-map`, `#neighbour_spread-map`, `#domains-map`,
`#download`) are stable: tests/test_app.py drives the page by them.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a demo

from . import core

logger = logging.getLogger(__name__)

MAP_HEIGHT = 420  # px of the neighbour_spread and domain panels (side by side under the gene map)
TITLE = "mclSTExp: spatial gene expression from H&E"
INTRO = """\
# mclSTExp — spatial gene expression from H&E
Upload an H&E image and the spot positions (a CSV with `pixel_x`, `pixel_y` in full-resolution
pixels, optionally `spot_id`), or let the app tile the tissue. The model predicts each spot's
expression by retrieving similar spots of its spot bank; you get a map per gene, spatial
domains (k-means on the PCA of the predictions) and the AnnData (`.h5ad`) to download.
"""


def work_root() -> Path:
    """Where runs write their folders (served to the browser: passed as an allowed path)."""
    root = Path(os.environ.get("MCLSTEXP_APP_WORK_DIR")
                or Path(tempfile.gettempdir()) / "mclstexp-app")
    root.mkdir(parents=True, exist_ok=True)
    return root


def _import_gradio():
    try:
        import gradio as gr
    except ImportError as exc:
        raise ImportError(
            "the demo app needs gradio: pip install 'mclstexp-hub[app]' (or pip install gradio)."
        ) from exc
    return gr


def build_app(model: str | None = None, device: str | None = None):
    """The demo's `gr.Blocks` (not launched). `model`: the preselected checkpoint (default
    `$MCLSTEXP_APP_MODEL`); `device`: "cpu"/"cuda" (default `$MCLSTEXP_APP_DEVICE`, else auto)."""
    gr = _import_gradio()
    model = core.default_model() if model is None else model
    device = device or core.default_device()
    root = work_root()

    def failed(exc: BaseException, uploads: tuple[Any, ...]):
        if not isinstance(exc, core._USER_ERRORS):
            logger.exception("demo app: prediction failed")
        message = core.user_message(exc, uploads)
        return (
            f"**Error:** {message}",
            None,
            gr.update(choices=[], value=None),
            None,
            gr.update(value=None, visible=False),
            None,
            None,
        )

    def run(model_id, image, spots_mode, spots, n_clusters, tile_pitch):
        uploads = (image, spots)
        try:
            result = core.run_prediction(
                model_id, image, spots_mode, spots, int(n_clusters), device=device,
                work_dir=root, tile_pitch=float(tile_pitch) if tile_pitch else None,
            )
            gene_png = core.gene_map(result, result.default_gene)
            neighbour_spread_png = core.neighbour_spread_map(result, result.default_gene)
        except Exception as exc:  # noqa: BLE001 - the page shows a message, not a traceback
            return failed(exc, uploads)
        return (
            result.summary,
            result,
            gr.update(choices=result.genes, value=result.default_gene),
            str(gene_png),
            gr.update(value=str(neighbour_spread_png) if neighbour_spread_png else None,
                      visible=neighbour_spread_png is not None),
            str(result.domains_png) if result.domains_png else None,
            str(result.h5ad),
        )

    def show_gene(result, gene):
        if result is None or not gene:
            return gr.update(), gr.update()
        try:
            gene_png = core.gene_map(result, gene)
            neighbour_spread_png = core.neighbour_spread_map(result, gene)
        except Exception as exc:
            logger.exception("demo app: drawing %s failed", gene)
            raise gr.Error(core.user_message(exc)) from None
        return str(gene_png), gr.update(value=str(neighbour_spread_png) if neighbour_spread_png else None,
                                        visible=neighbour_spread_png is not None)

    def spots_inputs(mode):
        tile = mode == core.SPOTS_TILE
        return gr.update(visible=not tile), gr.update(visible=tile)

    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(INTRO)
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                model_box = gr.Textbox(
                    value=model, label="Checkpoint", elem_id="model",
                    placeholder="a checkpoint folder, or a Hub model id org/name",
                    info="local folder or Hugging Face Hub id (default: $MCLSTEXP_APP_MODEL)",
                )
                image = gr.File(label="H&E image (JPEG / PNG / TIFF / SVS …)", elem_id="image",
                                file_types=list(core.IMAGE_TYPES), type="filepath")
                spots_mode = gr.Radio(list(core.SPOT_MODES), value=core.SPOTS_CSV,
                                      label="Spots", elem_id="spots-mode")
                spots = gr.File(label="Spots CSV (pixel_x, pixel_y[, spot_id])",
                                elem_id="spots", file_types=list(core.SPOTS_TYPES),
                                type="filepath")
                tile_pitch = gr.Number(value=None, label="Tile pitch (full-resolution px; "
                                       "empty = the model's patch size)", visible=False,
                                       elem_id="tile-pitch", minimum=0)
                n_clusters = gr.Slider(2, 12, value=core.DEFAULT_N_CLUSTERS, step=1,
                                       label="Spatial domains (k-means on PCA of predictions)",
                                       elem_id="n-clusters")
                run_button = gr.Button("Run", variant="primary", elem_id="run")
                status = gr.Markdown("Choose a checkpoint, upload a slide, then **Run**.",
                                     elem_id="status")
                download = gr.File(label="Prediction (.h5ad)", elem_id="download",
                                   interactive=False)
            with gr.Column(scale=2):
                gene = gr.Dropdown(choices=[], label="Gene", elem_id="gene", interactive=True,
                                   filterable=True)
                gene_img = gr.Image(label="Gene map", type="filepath", elem_id="gene-map",
                                    interactive=False)
                with gr.Row():
                    neighbour_spread_img = gr.Image(label="Neighbour spread", type="filepath",
                                               elem_id="neighbour_spread-map", interactive=False,
                                               visible=False, height=MAP_HEIGHT)
                    domains_img = gr.Image(label="Spatial domains", type="filepath",
                                           elem_id="domains-map", interactive=False,
                                           height=MAP_HEIGHT)
        spots_mode.change(spots_inputs, spots_mode, [spots, tile_pitch])
        run_button.click(
            run, [model_box, image, spots_mode, spots, n_clusters, tile_pitch],
            [status, state, gene, gene_img, neighbour_spread_img, domains_img, download],
        )
        gene.input(show_gene, [state, gene], [gene_img, neighbour_spread_img])
    return demo


def launch_kwargs(host: str | None = None, port: int | None = None) -> dict[str, Any]:
    """`Blocks.launch` arguments: where to listen and which run folders may be served."""
    return {"server_name": host, "server_port": port, "allowed_paths": [str(work_root())],
            "footer_links": ["gradio"]}


def launch(model: str | None = None, device: str | None = None, host: str | None = None,
           port: int | None = None, **kwargs: Any):
    """Build the app and serve it (blocks until interrupted)."""
    demo = build_app(model=model, device=device)
    return demo.launch(**{**launch_kwargs(host, port), **kwargs})


__all__ = ["build_app", "launch", "launch_kwargs", "work_root"]
