"""The `spatial-gene-expression` pipeline: single patch, batches, whole slides, remote code.

Behaviour runs on every clone, on the synthetic checkpoint and slide of tests/conftest.py
(`synthetic`); only the byte test against the real B4 JPEG needs ../shared/data (`realdata`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from test_pipeline_helpers import BLOCK_PACKAGE, her2st_spots
from transformers import pipeline

from mclstexp_hub.models.mclstexp.pipeline_mclstexp import TASK, MclSTExpPipeline, slide_thumbnail
from mclstexp_hub.models.mclstexp.pixels_mclstexp import scale_pixel_values
from mclstexp_hub.models.mclstexp.slide_io_mclstexp import open_slide as PatchReader
from mclstexp_hub.prediction.predict import ensure_registered, load_pipeline

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(synthetic):
    return synthetic.checkpoint


@pytest.fixture(scope="module")
def pipe(checkpoint):
    # fp32, as `_direct` computes: `auto` is bf16 on a CPU with native bf16 (its parity with
    # fp32 is tests/test_precision.py's concern)
    return load_pipeline(checkpoint, device="cpu", batch_size=4, precision="fp32")


@pytest.fixture(scope="module")
def slide_patches(synthetic):
    """Every 4th spot of the synthetic slide and its patches, as the pipeline's reader cuts them."""
    spots = her2st_spots(synthetic.data_dir, synthetic.slide, every=4)
    with PatchReader(synthetic.image) as slide:
        patches = [slide.read_patch(x, y, synthetic.patch_size)
                   for x, y in spots[["pixel_x", "pixel_y"]].to_numpy()]
    assert len(patches) >= 5
    return spots, patches


def _direct(model, patches, k=None):
    pixels = torch.from_numpy(np.stack(patches)).permute(0, 3, 1, 2)
    pixels = scale_pixel_values(pixels, model.config.pixel_scaling)
    return model.predict_expression(pixel_values=pixels, k=k).expression


def _row(patches):
    """The patches side by side: a slide whose spot i is centred at (size/2 + i·size, size/2)."""
    return Image.fromarray(np.concatenate(patches, axis=1))


def test_registered_task_and_checkpoint_files(checkpoint, pipe, synthetic):
    ensure_registered()
    from transformers.pipelines import PIPELINE_REGISTRY

    assert PIPELINE_REGISTRY.supported_tasks[TASK]["impl"] is MclSTExpPipeline
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["custom_pipelines"][TASK] == {
        "impl": "pipeline_mclstexp.MclSTExpPipeline", "pt": ["AutoModel"], "type": "image"}
    for name in ("pipeline_mclstexp.py", "image_processing_mclstexp.py", "pixels_mclstexp.py",
                 "modeling_mclstexp.py", "spot_bank.safetensors", "preprocessor_config.json"):
        assert (checkpoint / name).is_file(), name
    assert isinstance(pipe, MclSTExpPipeline) and pipe.device.type == "cpu"
    assert pipe.image_processor.patch_size == synthetic.patch_size


def test_single_patch_gives_every_gene_in_panel_order(pipe, slide_patches, synthetic):
    _, patches = slide_patches
    out = pipe(Image.fromarray(patches[0]))
    assert list(out) == synthetic.genes
    expected = _direct(pipe.model, patches[:1])[0]
    assert np.allclose(list(out.values()), expected.numpy(), atol=1e-6)
    top = pipe(Image.fromarray(patches[0]), top_n=5)
    values = list(top.values())
    assert len(top) == 5 and values == sorted(values, reverse=True)
    assert min(values) >= max(v for g, v in out.items() if g not in top)
    raw = pipe(Image.fromarray(patches[0]), return_tensors=True)
    assert raw["expression"].shape == (len(synthetic.genes),)
    assert raw["neighbour_indices"].shape == (synthetic.retrieval_k,)
    assert raw["image_embeds"].shape == (synthetic.projection_dim,)


def test_path_input_and_batches_match_single_calls(pipe, slide_patches, tmp_path):
    _, patches = slide_patches
    paths = []
    for i, patch in enumerate(patches[:5]):
        paths.append(str(tmp_path / f"p{i}.png"))
        Image.fromarray(patch).save(paths[-1])
    batched = pipe(paths, batch_size=2, k=5)
    assert isinstance(batched, list) and len(batched) == 5
    expected = _direct(pipe.model, patches[:5], k=5).numpy()
    got = np.array([list(d.values()) for d in batched])
    assert np.allclose(got, expected, atol=1e-5)
    assert pipe([]) == []


