"""Pixel Distillation: cost-flexible distillation across image sizes and heterogeneous networks."""

__version__ = "0.1.0"
