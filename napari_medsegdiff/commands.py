"""The CLI's subcommands as plain functions of parsed arguments (one engine call each)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from napari_medsegdiff.config import FinetuneSettings, SamplerConfig
from napari_medsegdiff.errors import InputError
from napari_medsegdiff.jobs import segment_files

if TYPE_CHECKING:
    import torch

    from napari_medsegdiff.data import SliceSet


def _echo(message: str) -> None:
    from napari_medsegdiff.launch_env import is_launch_main as _is_main_rank

    if _is_main_rank():
        print(message, flush=True)


def _parse_window(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        center, width = (float(v) for v in text.split(","))
    except ValueError:
        raise InputError(
            f"--ct-window: expected CENTER,WIDTH (e.g. 40,400), got {text!r}"
        ) from None
    if width <= 0:
        raise InputError(f"--ct-window: width must be positive, got {width}")
    return center, width


def _tqdm_or_none(total: int, desc: str, enabled: bool, unit: str = "slice"):
    if not enabled:
        return None
    from napari_medsegdiff.progress import tqdm_bar as _tqdm

    return _tqdm(total, desc, unit)


def _model_arg(model: str | None) -> str | None:
    """``--model``: a training-run folder means its best/ (else last/) model; say which."""
    if model is None:
        return None
    from napari_medsegdiff.checkpoints import training_run_model

    path, note = training_run_model(Path(model).expanduser())
    if note:
        print(f"medsegdiff: --model {note}", file=sys.stderr)
        return str(path)
    return model


def recommended_sampler(model: str | None) -> dict:
    """The model's recommended ensemble / steps / seed (its config.json), if any."""
    from napari_medsegdiff import checkpoints

    try:
        meta = checkpoints.read_model_info(checkpoints.resolve_model(model)).meta
    except InputError:
        return {}  # reported properly when the model loads
    return checkpoints.recommended_sampler(meta)


def _sampler_from_args(args: argparse.Namespace) -> SamplerConfig:
    """Flags given win; else the model's recommended values; else SamplerConfig's."""
    chosen = {k: getattr(args, k) for k in ("ensemble", "steps", "seed")}
    if any(v is None for v in chosen.values()):
        recommended = recommended_sampler(args.model)
        chosen = {k: v if v is not None else recommended.get(k) for k, v in chosen.items()}
    return SamplerConfig(
        sampler=args.sampler,
        fusion=args.fusion,
        chunk_size=args.chunk_size,
        **{k: v for k, v in chosen.items() if v is not None},
    )


def _variance_path(variance: str | None, output: str) -> str | None:
    """``--variance`` alone (or the old ``yes``) -> ``<output name>_variance.nii.gz``."""
    from napari_medsegdiff.nifti import nifti_stem
    from napari_medsegdiff.paths import AUTO_NAME

    if variance in (AUTO_NAME, "yes"):
        out = Path(output)
        return str(out.with_name(f"{nifti_stem(out)}_variance.nii.gz"))
    return variance


def _tqdm_progress(desc: str, unit: str):
    """A progress callback drawing one tqdm bar (created at the first report)."""
    state: dict = {}

    def on_progress(p) -> None:
        bar = state.get("bar")
        if bar is None:
            bar = state["bar"] = _tqdm_or_none(p.total, desc, True, unit=unit)
        if bar is not None:
            bar.n = p.done
            bar.set_postfix_str(p.message[-40:] if p.message else "", refresh=False)
            bar.refresh()
            if p.done >= p.total:
                bar.close()

    return on_progress


