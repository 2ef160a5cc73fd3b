"""Zoo recipes: raw data → published model as ONE resumable chain of steps.

``mclstexp zoo build PRESET`` runs, for a dataset preset (``mclstexp_hub.presets``):

    data (build_dataset) → train (train_model, all sections) → benchmark (run_benchmark,
    patient split) → bank (build_bank_from_dataset + write_checkpoint) → card (render_card
    from the benchmark's summary.json) → push (push_checkpoint; only with a repo id)

Every step *calls* the function that already does the job; this module only decides which
steps must run and makes each land atomically:

* A step writes into a hidden staging folder under ``OUT/.zoo_staging`` that is renamed onto
  its output only when it finished; a failed or interrupted step leaves nothing (its staging is
  removed, an older output stays untouched and is known to be stale).
* After a step, a small JSON stamp ``OUT/zoo_stamps/STEP.json`` records its *inputs
  fingerprint* — the step's options plus the fingerprints of the outputs it reads (e.g. the
  dataset's ``mclstexp_dataset.json`` hash, the checkpoint's config + training_info hash) — and
  its own output fingerprint.
* A step is skipped when its stamp matches: same inputs, output present and unmodified. The
  first step whose stamp differs runs, and every step after it runs too. An interrupted run
  therefore resumes at its first incomplete step.

Pure Python at import (no torch): the CLI's ``register()`` imports the preset registry only;
each step imports its heavy module when it runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..outputs import staging, write_text_atomic

STAMP_FORMAT = "mclstexp-zoo-stamp/1"
STAMPS_DIR = "zoo_stamps"
STAGING_DIR = ".zoo_staging"
MARKER_FILE = "zoo_recipe.json"
LOCK_FILE = ".zoo_lock"
SPLIT = "patient"  # the zoo benchmarks leak-free: whole patients held out
DEFAULT_ORG = "mclstexp-hub"


# ---------------------------------------------------------------------------- options
@dataclass
class ZooOptions:
    """Everything a zoo build depends on (``mclstexp zoo build`` maps its flags onto these).

    kind: reader kind (default: the preset's); any kind of ``data.readers.list_readers()``,
        e.g. ``hest`` with HEST sample ids as ``sections``.
    genes: gene panel file (default: the preset's ``gene_list_file`` found in DATA_DIR or
        DATA_DIR/../gene_lists; else the build's own highly-variable-gene panel).
    epochs ... retrieval_k: overrides of the training profile / model config, used alike by
        the train and the benchmark step (so the card's figures measure this recipe).
    push: ORG/NAME of the model repository; without it the chain ends at the card.
    rerun: a step name: run it and every later step even when current.
    """

    preset: str
    data_dir: str
    out: str
    kind: str | None = None
    sections: list[str] | None = None
    genes: str | None = None
    patch_size: int = 224
    data_license: str | None = None
    allow_dropped_spots: bool = True
    profile: str = "cpu"
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    n_feature_views: int | None = None
    image_encoder: str | None = None
    retrieval_k: int | None = None
    seed: int = 0
    methods: list[str] | None = None
    bank_batch_size: int = 32
    index: str = "auto"
    card_license: str = "mit"
    push: str | None = None
    revision: str | None = None
    private: bool = False
    token: str | None = None
    endpoint: str | None = None
    rerun: str | None = None
    progress: bool = True
    command: str | None = None

    @property
    def repo_id(self) -> str:
        """The repository the card's examples load (and the push target, when pushing)."""
        return self.push or f"{DEFAULT_ORG}/mclstexp-{self.preset}"


def resolve_kind(opts: ZooOptions) -> str:
    """The reader kind: --kind, else the preset's; refused when the registry lacks it."""
    from mclstexp_hub.data.readers import list_readers
    from mclstexp_hub.presets import get_preset

    kind = opts.kind or get_preset(opts.preset).reader_kind
    if kind not in list_readers():
        raise ValueError(f"--kind {kind!r}: no such reader; choose one of {list_readers()}.")
    return kind


def resolve_genes(opts: ZooOptions) -> Path | None:
    """--genes, else the preset's panel file next to the data, else None (the build's panel)."""
    from mclstexp_hub.presets import get_preset

    if opts.genes:
        path = Path(opts.genes)
        if not path.is_file():
            raise FileNotFoundError(f"--genes {opts.genes}: no such file.")
        return path.resolve()
    name = get_preset(opts.preset).gene_list_file
    data_dir = Path(opts.data_dir)
    for candidate in (data_dir / name, data_dir.parent / "gene_lists" / name):
        if candidate.is_file():
            return candidate.resolve()
    return None


def training_profile(opts: ZooOptions):
    """The profile both training steps use: the named profile with the run's overrides."""
    from mclstexp_hub.training.profiles import get_profile

    return get_profile(opts.profile, opts.preset).replace(
        epochs=opts.epochs, batch_size=opts.batch_size, learning_rate=opts.learning_rate,
        n_feature_views=opts.n_feature_views, seed=opts.seed,
    )


def config_overrides(opts: ZooOptions) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if opts.image_encoder:
        overrides["image_encoder"] = opts.image_encoder
    if opts.retrieval_k is not None:
        overrides["retrieval_k"] = int(opts.retrieval_k)
    return overrides


def benchmark_methods(opts: ZooOptions) -> list[str]:
    from mclstexp_hub.benchmark.methods import list_methods

    return list(opts.methods or list_methods())


# ----------------------------------------------------------------------- fingerprints
def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def tree_fingerprint(root: Path) -> str:
    """Raw input data: every file's relative path, size and modification time (no reading)."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath, name)
            try:
                st = path.stat()
            except OSError:
                continue
            entries.append((path.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    return sha256_json(entries)


def _normalised(value: Any) -> Any:
    """As it reads back from a stamp (tuples → lists, paths → str)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


# ------------------------------------------------------------------------- the recipe
@dataclass
class StepContext:
    """What a step's `run` sees: the options, the build folder and where to write."""

    options: ZooOptions
    out: Path
    stage: Path | None  # write the output here (renamed onto the output when the step ends)
    recipe: Recipe

    def output_of(self, step: str) -> Path:
        return self.recipe.output_path(self.out, step)


@dataclass(frozen=True)
class Step:
    """One step of a recipe.

    output: its output relative to OUT (a folder, or a file), or None when it leaves nothing
        local (push: its result — commit ids — is kept in the stamp).
    identity: files of a folder output whose bytes identify it (its fingerprint); a file
        output is identified by its own bytes.
    reads: earlier steps whose output fingerprints are inputs of this step.
    options: the step's options (JSON values) from the run's options.
    external: fingerprints of inputs outside OUT (raw data, gene panel file).
    run: does the work into `ctx.stage`; may return a JSON result kept in the stamp.
    """

    name: str
    output: str | None
    run: Callable[[StepContext], dict[str, Any] | None]
    options: Callable[[ZooOptions], dict[str, Any]]
    reads: tuple[str, ...] = ()
    identity: tuple[str, ...] = ()
    external: Callable[[ZooOptions], dict[str, Any]] | None = None
    enabled: Callable[[ZooOptions], bool] = lambda opts: True


@dataclass
class StepOutcome:
    name: str
    status: str  # "skipped" | "done" | "failed"
    reason: str
    seconds: float = 0.0
    output: Path | None = None
    result: dict[str, Any] | None = None


@dataclass
class Recipe:
    """An ordered chain of steps; `run` executes what is not current."""

    name: str
    steps: list[Step] = field(default_factory=list)

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise ValueError(f"no step {name!r}; steps: {[s.name for s in self.steps]}")

    def output_path(self, out: Path, name: str) -> Path:
        step = self.step(name)
        if step.output is None:
            raise ValueError(f"step {name!r} writes no local output")
        return out / step.output

    # ----------------------------------------------------------- fingerprints
    def output_fingerprint(self, out: Path, step: Step, stamp: dict | None = None) -> str | None:
        """Fingerprint of a step's current output (None when it is missing)."""
        if step.output is None:
            if stamp is None or "result" not in stamp:
                return None
            return sha256_json(stamp["result"])
        path = out / step.output
        if not path.exists():
            return None
        if path.is_file():
            return sha256_file(path)
        parts = {}
        for name in step.identity:
            if not (path / name).is_file():
                return None
            parts[name] = sha256_file(path / name)
        return sha256_json(parts)

    def inputs(self, out: Path, opts: ZooOptions, step: Step) -> dict[str, Any]:
        upstream = {}
        for name in step.reads:
            stamp = read_stamp(out, name)
            upstream[name] = self.output_fingerprint(out, self.step(name), stamp)
        return _normalised({
            "options": step.options(opts),
            "external": step.external(opts) if step.external else {},
            "upstream": upstream,
        })

    # -------------------------------------------------------------------- run
    def active_steps(self, opts: ZooOptions) -> list[Step]:
        return [s for s in self.steps if s.enabled(opts)]

    def staleness(self, out: Path, opts: ZooOptions, step: Step) -> tuple[str | None, dict]:
        """(why the step must run, or None when current; its inputs now)."""
        inputs = self.inputs(out, opts, step)
        stamp = read_stamp(out, step.name)
        if stamp is None:
            return "no stamp: never finished here", inputs
        old = stamp.get("inputs", {})
        if old.get("options") != inputs["options"]:
            changed = sorted(k for k in set(old.get("options", {})) | set(inputs["options"])
                             if old.get("options", {}).get(k) != inputs["options"].get(k))
            return f"options changed: {', '.join(changed)}", inputs
        if old.get("external") != inputs["external"]:
            changed = sorted(k for k in inputs["external"]
                             if old.get("external", {}).get(k) != inputs["external"][k])
            return f"inputs changed: {', '.join(changed) or 'external'}", inputs
        if old.get("upstream") != inputs["upstream"]:
            changed = sorted(k for k in inputs["upstream"]
                             if old.get("upstream", {}).get(k) != inputs["upstream"][k])
            return f"output of {', '.join(changed)} changed", inputs
        current = self.output_fingerprint(out, step, stamp)
        if current is None:
            return f"output {step.output} missing", inputs
        if current != stamp.get("output_fingerprint"):
            return f"output {step.output} modified since its stamp", inputs
        return None, inputs

    def run(self, opts: ZooOptions, say: Callable[[str], None] = print) -> list[StepOutcome]:
        out = prepare_out(self, opts)
        steps = self.active_steps(opts)
        if opts.rerun is not None and opts.rerun not in [s.name for s in steps]:
            raise ValueError(f"--rerun {opts.rerun!r}: not a step of this build; steps: "
                             f"{[s.name for s in steps]}.")
        outcomes: list[StepOutcome] = []
        started = time.perf_counter()
        width = max(len(s.name) for s in steps)
        with _locked(out):
            shutil.rmtree(out / STAGING_DIR, ignore_errors=True)  # a killed run's leftovers
            forced: str | None = None
            say(f"zoo build {self.name} -> {out} ({len(steps)} steps: "
                f"{' → '.join(s.name for s in steps)}; stamps in {out / STAMPS_DIR})")
            for i, step in enumerate(steps, 1):
                tag = f"[{i}/{len(steps)}] {step.name:<{width}}"
                if opts.rerun == step.name:
                    forced = f"--rerun {step.name}"
                reason, inputs = self.staleness(out, opts, step)
                if reason is None and forced is None:
                    stamp = read_stamp(out, step.name) or {}
                    where = f" -> {out / step.output}" if step.output else ""
                    say(f"{tag} skipped: current (stamp of {stamp.get('finished', '?')}, took "
                        f"{stamp.get('seconds', 0):.1f} s){where}")
                    outcomes.append(StepOutcome(step.name, "skipped", "current",
                                                output=out / step.output if step.output else None,
                                                result=stamp.get("result")))
                    continue
                reason = reason or forced
                say(f"{tag} started ({reason})")
                t0 = time.perf_counter()
                try:
                    result = self._run_step(out, opts, step, inputs)
                except BaseException as exc:
                    spent = time.perf_counter() - t0
                    say(f"{tag} failed after {spent:.1f} s ({type(exc).__name__}); nothing of "
                        "this step was kept — rerun the same command to resume here")
                    raise
                spent = time.perf_counter() - t0
                where = f" -> {out / step.output}" if step.output else (
                    f" -> {result['url']}" if isinstance(result, dict) and result.get("url")
                    else "")
                say(f"{tag} done in {spent:.1f} s{where}")
                outcomes.append(StepOutcome(step.name, "done", reason, spent,
                                            out / step.output if step.output else None, result))
                forced = forced or f"after rerun of {step.name}"
            ran = sum(o.status == "done" for o in outcomes)
            say(f"zoo build {self.name}: {ran} run, {len(outcomes) - ran} skipped, "
                f"{time.perf_counter() - started:.1f} s")
        return outcomes

    def _run_step(self, out: Path, opts: ZooOptions, step: Step, inputs: dict) -> dict | None:
        stamp_path = out / STAMPS_DIR / f"{step.name}.json"
        stamp_path.unlink(missing_ok=True)  # from here on the old output is not current
        t0 = time.perf_counter()
        with staging(out / STAGING_DIR, f"{step.name}-") as tmp:
            stage = tmp / Path(step.output).name if step.output else None
            result = step.run(StepContext(options=opts, out=out, stage=stage, recipe=self))
            if step.output is not None:
                if not stage.exists():
                    raise RuntimeError(f"step {step.name} wrote no output to {stage}")
                _publish(stage, out / step.output, tmp)
            stamp = {
                "format": STAMP_FORMAT,
                "step": step.name,
                "inputs": inputs,
                "inputs_fingerprint": sha256_json(inputs),
                "output": step.output,
                "result": _normalised(result) if result is not None else None,
                "seconds": round(time.perf_counter() - t0, 2),
                "finished": datetime.now(UTC).isoformat(timespec="seconds"),
                "package_version": _version(),
            }
            if result is None:
                stamp.pop("result")
            stamp["output_fingerprint"] = self.output_fingerprint(out, step, stamp)
            write_json_atomic(stamp, stamp_path)
            return result


def _version() -> str:
    from mclstexp_hub import __version__

    return __version__


def _publish(stage: Path, target: Path, tmp: Path) -> None:
    """Rename the finished `stage` onto `target`, replacing an older output whole."""
    target.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if target.exists() or target.is_symlink():
        old = tmp / "replaced"
        os.replace(target, old)
    try:
        os.replace(stage, target)
    except BaseException:
        if old is not None and not target.exists():
            os.replace(old, target)
        raise


def write_json_atomic(value: Any, path: Path) -> None:
    write_text_atomic(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n", path)


def read_stamp(out: Path, name: str) -> dict | None:
    path = out / STAMPS_DIR / f"{name}.json"
    try:
        stamp = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) and stamp.get("format") == STAMP_FORMAT else None


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """One zoo build per OUT at a time (a second one would remove the first one's staging)."""
    import fcntl

    with open(out / LOCK_FILE, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FileExistsError(
                f"{out} is being built by another `mclstexp zoo build`; wait for it to finish."
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_out(recipe: Recipe, opts: ZooOptions) -> Path:
    """OUT as a zoo build folder of this preset: created, or one an earlier build wrote."""
    from mclstexp_hub.outputs import OutputRefused, check_not_an_input

    out = Path(opts.out)
    data_dir = Path(opts.data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"--data-dir {opts.data_dir}: no such folder.")
    check_not_an_input(out, [opts.data_dir, opts.genes])
    marker = out / MARKER_FILE
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"--out {out} is a file; give a folder for the zoo build.")
        if marker.is_file():
            try:
                previous = json.loads(marker.read_text(encoding="utf-8")).get("recipe")
            except ValueError:
                previous = None
            if previous != recipe.name:
                raise OutputRefused(
                    f"--out {out} holds a zoo build of {previous!r}, not {recipe.name!r}; choose "
                    "another --out."
                )
        elif any(out.iterdir()):
            raise OutputRefused(
                f"--out {out} exists, is not empty and was not written by `mclstexp zoo build`; "
                "choose another --out."
            )
    out.mkdir(parents=True, exist_ok=True)
    if not marker.is_file():
        write_json_atomic({"recipe": recipe.name, "written_by": "mclstexp zoo build",
                           "steps": [s.name for s in recipe.steps]}, marker)
    return out


# ------------------------------------------------------------------------------ steps
def _data_options(opts: ZooOptions) -> dict[str, Any]:
    return {"kind": resolve_kind(opts), "sections": opts.sections, "patch_size": opts.patch_size,
            "dataset_name": opts.preset, "license": opts.data_license,
            "allow_dropped_spots": opts.allow_dropped_spots}


def _data_external(opts: ZooOptions) -> dict[str, Any]:
    genes = resolve_genes(opts)
    return {"data_dir": str(Path(opts.data_dir).resolve()),
            "raw_files": tree_fingerprint(Path(opts.data_dir)),
            "genes": None if genes is None else {"file": str(genes), "sha256": sha256_file(genes)}}


def _run_data(ctx: StepContext) -> dict[str, Any]:
    from mclstexp_hub.data.build import build_dataset
    from mclstexp_hub.data.hf_dataset import load_dataset_metadata

    opts = ctx.options
    genes = resolve_genes(opts)
    build_dataset(
        resolve_kind(opts), opts.data_dir, ctx.stage, sections=opts.sections, genes_file=genes,
        patch_size=opts.patch_size, dataset_name=opts.preset, license=opts.data_license,
        allow_dropped_spots=opts.allow_dropped_spots, progress=opts.progress,
    )
    meta = load_dataset_metadata(ctx.stage)
    return {"sections": list(meta["sections"]), "n_genes": len(meta["gene_names"]),
            "n_spots": meta.get("n_spots"),
            "gene_panel": str(genes) if genes else "the build's highly variable genes"}


def _train_options(opts: ZooOptions) -> dict[str, Any]:
    return {"preset": opts.preset, "profile": asdict(training_profile(opts)),
            "config_overrides": config_overrides(opts), "seed": opts.seed}


def _run_train(ctx: StepContext) -> dict[str, Any]:
    from mclstexp_hub.data.hf_dataset import load_dataset_metadata, load_st_dataset
    from mclstexp_hub.training.trainer import train_model

    opts = ctx.options
    dataset_dir = ctx.output_of("data")
    meta = load_dataset_metadata(dataset_dir)
    dataset = load_st_dataset(dataset_dir)  # all sections
    result = train_model(
        dataset, list(meta["gene_names"]), str(ctx.stage), config_overrides=config_overrides(opts),
        profile=training_profile(opts), dataset_preset=opts.preset, seed=opts.seed,
        progress=opts.progress, dataset_metadata=meta, inputs=[dataset_dir],
    )
    losses = [h["loss"] for h in result.history if "loss" in h]
    return {"train_spots": result.train_spots, "final_loss": losses[-1] if losses else None}


def _benchmark_options(opts: ZooOptions) -> dict[str, Any]:
    return {"preset": opts.preset, "split": SPLIT, "profile": asdict(training_profile(opts)),
            "config_overrides": config_overrides(opts), "methods": benchmark_methods(opts),
            "seed": opts.seed}


def _run_benchmark(ctx: StepContext) -> dict[str, Any]:
    from mclstexp_hub.benchmark.runner import BenchmarkOptions, run_benchmark

    opts = ctx.options
    summary = run_benchmark(BenchmarkOptions(
        out=str(ctx.stage), dataset=opts.preset, dataset_dir=str(ctx.output_of("data")),
        split=SPLIT, profile=opts.profile, epochs=opts.epochs, batch_size=opts.batch_size,
        learning_rate=opts.learning_rate, n_feature_views=opts.n_feature_views,
        image_encoder=opts.image_encoder, retrieval_k=opts.retrieval_k,
        methods=benchmark_methods(opts), seed=opts.seed, progress=opts.progress,
        command=opts.command or f"mclstexp zoo build {opts.preset} (benchmark step)",
    ))
    mean = summary["methods"]["mclstexp"]["mean"] if "mclstexp" in summary["methods"] else {}
    return {"folds": len(summary["folds_run"]),
            "mclstexp": {k: mean.get(k) for k in ("pcc_acg", "pcc_heg", "pcc_hvg")}}


def _bank_options(opts: ZooOptions) -> dict[str, Any]:
    return {"batch_size": opts.bank_batch_size, "index": opts.index}


def _run_bank(ctx: StepContext) -> dict[str, Any]:
    from mclstexp_hub.data.hf_dataset import load_dataset_metadata, load_st_dataset
    from mclstexp_hub.hub.checkpoint import TRAINING_INFO_FILE, write_checkpoint
    from mclstexp_hub.models.mclstexp.image_processing_mclstexp import MclSTExpImageProcessor
    from mclstexp_hub.models.mclstexp.modeling_mclstexp import MclSTExpModel
    from mclstexp_hub.retrieval.auto import build_searcher, save_searcher
    from mclstexp_hub.training.bank import build_bank_from_dataset

    opts = ctx.options
    checkpoint, dataset_dir = ctx.output_of("train"), ctx.output_of("data")
    model = MclSTExpModel.from_pretrained(checkpoint, load_spot_bank=False).eval()
    processor = MclSTExpImageProcessor.from_pretrained(checkpoint)
    meta = load_dataset_metadata(dataset_dir)
    bank = build_bank_from_dataset(
        model, load_st_dataset(dataset_dir), batch_size=opts.bank_batch_size,
        progress=opts.progress, dataset_metadata=meta, source=str(meta.get("dataset_name")),
        attach=True,
    )
    info = json.loads((checkpoint / TRAINING_INFO_FILE).read_text(encoding="utf-8"))
    info["bank"] = dict(bank.metadata)
    info["bank_built_by"] = "mclstexp zoo build (bank step: training.bank.build_bank_from_dataset)"
    write_checkpoint(model, ctx.stage, training_info=info, image_processor=processor,
                     inputs=[dataset_dir, checkpoint])
    k = min(int(model.config.retrieval_k), len(bank))
    searcher, report = build_searcher(bank, k, kind=opts.index)
    save_searcher(ctx.stage, searcher, report)
    return {"bank_spots": len(bank), "sections": list(bank.metadata["sections"]),
            "search": "exact" if searcher is None else "faiss-ivf"}


def _card_options(opts: ZooOptions) -> dict[str, Any]:
    return {"repo_id": opts.repo_id, "license": opts.card_license, "dataset": opts.preset}


def _run_card(ctx: StepContext) -> dict[str, Any]:
    from mclstexp_hub.hub.cards import load_results, render_card, write_card

    opts = ctx.options
    results = ctx.output_of("benchmark")
    load_results(results)  # the card reports the benchmark's measured figures, nothing else
    text = render_card(opts.preset, results, repo_id=opts.repo_id, license=opts.card_license,
                       checkpoint=ctx.output_of("bank"))
    write_card(text, ctx.stage)
    return {"repo_id": opts.repo_id}


def _push_options(opts: ZooOptions) -> dict[str, Any]:
    endpoint = opts.endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    return {"repo_id": opts.push, "revision": opts.revision, "private": opts.private,
            "endpoint": endpoint.rstrip("/")}


def _run_push(ctx: StepContext) -> dict[str, Any]:
    from mclstexp_hub.hub.push import push_checkpoint

    opts = ctx.options
    result = push_checkpoint(
        ctx.output_of("bank"), opts.push, card=ctx.output_of("card"), revision=opts.revision,
        private=True if opts.private else None, token=opts.token, endpoint=opts.endpoint,
    )
    return {"repo_id": result.repo_id, "url": result.url, "revision": result.revision,
            "files_commit": result.files_commit, "card_commit": result.card_commit,
            "files": len(result.uploaded)}


STEPS: tuple[Step, ...] = (
    Step("data", "dataset", _run_data, _data_options, identity=("mclstexp_dataset.json",),
         external=_data_external),
    Step("train", "checkpoint", _run_train, _train_options, reads=("data",),
         identity=("config.json", "training_info.json")),
    Step("benchmark", "benchmark", _run_benchmark, _benchmark_options, reads=("data",),
         identity=("summary.json",)),
    Step("bank", "model", _run_bank, _bank_options, reads=("data", "train"),
         identity=("config.json", "training_info.json", "spot_bank.safetensors")),
    Step("card", "model_card.md", _run_card, _card_options, reads=("benchmark", "bank")),
    Step("push", None, _run_push, _push_options, reads=("bank", "card"),
         enabled=lambda opts: bool(opts.push)),
)
STEP_NAMES = tuple(s.name for s in STEPS)


def zoo_recipe(preset: str) -> Recipe:
    """The zoo recipe of a dataset preset (her2st, cscc, alex10x, or any registered one)."""
    from mclstexp_hub.presets import get_preset

    return Recipe(name=get_preset(preset).name, steps=list(STEPS))


def build_zoo_model(opts: ZooOptions, say: Callable[[str], None] = print) -> list[StepOutcome]:
    """Run (or resume) the zoo build of `opts.preset` into `opts.out`."""
    resolve_kind(opts)  # bad --kind / --genes fail before OUT is created
    resolve_genes(opts)
    return zoo_recipe(opts.preset).run(opts, say=say)


__all__ = ["STEPS", "STEP_NAMES", "Recipe", "Step", "StepContext", "StepOutcome", "ZooOptions",
           "build_zoo_model", "read_stamp", "zoo_recipe"]
