"""VIDiff: one diffusion model that translates videos according to text and/or image instructions."""

__version__ = "0.1.0"