def test_whole_slide_returns_scanpy_ready_anndata(pipe, slide_patches, synthetic):
    spots, patches = slide_patches
    image = synthetic.image
    adata = pipe({"image": str(image), "spots": spots}, batch_size=3)
    assert list(adata.var_names) == synthetic.genes
    assert list(adata.obs_names) == spots["spot_id"].tolist()
    assert np.allclose(adata.obsm["spatial"], spots[["pixel_x", "pixel_y"]].to_numpy())
    assert np.allclose(adata.X, _direct(pipe.model, patches).numpy(), atol=1e-5)
    library = adata.uns["spatial"][image.stem]
    scale = library["scalefactors"]["tissue_hires_scalef"]
    width, height = synthetic.image_size
    assert max(library["images"]["hires"].shape[:2]) == min(2000, max(width, height))
    assert abs(library["images"]["hires"].shape[1] - width * scale) < 1
    info = adata.uns["mclstexp"]
    assert info["units"] == synthetic.metadata["units"]
    assert info["retrieval_k"] == synthetic.retrieval_k
    assert info["spot_bank_n_spots"] == synthetic.n_bank_spots
    assert info["spot_bank_sections"] == synthetic.sections
    # an (n, 2) array of centres works too, with generated spot ids
    arr = pipe({"image": Image.open(image), "spots": spots[["pixel_x", "pixel_y"]].to_numpy()})
    assert arr.obs_names[0] == "spot_0" and np.allclose(arr.X, adata.X, atol=1e-5)


def test_slide_streams_in_batches(pipe, slide_patches, synthetic, monkeypatch):
    """At most `batch_size` patches are read and processed at a time, whatever the slide size."""
    _, patches = slide_patches
    size = synthetic.patch_size
    slide = _row(patches[:4])
    centres = [[size // 2 + size * i, size // 2] for i in range(4)] * 5  # 20 spots
    seen = []
    processor = pipe.image_processor
    original = type(processor).__call__

    def counting(self, images, *args, **kwargs):
        seen.append(len(images) if isinstance(images, list) else 1)
        return original(self, images, *args, **kwargs)

    monkeypatch.setattr(type(processor), "__call__", counting)
    adata = pipe({"image": slide, "spots": centres}, batch_size=3)
    assert adata.n_obs == 20 and max(seen) == 3 and sum(seen) == 20
    assert np.allclose(adata.X[:4], adata.X[4:8])  # same patch, same prediction


def _assert_reader_cuts_training_patches(data_dir, section_name, image, size, every):
    from mclstexp_hub.data.patches import extract_patches
    from mclstexp_hub.data.readers.her2st import read_her2st

    section = read_her2st(data_dir, [section_name])[0][::every]
    assert section.n_obs > 0
    training = extract_patches(section, image, size)
    reader = PatchReader(str(image))
    for (x, y), want in zip(section.obsm["spatial"], training, strict=True):
        assert np.array_equal(reader.read_patch(x, y, size), want)
    edge = reader.read_patch(5.0, 5.0, size)  # beyond the border: white, as in training
    assert edge[0, 0].tolist() == [255, 255, 255]


def test_inference_patches_equal_training_patches(synthetic):
    """The pipeline's own reader cuts exactly the patches the dataset builder trains on."""
    _assert_reader_cuts_training_patches(synthetic.data_dir, synthetic.slide, synthetic.image,
                                         synthetic.patch_size, every=3)


@pytest.mark.realdata
def test_inference_patches_equal_training_patches_on_real_b4(her2st_dir, b4_image):
    """The same on the real B4 JPEG, at the real 224-px spot window."""
    _assert_reader_cuts_training_patches(her2st_dir, "B4", b4_image, 224, every=50)


def test_tiled_tiff_is_read_region_by_region(tmp_path):
    """Pyramidal/tiled TIFFs go through tiffslide and give the same pixels as a flat image."""
    tifffile = pytest.importorskip("tifffile")
    pytest.importorskip("tiffslide")
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(700, 900, 3), dtype=np.uint8)
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, pixels, tile=(256, 256), photometric="rgb")
    tiled, flat = PatchReader(str(path)), PatchReader(pixels)
    assert tiled._slide is not None and (tiled.width, tiled.height) == (900, 700)
    for cx, cy in [(100.0, 100.0), (450.5, 350.2), (899.0, 699.0), (3.0, 690.0)]:
        assert np.array_equal(tiled.read_patch(cx, cy, 224), flat.read_patch(cx, cy, 224))
    thumb, scale = slide_thumbnail(tiled, 300)
    assert thumb.shape[1] == 300 and abs(scale - 300 / 900) < 1e-9


def test_model_without_spot_bank_is_refused(synthetic):
    with pytest.raises(ValueError, match="no spot bank"):
        load_pipeline(synthetic.checkpoint_without_bank, device="cpu")


def test_bad_call_options_are_clear(pipe, slide_patches):
    _, patches = slide_patches
    image = Image.fromarray(patches[0])
    with pytest.raises(ValueError, match="larger than the spot bank"):
        pipe(image, k=10_000)
    with pytest.raises(ValueError, match="top_n"):
        pipe(image, top_n=0)
    with pytest.raises(TypeError, match="unknown option"):
        pipe(image, colour="blue")
    with pytest.raises(ValueError, match="whole-slide input"):
        pipe({"image": image})
    with pytest.raises(FileNotFoundError, match="patch image not found"):
        pipe("/nonexistent/patch.png")


