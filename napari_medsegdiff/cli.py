"""``medsegdiff`` command line: train | segment | finetune | suggest | evaluate | demo.

Each subcommand parses its arguments, then calls one engine function. User errors print
one line (``medsegdiff: error: ...``) and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from napari_medsegdiff import __version__
from napari_medsegdiff.config import FINETUNE_LR as DEFAULT_LR
from napari_medsegdiff.config import FINETUNE_STEPS as DEFAULT_STEPS
from napari_medsegdiff.config import SamplerConfig
from napari_medsegdiff.errors import Cancelled, MedSegDiffError
from napari_medsegdiff.paths import AUTO_NAME

_SAMPLER = SamplerConfig()


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad arguments as one line, not usage + error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def _add_segment(sub) -> None:
    """The ``segment`` subcommand's arguments."""
    seg = sub.add_parser(
        "segment", help="segment NIfTI scan(s) or a DICOM series with a diffusion ensemble"
    )
    seg.add_argument(
        "images",
        nargs="+",
        help="NIfTI file(s): several co-registered files are channels; a DICOM series "
        "(folder, DICOMDIR or one of its files); a folder of NIfTI files segments every "
        "scan in it (a cohort)",
    )
    seg.add_argument(
        "--series",
        default=None,
        metavar="UID",
        help="SeriesInstanceUID when a DICOM folder holds several",
    )
    seg.add_argument(
        "-o", "--output", required=True, help="labels NIfTI to write (a folder for a cohort)"
    )
    seg.add_argument(
        "--variance",
        nargs="?",
        const=AUTO_NAME,
        default=None,
        metavar="FILE",
        help="also write the ensemble variance as float NIfTI; alone (no FILE) it is "
        "<name>_variance.nii.gz beside each mask (the only form for a folder)",
    )
    seg.add_argument("--probability", help="also write the foreground probability NIfTI")
    seg.add_argument(
        "--model",
        default=None,
        help="model folder or stored version (default: the shipped default model)",
    )
    seg.add_argument(
        "--ensemble",
        type=_positive_int,
        default=None,
        help="samples per slice, 1-32; time grows with ensemble x steps "
        f"(default: the model's recommended value, else {_SAMPLER.ensemble})",
    )
    seg.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        help="denoising steps per sample, 1-1000 "
        f"(default: the model's recommended value, else {_SAMPLER.steps})",
    )
    seg.add_argument("--sampler", default="dpm++", help="dpm++ | ddim | ddpm (default: dpm++)")
    seg.add_argument(
        "--fusion",
        default="mean",
        help="how members combine: mean probability | majority vote | staple "
        "(rater-weighted EM) (default: mean)",
    )
    seg.add_argument(
        "--slices",
        default=None,
        help="START:STOP (half-open) or a,b,c along axis 0 of the displayed array; default all",
    )
    seg.add_argument(
        "--seed",
        type=int,
        default=None,
        help="random seed: the same seed gives the same masks "
        f"(default: the model's recommended value, else {_SAMPLER.seed})",
    )
    seg.add_argument("--device", default="auto", help="auto | cuda | mps | cpu (default: auto)")
    seg.add_argument("--ct-window", default=None, help="CENTER,WIDTH intensity window for CT")
    seg.add_argument(
        "--chunk-size",
        type=_positive_int,
        default=None,
        help="rows (slices x members) per forward; default measured per device",
    )
    seg.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    seg.add_argument(
        "--resume", action="store_true", help="cohort: skip scans whose outputs already exist"
    )


#: Engine argument names whose CLI flag is not ``--`` + the name.
FLAGS = {"output": "-o"}
#: Engine remedies, said in the CLI's words.
REMEDIES = {"allow overwriting": "pass --overwrite"}


