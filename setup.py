"""Installs the `lib` package so scripts import it without sys.path tricks (`pip install -e .`)."""

from setuptools import find_packages, setup

setup(
    name="pixel-distillation",
    version="0.1.0",
    description="Pixel Distillation: cost-flexible distillation across image sizes and heterogeneous networks",
    packages=find_packages(include=["lib", "lib.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "timm>=1.0.21",  # older timm cannot reach the hub through huggingface_hub 2
        "safetensors>=0.3.1",  # lib.models: PRETRAIN_FILE .safetensors weights
        "yacs>=0.1.8",
        "PyYAML>=6.0",
        "numpy>=1.24",
        "Pillow>=9.0",
        "tensorboard>=2.12",
        "tqdm>=4.60",
        "scikit-learn>=1.2",  # lib.analysis: tools/eval.py's per-class report
        "matplotlib>=3.6",  # lib.analysis: the plots of tools/eval.py and tools/summarize.py
    ],
)
