#!/usr/bin/env bash
# Install torchvision's and timm's model code on a CPU-only machine, for the tests that
# accelerate their models. torchvision has no CPU wheel for this torch, so the wheel matching
# the installed torch is installed without its dependencies and its compiled ops (which cannot
# load here) are removed; tests/vision_models.py defines the two op schemas torchvision's
# import needs. Model code is pure Python and runs unchanged.
set -euo pipefail

minor=$(python3 -c "import torch; print(torch.__version__.split('.')[1])")
python3 -m pip install --quiet --no-deps "torchvision==0.$((minor + 15)).*" timm
python3 -m pip install --quiet pillow pyyaml
site=$(python3 -c "import importlib.util as u; print(u.find_spec('torchvision').submodule_search_locations[0])")
rm -f "$site"/_C*.so "$site"/image*.so "$site"/video_reader*.so