def test_processor_config_mismatch_is_refused(checkpoint, synthetic):
    from mclstexp_hub.models.mclstexp.image_processing_mclstexp import MclSTExpImageProcessor

    ensure_registered()
    with pytest.raises(ValueError, match="patch_size"):
        pipeline(TASK, model=str(checkpoint), pipeline_class=MclSTExpPipeline, device="cpu",
                 image_processor=MclSTExpImageProcessor(patch_size=synthetic.patch_size // 2))


def test_plain_pipeline_call_with_trust_remote_code(checkpoint, slide_patches):
    """With the package installed, `pipeline(task, model=dir, trust_remote_code=True)` works."""
    _, patches = slide_patches
    pipe = pipeline(TASK, model=str(checkpoint), trust_remote_code=True, device="cpu",
                    precision="fp32")
    out = pipe(Image.fromarray(patches[1]))
    assert np.allclose(list(out.values()), _direct(pipe.model, patches[1:2])[0].numpy(), atol=1e-6)


def test_plain_pipeline_call_without_trust_remote_code(checkpoint, slide_patches):
    """With the package installed, `pipeline(task, model=dir)` needs no trust_remote_code.

    config.json still carries `custom_pipelines` (for users without the package: see the next
    test), but the installed, registered pipeline serves the task.
    """
    _, patches = slide_patches
    saved = json.loads((Path(checkpoint) / "config.json").read_text())
    assert TASK in saved["custom_pipelines"]
    pipe = pipeline(TASK, model=str(checkpoint), device="cpu", precision="fp32")
    assert type(pipe) is MclSTExpPipeline
    out = pipe(Image.fromarray(patches[1]))
    assert np.allclose(list(out.values()), _direct(pipe.model, patches[1:2])[0].numpy(), atol=1e-6)


def test_remote_code_load_without_the_package(checkpoint, slide_patches, synthetic, tmp_path):
    """Where mclstexp_hub cannot be imported, the checkpoint's own code serves all inputs."""
    spots, patches = slide_patches
    size = synthetic.patch_size
    centres = [[size // 2, size // 2], [size // 2 + size, size // 2]]
    Image.fromarray(patches[0]).save(tmp_path / "patch.png")
    spots.iloc[:3].to_csv(tmp_path / "spots.csv", index=False)
    reference = load_pipeline(checkpoint, device="cpu")
    expected = list(reference(Image.fromarray(patches[0])).values())
    slide = _row(patches[:2])
    slide.save(tmp_path / "slide.png")
    expected_slide = reference({"image": slide, "spots": centres}).X
    script = BLOCK_PACKAGE + textwrap.dedent(
        f"""
        import json, sys
        import numpy as np
        from transformers import pipeline
        pipe = pipeline({TASK!r}, model={str(checkpoint)!r}, trust_remote_code=True, device="cpu")
        single = pipe({str(tmp_path / "patch.png")!r})
        batch = pipe([{str(tmp_path / "patch.png")!r}] * 3, batch_size=2, top_n=3)
        adata = pipe({{"image": {str(tmp_path / "slide.png")!r}, "spots": {centres!r}}})
        blocked = [m for m in sys.modules if m.startswith("mclstexp_hub")]
        print(json.dumps({{
            "single": list(single.values()), "batch": [list(b) for b in batch],
            "slide": np.asarray(adata.X).tolist(), "blocked": blocked,
            "classes": [type(pipe).__module__, type(pipe.model).__module__,
                        type(pipe.image_processor).__module__],
        }}))
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False,
                          timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["blocked"] == []
    assert all(m.startswith("transformers_modules.") for m in result["classes"])
    assert np.allclose(result["single"], expected, atol=1e-5)
    assert len(result["batch"]) == 3 and len(result["batch"][0]) == 3
    assert np.allclose(result["slide"], expected_slide, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu(checkpoint, slide_patches, synthetic):
    _, patches = slide_patches
    size = synthetic.patch_size
    cpu = load_pipeline(checkpoint, device="cpu")
    gpu = load_pipeline(checkpoint, device="cuda")
    assert gpu.device.type == "cuda"
    images = [Image.fromarray(p) for p in patches[:4]]
    a = np.array([list(d.values()) for d in cpu(images, batch_size=2)])
    b = np.array([list(d.values()) for d in gpu(images, batch_size=2)])
    assert np.allclose(a, b, atol=1e-3)
    spots = pd.DataFrame({"pixel_x": [size / 2, size * 1.5], "pixel_y": [size / 2, size / 2]})
    slide = _row(patches[:2])
    assert np.allclose(cpu({"image": slide, "spots": spots}).X,
                       gpu({"image": slide, "spots": spots}).X, atol=1e-3)
