"""``python -m napari_medsegdiff`` is the same CLI as ``medsegdiff`` (also under torchrun)."""

from napari_medsegdiff.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
