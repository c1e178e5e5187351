"""Generated from protos/imgsim/v1 by scripts/gen_protos.py. Never edit these files by hand."""