def run_segment(args: argparse.Namespace) -> int:
    from napari_medsegdiff.paths import AUTO_NAME

    args.model = _model_arg(args.model)
    sampler = _sampler_from_args(args)
    window = _parse_window(args.ct_window)
    from napari_medsegdiff.dicom import is_dicom_input

    if (
        len(args.images) == 1
        and Path(args.images[0]).is_dir()
        and not is_dicom_input(args.images[0])
    ):
        from napari_medsegdiff.cohort import segment_cohort

        if args.series is not None:
            raise InputError(
                f"--series: {args.images[0]} is a folder of NIfTI scans (a cohort), not a "
                "DICOM series"
            )
        if args.variance not in (None, AUTO_NAME, "yes"):
            raise InputError(
                f"--variance {args.variance}: for a folder give --variance alone; each scan's "
                "variance is written as <name>_variance.nii.gz beside its mask"
            )

        summary = segment_cohort(
            Path(args.images[0]),
            Path(args.output),
            sampler=sampler,
            model=args.model,
            device=args.device,
            window=window,
            slices=args.slices,
            overwrite=args.overwrite,
            resume=args.resume,
            variance=args.variance is not None,
        )
        _echo(
            f"segmented {summary['written']} scan(s), skipped {summary['skipped']} -> {args.output}"
        )
        return 0
    from napari_medsegdiff.launch_env import is_launch_main as _is_main_rank

    if not _is_main_rank():
        return 0  # one scan under torchrun: rank 0 writes it, the others have nothing to do
    for path in args.images:
        if not Path(path).is_file() and not is_dicom_input(path):
            raise InputError(f"{path}: file not found")
    info = segment_files(
        args.images,
        args.output,
        variance=_variance_path(args.variance, args.output),
        probability=args.probability,
        model=args.model,
        sampler=sampler,
        slices=args.slices,
        device=args.device,
        window=window,
        overwrite=args.overwrite,
        series=args.series,
    )
    _echo(
        f"wrote {', '.join(info['outputs'])} ({info['slices']} slices"
        + (f", {info['skipped']} without tissue skipped" if info["skipped"] else "")
        + f", {info['seconds']:.1f} s, model {info['model']})"
    )
    return 0


def run_train(args: argparse.Namespace) -> int:
    from napari_medsegdiff.augment import AugmentConfig
    from napari_medsegdiff.config import TrainConfig, preset
    from napari_medsegdiff.data import load_layout, split_holdout
    from napari_medsegdiff.devices import choose_device
    from napari_medsegdiff.distributed import distributed_session, is_main_process
    from napari_medsegdiff.training import train

    overrides = {
        "version": args.model_version,
        "prediction": args.prediction,
        "context": args.context,
    }
    if args.image_size:
        overrides["image_size"] = args.image_size
    with distributed_session(args.device) as device:
        probe = preset(args.preset, **overrides)
        data = load_layout(args.data, args.layout, probe.image_size, args.classes, probe.context)
        channels = int(data.images.shape[1]) // (2 * probe.context + 1)
        classes = max(args.classes, int(data.labels.max()) + 1)
        cfg = preset(
            args.preset,
            in_channels=channels,
            mask_channels=1 if classes <= 2 else classes,
            **overrides,
        )
        tcfg = TrainConfig(
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            lr_final=args.lr_final,
            val_every=args.val_every,
            save_every=args.val_every,
            seed=args.seed,
            augment=not args.no_augment,
        )
        train_idx, val_idx = split_holdout(len(data), args.val_fraction, args.seed)
        val = data.subset(val_idx) if val_idx else None
        if args.choose_sampler and val is None:
            why = (
                f"--val-fraction is {args.val_fraction}"
                if args.val_fraction <= 0
                else f"{len(data)} slices found, at least 3 needed"
            )
            raise InputError(
                f"--choose-sampler: needs validation slices to measure on ({why})",
                argument="choose_sampler",
            )
        bar = _tqdm_or_none(args.steps, "train", True, unit="step")

        def on_progress(p) -> None:
            if bar is not None:
                bar.n = p.done
                bar.set_postfix(
                    loss=f"{p.loss:.4f}" if p.loss is not None else None,
                    dice=f"{p.metric:.3f}" if p.metric is not None else None,
                )

        result = train(
            cfg,
            tcfg,
            data.subset(train_idx),
            args.out,
            val=val,
            device=device or choose_device(args.device),
            resume=args.resume,
            meta={"data": str(args.data), "layout": args.layout},
            augment=AugmentConfig(invert=args.invert, window=args.window),
            on_progress=on_progress,
            log=lambda m: print(m, file=sys.stderr),
        )
        if bar is not None:
            bar.close()
        measure_here = args.choose_sampler and is_main_process()
    if measure_here:  # one process, after the others have left the session
        _choose_sampler(result.best, val, choose_device(args.device))
    dice = f", best validation Dice {result.best_dice:.3f}" if result.best_dice is not None else ""
    _echo(f"trained {result.steps_done} steps -> {result.best}{dice}")
    return 0


