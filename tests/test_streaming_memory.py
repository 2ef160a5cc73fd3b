"""A pyramidal slide streams through `mclstexp predict --tile`: memory does not grow with it.

The slide here is 8,192 × 8,192 px (192 MiB as raw RGB). The test measures, in child
processes, the peak RSS of a full tiled prediction and of the same process stopping right
after loading the model and opening the slide; the difference — what predicting costs — must
stay far below the slide's raw size, which a flat decode would need at least once. A memory
bound, not a timing: `benchmarks/bench_memory.py` runs the 20,000-spot version.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

SIDE = 8192


def _peak_rss_mib(code: str) -> float:
    script = textwrap.dedent(code) + textwrap.dedent("""
        import resource
        print("PEAK", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("PEAK")][-1]
    return float(line.split()[1])


@pytest.mark.slow
def test_tiled_prediction_on_a_pyramid_streams(synthetic, tmp_path):
    pytest.importorskip("tiffslide")
    from mclstexp_hub.synthetic import tiled_canvas, write_pyramidal_tiff

    big = tiled_canvas(np.asarray(Image.open(synthetic.image).convert("RGB")), SIDE, SIDE)
    slide = write_pyramidal_tiff(tmp_path / "big.tif", big)
    raw_mib = big.nbytes / 2**20
    del big
    setup = f"""
        from mclstexp_hub.prediction.predict import load_pipeline
        from mclstexp_hub.models.mclstexp.slide_io_mclstexp import PyramidSlide, open_slide
        pipe = load_pipeline({str(synthetic.checkpoint)!r}, device="cpu")
        s = open_slide({str(slide)!r})
        assert isinstance(s, PyramidSlide), type(s)
        s.thumbnail(2000)
    """
    baseline = _peak_rss_mib(setup)
    out = tmp_path / "pred.h5ad"
    predict = setup + f"""
        from mclstexp_hub.cli import main
        code = main(["predict", "--model", {str(synthetic.checkpoint)!r}, "--image",
                     {str(slide)!r}, "--tile", "--tile-pitch", "128", "--out", {str(out)!r},
                     "--quiet", "--device", "cpu"])
        assert code == 0
    """
    peak = _peak_rss_mib(predict)
    import anndata as ad

    adata = ad.read_h5ad(out)
    assert adata.n_obs > 1500  # thousands of patches went through
    added = peak - baseline
    print(json.dumps({"baseline_mib": baseline, "peak_mib": peak, "raw_slide_mib": raw_mib,
                      "n_spots": adata.n_obs}))
    assert added < 0.5 * raw_mib, json.dumps({"baseline": baseline, "peak": peak,
                                              "raw_slide_mib": raw_mib})