def error_line(exc: BaseException) -> str:
    """One line for a user error, naming the flag of the engine argument at fault."""
    text = str(exc)
    for words, flag_words in REMEDIES.items():
        text = text.replace(words, flag_words)
    argument = getattr(exc, "argument", None)
    if argument:
        flag = FLAGS.get(argument, "--" + argument.replace("_", "-"))
        if not text.startswith(flag):
            text = f"{flag}: {text}"
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="medsegdiff", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"napari-medsegdiff {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    _add_segment(sub)

    tr = sub.add_parser("train", help="train a model on a data folder")
    tr.add_argument("--data", required=True, help="data folder")
    tr.add_argument("--layout", default="nifti", help="nifti | isic | brats")
    tr.add_argument("--out", required=True, help="output folder (best/ and last/ inside)")
    tr.add_argument("--preset", default="lite", help="tiny | lite | base | plus")
    tr.add_argument("--version", dest="model_version", default="v2", help="v1 | v2")
    tr.add_argument("--steps", type=_positive_int, default=2000)
    tr.add_argument("--batch-size", type=_positive_int, default=8)
    tr.add_argument("--lr", type=float, default=2e-4)
    tr.add_argument(
        "--lr-final",
        type=float,
        default=None,
        help="decay the learning rate to this over the steps (cosine; default: constant)",
    )
    tr.add_argument("--image-size", type=_positive_int, default=None)
    tr.add_argument(
        "--context",
        type=int,
        default=0,
        help="2.5-D: neighbouring slices on each side the model sees (0 = 2-D; at most 4)",
    )
    tr.add_argument(
        "--prediction",
        default="v_prediction",
        help="epsilon | v_prediction (default: v, whose mask estimate is good at high noise)",
    )
    tr.add_argument(
        "--classes",
        type=_positive_int,
        default=2,
        help="label values incl. background (2 = binary)",
    )
    tr.add_argument("--val-fraction", type=float, default=0.1)
    tr.add_argument("--val-every", type=_positive_int, default=200)
    tr.add_argument(
        "--choose-sampler",
        action="store_true",
        help="after training, measure the cheapest steps x ensemble within 0.005 Dice of "
        "50 x 10 on the validation slices and record it as the model's default "
        "(about 1200 network passes per validation slice)",
    )
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--device", default="auto")
    tr.add_argument("--resume", action="store_true", help="continue from OUT/last")
    tr.add_argument("--no-augment", action="store_true")
    tr.add_argument(
        "--invert",
        type=_probability,
        default=0.0,
        help="probability of a T2-like contrast inversion per training slice (default 0)",
    )
    tr.add_argument(
        "--window",
        type=_probability,
        default=0.0,
        help="probability of a random CT-like display window per training slice (default 0)",
    )

    ft = sub.add_parser("finetune", help="fine-tune a model on corrected labels")
    ft.add_argument("--model", default=None, help="base model (default: the shipped default)")
    ft.add_argument(
        "--image",
        nargs="+",
        required=True,
        help="scan NIfTI file(s) (channels) or a DICOM series folder",
    )
    ft.add_argument(
        "--series",
        default=None,
        metavar="UID",
        help="SeriesInstanceUID when a DICOM folder holds several",
    )
    ft.add_argument(
        "--labels",
        required=True,
        help="corrected labels NIfTI, or the dock's work folder for the scan (its proposal "
        "is then used unless --slices or --proposal is given)",
    )
    ft.add_argument(
        "--proposal",
        default=None,
        help="the model's original proposal (NIfTI or work folder); slices that differ are used",
    )
    ft.add_argument("--slices", default=None, help="START:STOP or a,b,c (default: corrected)")
    ft.add_argument(
        "--new-model",
        action="store_true",
        help="start a new model for exactly the classes in --labels (background included), "
        "reusing the base model's image weights; without it, label values above the base "
        "model's classes add classes",
    )
    ft.add_argument(
        "--steps",
        type=_positive_int,
        default=DEFAULT_STEPS,
        help=f"optimiser steps (default {DEFAULT_STEPS}, chosen by benchmarks/finetune.py)",
    )
    ft.add_argument("--lr", type=float, default=DEFAULT_LR, help=f"default {DEFAULT_LR:g}")
    ft.add_argument("--batch-size", type=_positive_int, default=4)
    ft.add_argument("--device", default="auto")
    ft.add_argument(
        "--out",
        default=None,
        help="the new model folder (must not exist or be empty; use it as --model DIR); "
        "default: a new version in the per-user model store",
    )
    ft.add_argument("--freeze-condition", action="store_true")
    ft.add_argument("--replay", action="store_true", help="mix in the sample training slices")
    ft.add_argument("--seed", type=int, default=0)

    sg = sub.add_parser("suggest", help="which slices to correct first (ensemble disagreement)")
    sg.add_argument(
        "image", nargs="+", help="scan NIfTI file(s) (channels) or a DICOM series folder"
    )
    sg.add_argument("--series", default=None, help="SeriesInstanceUID (DICOM folders)")
    sg.add_argument("--model", default=None, help="model folder or stored version")
    sg.add_argument("--count", type=_positive_int, default=5, help="how many slices (default 5)")
    sg.add_argument("--ct-window", default=None, help="CENTER,WIDTH in HU for CT")
    sg.add_argument("--device", default="auto")
    sg.add_argument("--seed", type=int, default=0)

    ip = sub.add_parser(
        "interpolate", help="fill between slices: interpolate painted slices onto those between"
    )
    ip.add_argument(
        "--labels", required=True, help="labels NIfTI (or a work folder) holding the painted slices"
    )
    ip.add_argument(
        "--slices", required=True, help="the painted slices, a,b,c or START:STOP (display axis 0)"
    )
    ip.add_argument("-o", "--output", required=True, help="labels NIfTI to write")
    ip.add_argument("--overwrite", action="store_true", help="replace an existing output")

    ev = sub.add_parser("evaluate", help="Dice / IoU / HD95 of predictions against truth")
    ev.add_argument("--pred", required=True, help="labels NIfTI or folder")
    ev.add_argument("--truth", required=True, help="reference NIfTI or folder")
    ev.add_argument("--json", default=None, help="also write the report as JSON")
    ev.add_argument(
        "--slices",
        default=None,
        help="score only these slices (START:STOP half-open, or a,b,c along axis 0 of the "
        "displayed array), e.g. the ones a partial segmentation covered; default all",
    )

    demo = sub.add_parser("demo", help="open napari with the sample scan and the docks")
    demo.add_argument(
        "--headless",
        action="store_true",
        help="no window: segment the sample to files and print Dice",
    )
    demo.add_argument(
        "--out",
        default="demo_output",
        help="folder the headless demo owns: its files there are replaced on each run",
    )
    demo.add_argument(
        "--slices", default=None, help="slices for --headless (default: a central block)"
    )
    demo.add_argument(
        "--ensemble", type=_positive_int, default=None, help="default: the model's own (3)"
    )
    demo.add_argument(
        "--steps", type=_positive_int, default=None, help="default: the model's own (2)"
    )
    demo.add_argument("--device", default="auto")
    demo.add_argument("--overwrite", action="store_true", help=argparse.SUPPRESS)
    return parser


def _warning_line(command: str):
    """A ``warnings.showwarning`` that prints ``medsegdiff CMD: warning: MESSAGE``."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"medsegdiff {command}: warning: {message}", file=file or sys.stderr)

    return show


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from napari_medsegdiff import commands

    handler = getattr(commands, f"run_{args.command}")
    try:
        with warnings.catch_warnings():  # a user-facing warning: one line, no source code
            warnings.showwarning = _warning_line(args.command)
            return int(handler(args) or 0)
    except Cancelled:
        print("medsegdiff: cancelled", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("medsegdiff: interrupted", file=sys.stderr)
        return 130
    except MedSegDiffError as exc:
        print(f"medsegdiff {args.command}: error: {error_line(exc)}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"medsegdiff {args.command}: error: out of memory", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