def _choose_sampler(model_dir: Path, val: SliceSet, device: torch.device) -> None:
    """Measure and record the trained model's default sampler on its validation slices."""
    from napari_medsegdiff.checkpoints import load_model
    from napari_medsegdiff.sampler_defaults import choose_sampler, validation_score, write_sampler

    model, info = load_model(model_dir, device)
    choice = choose_sampler(
        validation_score(model, info.config, val), log=lambda m: print(m, file=sys.stderr)
    )
    write_sampler(model_dir, choice, by="medsegdiff train --choose-sampler")


def run_finetune(args: argparse.Namespace) -> int:
    from napari_medsegdiff.jobs import finetune_files
    from napari_medsegdiff.segmenter import parse_slices

    args.model = _model_arg(args.model)
    slices = None
    if args.slices:
        from napari_medsegdiff.workfolder import read_labels_input

        depth = read_labels_input(args.labels).data.shape[0]
        slices = parse_slices(args.slices, depth)
    settings = FinetuneSettings(
        steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        replay=args.replay,
        freeze_condition=args.freeze_condition,
        seed=args.seed,
    )
    result = finetune_files(
        args.image,
        args.labels,
        proposal_path=args.proposal,
        slices=slices,
        model=args.model,
        series=args.series,
        new_model=args.new_model,
        out=args.out,
        device=args.device,
        settings=settings,
        on_progress=_tqdm_progress("fine-tune", "step"),
    )
    line = result.classes_line()
    if line:
        _echo(line)
    _echo(result.summary())
    return 0


def run_suggest(args: argparse.Namespace) -> int:
    from napari_medsegdiff.inputs import read_scan
    from napari_medsegdiff.suggest import suggest_slices

    args.model = _model_arg(args.model)
    volume = read_scan(args.image, series=args.series)
    suggestion = suggest_slices(
        args.model,
        volume.data,
        count=args.count,
        device=args.device,
        seed=args.seed,
        window=_parse_window(args.ct_window),
        on_progress=_tqdm_progress("scoring slices", "slice"),
    )
    _echo(suggestion.describe())
    print(",".join(str(z) for z in suggestion.slices), flush=True)
    return 0


def run_interpolate(args: argparse.Namespace) -> int:
    from napari_medsegdiff.interpolate import fill_between
    from napari_medsegdiff.nifti import write_labels
    from napari_medsegdiff.segmenter import parse_slices
    from napari_medsegdiff.workfolder import read_labels_input

    volume = read_labels_input(args.labels)
    painted = parse_slices(args.slices, volume.data.shape[0])
    fill = fill_between(volume.data, painted)
    out = write_labels(fill.labels, volume.geometry, args.output, overwrite=args.overwrite)
    span = f"{fill.painted[0]}..{fill.painted[-1]}"
    _echo(f"filled {len(fill.filled)} slice(s) between painted slices {span}: {out}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from napari_medsegdiff.evaluate import evaluate_paths, format_report, write_json

    report = evaluate_paths(Path(args.pred), Path(args.truth), slices=args.slices)
    print(format_report(report))
    if args.json:
        write_json(args.json, report)
    return 0


def run_demo(args: argparse.Namespace) -> int:
    if args.headless:
        from napari_medsegdiff.demo import run_headless_demo

        summary = run_headless_demo(
            Path(args.out),
            slices=args.slices,
            ensemble=args.ensemble,
            steps=args.steps,
            device=args.device,
            overwrite=args.overwrite,
        )
        _echo(summary)
        return 0
    import importlib.util
    import subprocess

    missing = [m for m in ("napari", "qtpy") if importlib.util.find_spec(m) is None]
    if missing:
        raise InputError(
            f"the GUI needs napari and Qt: pip install 'napari-medsegdiff[gui]' "
            f"(missing: {', '.join(missing)})"
        )
    # The window runs in its own interpreter: the CLI never imports the GUI package.
    return subprocess.call([sys.executable, "-m", "napari_medsegdiff.gui.launch"])
